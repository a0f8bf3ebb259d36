"""The video upsampler (Sec. 3.4): model, noise augmentation, windowed/tiled sampling, pipelines."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel

from conftest import CROSS_ATTENTION_DIM, randomize_temporal, tiny_clip_text_model, tiny_clip_tokenizer, tiny_scheduler
from videoldm.models.upsampler import VideoUpsampler, downsample_frames, noise_augment, resize_frames
from videoldm.pipelines import planning
from videoldm.pipelines import upsample as upsample_module
from videoldm.pipelines.planning import (
    auto_tile_size,
    count_cascade_steps,
    piece_bytes,
    plan_pieces,
    plan_segments,
    resolve_segment_frames,
    sampler_state_bytes,
)
from videoldm.pipelines.upsample import VideoUpsamplerPipeline, WindowedUpsampler, blend_ramp

# Stable Diffusion's x4 upscaler UNet, exactly as published (stabilityai/stable-diffusion-x4-upscaler,
# unet/config.json); built here with random weights.
SD_X4_UPSCALER_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [256, 512, 512, 1024],
    "center_input_sample": False, "cross_attention_dim": 1024,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "in_channels": 7, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "num_class_embeds": 1000, "only_cross_attention": [True, True, True, False], "out_channels": 4,
    "sample_size": 128, "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}


def tiny_pixel_unet(seed: int = 0, channels: int = 1, max_noise_level: int = 20) -> UNet2DConditionModel:
    """A random pixel-space upsampler UNet: input ``[sample, low-res]`` (2 x ``channels``), noise-level embedding."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=2 * channels, out_channels=channels, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        mid_block_type=None, num_class_embeds=max_noise_level + 1, norm_num_groups=4,
    ).eval()


def tiny_upsampler(seed: int = 0, channels: int = 1) -> VideoUpsampler:
    upsampler = VideoUpsampler.from_image_unet(
        tiny_pixel_unet(seed, channels), temporal_kinds=["conv", "attention"], attention_everywhere=True,
        attention_head_dim=8, low_res_channels=channels, max_noise_level=20)
    randomize_temporal(upsampler, seed=seed + 1)
    return upsampler.eval()


def low_res_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02)


def test_temporal_layers_off_equal_the_per_frame_image_upsampler():
    image_unet = tiny_pixel_unet()
    upsampler = tiny_upsampler()
    upsampler.load_spatial(image_unet)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 3, 1, 16, 16, generator=generator)
    low_res = torch.randn(2, 3, 1, 4, 4, generator=generator)
    levels = torch.tensor([0, 17])
    with torch.no_grad():
        video = upsampler(sample, 10, low_res_video=low_res, noise_level=levels,
                          image_only_indicator=torch.ones(2, 3, dtype=torch.bool)).sample
        temporal = upsampler(sample, 10, low_res_video=low_res, noise_level=levels).sample
        for b in range(2):
            upsampled = resize_frames(low_res[b:b + 1], (16, 16))[0]
            frames = image_unet(torch.cat([sample[b], upsampled], dim=1), 10, None,
                                class_labels=levels[b].expand(3)).sample
            torch.testing.assert_close(video[b], frames, rtol=0, atol=1e-5)
    assert (temporal - video).abs().max() > 1e-3  # the temporal layers (random weights) do act


def test_upsampler_validates_its_inputs():
    upsampler = tiny_upsampler()
    sample = torch.zeros(1, 2, 1, 16, 16)
    with pytest.raises(ValueError, match="noise_level"):
        upsampler(sample, 1, low_res_video=torch.zeros(1, 2, 1, 4, 4), noise_level=torch.tensor([21]))
    with pytest.raises(ValueError, match="low_res_video"):
        upsampler(sample, 1, low_res_video=torch.zeros(1, 2, 3, 4, 4), noise_level=torch.tensor([0]))
    with pytest.raises(ValueError, match="num_class_embeds"):
        VideoUpsampler(unet_config=dict(tiny_pixel_unet().config), low_res_channels=1, max_noise_level=350)


def test_noise_augmentation_follows_the_low_res_schedule():
    scheduler = low_res_scheduler()
    video, noise = torch.ones(2, 3, 1, 4, 4), torch.zeros(2, 3, 1, 4, 4)
    noised = noise_augment(scheduler, video, torch.tensor([0, 300]), noise)
    alphas = scheduler.alphas_cumprod
    torch.testing.assert_close(noised[0], torch.full_like(noised[0], alphas[0].sqrt().item()))
    torch.testing.assert_close(noised[1], torch.full_like(noised[1], alphas[300].sqrt().item()))


def test_downsampling_is_the_area_mean():
    video = torch.arange(16.0).reshape(1, 1, 1, 4, 4)
    assert downsample_frames(video, 2).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]


def test_latent_inflation_of_the_sd_x4_upscaler_is_exact_at_init():
    torch.manual_seed(0)
    image_unet = UNet2DConditionModel(**SD_X4_UPSCALER_UNET).eval()
    upsampler = VideoUpsampler.from_image_unet(image_unet, low_res_channels=3, max_noise_level=350).eval()
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 2, 4, 16, 16, generator=generator)
    low_res = torch.randn(1, 2, 3, 16, 16, generator=generator)  # the x4 upscaler's input: pixels at latent size
    text = torch.randn(1, 4, 1024, generator=generator)
    with torch.no_grad():
        video = upsampler(latents, 500, text, low_res_video=low_res, noise_level=torch.tensor([20])).sample
        frames = image_unet(torch.cat([latents[0], low_res[0]], dim=1), 500, text.expand(2, -1, -1),
                            class_labels=torch.tensor([20, 20])).sample
    torch.testing.assert_close(video[0], frames, rtol=0, atol=1e-5)
    missing, unexpected = upsampler.load_image_state_dict(image_unet.state_dict())
    assert not unexpected and all(key.startswith("temporal.") for key in missing)


def test_pieces_cover_the_video_and_blend_to_one():
    assert plan_pieces(10, None, 2) == [slice(0, 10)]
    pieces = plan_pieces(20, 8, 3)
    assert pieces[0].start == 0 and pieces[-1].stop == 20
    assert all(b.start <= a.stop - 3 for a, b in zip(pieces, pieces[1:]))
    for piece in pieces:
        weights = blend_ramp(piece, 20, 3)
        assert weights.min() > 0 and weights.max() == 1


def test_windows_and_tiles_blend_a_pointwise_model_exactly():
    class Pointwise(torch.nn.Module):  # any per-pixel, per-frame map: blending pieces must give the whole
        def forward(self, sample, timestep, low_res_video, noise_level, encoder_hidden_states=None,
                    image_only_indicator=None):
            from videoldm.models.unet import VideoUNetOutput
            return VideoUNetOutput(sample=sample * 2 + low_res_video.sin() + noise_level[:, None, None, None, None])

    generator = torch.Generator().manual_seed(0)
    sample, low_res = torch.randn(2, 11, 1, 20, 24, generator=generator), torch.randn(2, 11, 1, 20, 24, generator=generator)
    inputs = dict(low_res_video=low_res, noise_level=torch.tensor([1, 2]),
                  image_only_indicator=torch.zeros(2, 11, dtype=torch.bool))
    whole = Pointwise()(sample, 3, **inputs).sample
    pieces = WindowedUpsampler(Pointwise(), window_frames=4, window_overlap=2, tile_size=8, tile_overlap=3)(sample, 3, **inputs).sample
    torch.testing.assert_close(pieces, whole, rtol=0, atol=1e-5)


def test_window_covering_the_video_equals_one_pass():
    upsampler = tiny_upsampler()
    generator = torch.Generator().manual_seed(2)
    video = torch.rand(1, 5, 1, 4, 4, generator=generator) * 2 - 1
    pipe = VideoUpsamplerPipeline(upsampler=upsampler, scheduler=tiny_scheduler(), low_res_scheduler=low_res_scheduler())
    pipe.set_progress_bar_config(disable=True)
    one = pipe(video, noise_level=5, num_inference_steps=2, window_frames=None, generator=torch.Generator().manual_seed(0))
    covering = pipe(video, noise_level=5, num_inference_steps=2, window_frames=5, tile_size=16,
                    generator=torch.Generator().manual_seed(0))
    windowed = pipe(video, noise_level=5, num_inference_steps=2, window_frames=3, window_overlap=1, tile_size=8,
                    tile_overlap=4, generator=torch.Generator().manual_seed(0))
    assert one.shape == (1, 5, 1, 16, 16)
    torch.testing.assert_close(covering, one, rtol=0, atol=0)
    assert torch.isfinite(windowed).all() and windowed.shape == one.shape


def test_auto_tiles_only_frames_too_large_for_the_memory_budget():
    # the embedded upsampler (16 channels) at the cascade's 128x128: whole frames, outputs as before
    assert auto_tile_size(16, 1, 16, (128, 128)) is None
    # 704x576 (4x a 176x144 video) in 16-frame windows: about 13 GB whole, so tiles of 8k cells
    side = auto_tile_size(16, 1, 16, (576, 704))
    assert side is not None and side % 8 == 0 and 16 * side * side * 128 * 16 <= planning.DEFAULT_MAX_PIECE_BYTES
    assert auto_tile_size(16, 2, 16, (576, 704)) < side  # two guidance branches in the piece: smaller tiles
    assert auto_tile_size(256, 1, 64, (4096, 4096)) == planning.MIN_AUTO_TILE


def test_auto_tile_size_runs_the_tiles_it_picks(monkeypatch):
    upsampler = tiny_upsampler()
    video = torch.rand(1, 3, 1, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    pipe = VideoUpsamplerPipeline(upsampler=upsampler, scheduler=tiny_scheduler(), low_res_scheduler=low_res_scheduler())
    pipe.set_progress_bar_config(disable=True)

    def run(tile_size):
        return pipe(video, noise_level=5, num_inference_steps=2, tile_size=tile_size, generator=torch.Generator().manual_seed(0))

    whole = run(None)
    torch.testing.assert_close(run("auto"), whole, rtol=0, atol=0)  # a small video: no tiles
    budget = 3 * 32 * 32 * 128 * 8  # 3 frames of 32x32 cells, first level of 8 channels: 32-cell tiles
    monkeypatch.setattr(planning, "DEFAULT_MAX_PIECE_BYTES", budget)
    assert auto_tile_size(8, 1, 3, (64, 64)) == 32
    tiled = run("auto")
    torch.testing.assert_close(tiled, run(32), rtol=0, atol=0)
    assert not torch.equal(tiled, whole)
    with pytest.raises(ValueError, match="tile_size"):
        run("big")


def test_segments_cover_the_video_each_adding_new_frames():
    assert plan_segments(10, None, 2) == plan_segments(10, 10, 2) == [slice(0, 10)]
    assert plan_segments(10, 6, 2) == [slice(0, 6), slice(4, 10)]
    assert plan_segments(11, 6, 2) == [slice(0, 6), slice(4, 10), slice(8, 11)]  # the last one is shorter
    for frames in range(3, 30):
        segments = plan_segments(frames, 5, 2)
        assert segments[0].start == 0 and segments[-1].stop == frames
        for before, segment in zip(segments, segments[1:]):
            assert segment.start == before.stop - 2 and segment.stop > before.stop
    with pytest.raises(ValueError, match="overlap"):
        plan_segments(10, 2, 2)


def test_auto_segments_only_a_video_whose_state_passes_the_budget():
    per_frame = sampler_state_bytes(1, 1, 1, (128, 128), (128, 128))
    # the embedded model's cascade at 128x128: 49 frames in one run, so outputs are as before
    assert resolve_segment_frames("auto", 1, 49, 1, (128, 128), (128, 128), 16) is None
    assert resolve_segment_frames("auto", 1, 100, 1, (128, 128), (128, 128), 16, max_state_bytes=40 * per_frame) == 40
    # never fewer frames than one window, whatever the budget
    assert resolve_segment_frames("auto", 1, 100, 1, (128, 128), (128, 128), 16, max_state_bytes=per_frame) == 16
    assert resolve_segment_frames(None, 1, 100, 1, (8, 8), (8, 8), 16) is None
    assert resolve_segment_frames(7, 1, 100, 1, (8, 8), (8, 8), 16) == 7
    for bad in (4, "some"):
        with pytest.raises(ValueError, match="segment_frames"):
            resolve_segment_frames(bad, 1, 100, 1, (8, 8), (8, 8), 16)


def test_each_segment_continues_the_frames_it_shares_with_the_one_before(monkeypatch):
    upsampler = tiny_upsampler()
    video = torch.rand(1, 9, 1, 4, 4, generator=torch.Generator().manual_seed(4)) * 2 - 1
    runs, denoise = [], upsample_module.denoise

    def recorded(*args, **kwargs):
        runs.append((kwargs.get("given_mask"), denoise(*args, **kwargs)))
        return runs[-1][1]

    monkeypatch.setattr(upsample_module, "denoise", recorded)

    def segments(segment_frames, frames=9):
        options = upsample_module.UpsamplingOptions(noise_level=5, num_inference_steps=2, window_frames=4, window_overlap=2,
                                                    segment_frames=segment_frames, generator=torch.Generator().manual_seed(0))
        return list(upsample_module.upsample_video_segments(
            upsampler, tiny_scheduler(), low_res_scheduler(), video[:, :frames], sample_size=(16, 16), options=options))

    pieces = segments(5)  # runs on frames 0-4, 3-7 and 6-8
    assert [piece.shape[1] for piece in pieces] == [5, 3, 1]
    masks, samples = zip(*runs)
    assert masks[0] is None and [mask[0].tolist() for mask in masks[1:]] == [[True] * 2 + [False] * 3,
                                                                           [True] * 2 + [False]]
    for before, after in zip(samples, samples[1:]):  # the shared frames come out exactly as already made
        torch.testing.assert_close(after[:, :2], before[:, -2:], rtol=0, atol=0)
    runs.clear()
    torch.testing.assert_close(pieces[0], segments(None, frames=5)[0], rtol=0, atol=0)  # the first run: a video of its own
    whole = torch.cat(segments(None), dim=1)
    assert whole.shape == torch.cat(pieces, dim=1).shape and not torch.equal(whole, torch.cat(pieces, dim=1))


def test_the_pipeline_streams_segments_when_the_state_would_pass_the_budget(monkeypatch):
    pipe = VideoUpsamplerPipeline(upsampler=tiny_upsampler(), scheduler=tiny_scheduler(), low_res_scheduler=low_res_scheduler())
    pipe.set_progress_bar_config(disable=True)
    video = torch.rand(1, 20, 1, 4, 4, generator=torch.Generator().manual_seed(5)) * 2 - 1

    def run(**options):
        return list(pipe.upsample_frames(video, noise_level=5, num_inference_steps=1,
                                         generator=torch.Generator().manual_seed(0), **options))

    assert len(run()) == 1 and pipe.plan_segments(1, 20, (4, 4)) == [slice(0, 20)]
    monkeypatch.setattr(planning, "DEFAULT_MAX_STATE_BYTES", 16 * sampler_state_bytes(1, 1, 1, (16, 16), (16, 16)))
    assert pipe.plan_segments(1, 20, (4, 4)) == [slice(0, 16), slice(12, 20)]
    pieces = run()
    assert [tuple(piece.shape[1:]) for piece in pieces] == [(16, 1, 16, 16), (4, 1, 16, 16)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), torch.cat(run(segment_frames=16), dim=1), rtol=0, atol=0)
    torch.testing.assert_close(pipe(video, noise_level=5, num_inference_steps=1, generator=torch.Generator().manual_seed(0)),
                               torch.cat(pieces, dim=1), rtol=0, atol=0)

def test_a_segmented_cascade_counts_every_upsampling_step(monkeypatch):
    pipe = cascade_pipeline()
    monkeypatch.setattr(planning, "DEFAULT_MAX_STATE_BYTES", 16 * sampler_state_bytes(1, 1, 3, (64, 64), (64, 64)))
    segments = pipe.upsampler_pipeline().plan_segments(1, 25, (16, 16))
    assert segments == [slice(0, 16), slice(12, 25)]
    steps: list[int] = []
    output = pipe(num_frames=7, fps_multiplier=4, upscale=4, num_inference_steps=1, upsampler_steps=2, output_type="pt",
                  generator=torch.Generator().manual_seed(0),
                  callback_on_step_end=lambda index, timestep, latents: steps.append(index))
    assert output.frames.shape == (1, 25, 3, 64, 64)
    planned = count_cascade_steps(7, fps_multiplier=4, upscale=4, num_inference_steps=1, upsampler_steps=2,
                                  upsampling_segments=len(segments))
    assert planned.upsampling == 4 and len(steps) == planned.total

def tiny_latent_upscaler_parts() -> tuple[UNet2DConditionModel, AutoencoderKL]:
    """An SD-x4-upscaler-shaped UNet and autoencoder in miniature: latents of a 4x autoencoder concatenated
    with RGB pixels at the latent size, text cross-attention, noise-level embedding."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=7, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM, attention_head_dim=8, norm_num_groups=8, num_class_embeds=1000,
    )
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8, layers_per_block=1,
                        block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, scaling_factor=0.08333)
    return unet, vae


def test_latent_upsampler_pipeline_decodes_with_its_autoencoder(tmp_path):
    unet, vae = tiny_latent_upscaler_parts()
    upsampler = VideoUpsampler.from_image_unet(unet, low_res_channels=3, max_noise_level=350, attention_head_dim=8)
    pipe = VideoUpsamplerPipeline(upsampler=upsampler, scheduler=DDIMScheduler(), low_res_scheduler=low_res_scheduler(),
                                  vae=vae, text_encoder=tiny_clip_text_model(), tokenizer=tiny_clip_tokenizer())
    pipe.set_progress_bar_config(disable=True)
    video = torch.rand(1, 3, 3, 8, 8) * 2 - 1
    latents = pipe(video, prompt="a digit", guidance_scale=3.0, num_inference_steps=2, output_type="latent",
                   generator=torch.Generator().manual_seed(0))
    assert latents.shape == (1, 3, 4, 8, 8)  # the x4 upscaler's latent grid has the low-resolution size
    frames = pipe(video, prompt="a digit", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert frames.shape == (1, 3, 3, 32, 32)
    pipe.save_pretrained(tmp_path / "up")
    loaded = VideoUpsamplerPipeline.from_pretrained(tmp_path / "up")
    assert isinstance(loaded.upsampler, VideoUpsampler) and loaded.upsampler.config.max_noise_level == 350


def cascade_pipeline():
    from test_interpolation import interpolation_pipeline

    from videoldm import CascadePipeline

    parts = interpolation_pipeline().components
    pipe = CascadePipeline(**parts | {"upsampler": tiny_upsampler(channels=3), "upsampler_scheduler": tiny_scheduler(),
                                      "low_res_scheduler": low_res_scheduler()})
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("fps_multiplier", [1, 4, 16])
@pytest.mark.parametrize("upscale", [1, 4])
def test_cascade_frame_count_and_size_for_each_option(fps_multiplier, upscale):
    pipe = cascade_pipeline()
    steps: list[int] = []
    output = pipe(num_frames=3, fps_multiplier=fps_multiplier, upscale=upscale, num_inference_steps=1, upsampler_steps=2,
                  keep_stages=True, output_type="pt", generator=torch.Generator().manual_seed(0),
                  callback_on_step_end=lambda index, timestep, latents: steps.append(index))
    frames = fps_multiplier * 2 + 1
    assert output.frames.shape == (1, frames, 3, 16 * upscale, 16 * upscale)
    expected_stages = {"key_frames": 3} if fps_multiplier > 1 or upscale > 1 else {}
    if fps_multiplier > 1 and upscale > 1:
        expected_stages["interpolated"] = frames
    assert {name: video.shape[1] for name, video in output.stages.items()} == expected_stages
    assert all(video.shape[-1] == 16 for video in output.stages.values())
    planned = count_cascade_steps(3, fps_multiplier=fps_multiplier, upscale=upscale, num_inference_steps=1,
                                  upsampler_steps=2)
    assert len(steps) == planned.total  # one progress display can count every stage's steps up front


def test_cascade_refuses_a_stage_it_has_no_model_for():
    from test_interpolation import interpolation_pipeline

    from videoldm import CascadePipeline

    pipe = CascadePipeline(**interpolation_pipeline().components)
    with pytest.raises(ValueError, match="no video upsampler"):
        pipe(num_frames=2, upscale=4, num_inference_steps=1)
    with pytest.raises(ValueError, match="upscale"):
        pipe(num_frames=2, upscale=2, num_inference_steps=1)


def run_cli(args: list[str]) -> int:
    from videoldm.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code or 0


def test_generate_upscale_and_keep_stages(tmp_path):
    from videoldm.data.io import read_video

    cascade_pipeline().save_pretrained(tmp_path / "model")
    out, stages = tmp_path / "up.mp4", tmp_path / "stages"
    code = run_cli(["generate", "--model", str(tmp_path / "model"), "--frames", "3", "--steps", "1", "--fps", "2",
                    "--fps-multiplier", "4", "--upscale", "4", "--keep-stages", str(stages), "--out", str(out)])
    assert code == 0
    clip = read_video(out)
    assert clip.frames.shape == (9, 3, 64, 64) and clip.fps == pytest.approx(8)
    assert read_video(stages / "key_frames.mp4").frames.shape == (3, 3, 16, 16)
    assert read_video(stages / "interpolated.mp4").frames.shape == (9, 3, 16, 16)


def test_generate_passes_the_upscale_steps_and_noise_level(tmp_path, monkeypatch):
    from videoldm.pipelines import VideoUpsamplerPipeline

    cascade_pipeline().save_pretrained(tmp_path / "model")
    calls, upsample = [], VideoUpsamplerPipeline.upsample_frames

    def recorded(self, *args, **kwargs):
        calls.append((kwargs["noise_level"], kwargs["num_inference_steps"]))
        return upsample(self, *args, **kwargs)

    monkeypatch.setattr(VideoUpsamplerPipeline, "upsample_frames", recorded)
    assert run_cli(["generate", "--model", str(tmp_path / "model"), "--frames", "2", "--steps", "1", "--upscale", "4",
                    "--upscale-steps", "2", "--upscale-noise-level", "5", "--out", str(tmp_path / "up.mp4")]) == 0
    assert calls == [(5, 2)]


def test_upsampler_pipeline_refuses_a_video_ldm_directory_and_the_cascade_gives_it(tmp_path):
    from videoldm.pipelines import CascadePipeline, VideoUpsamplerPipeline

    cascade_pipeline().save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="upsampler_pipeline"):
        VideoUpsamplerPipeline.from_pretrained(tmp_path / "model")
    upsampler_pipe = CascadePipeline.from_pretrained(tmp_path / "model").upsampler_pipeline()
    assert upsampler_pipe.vae is None and upsampler_pipe.upsampler.config.low_res_channels == 3


def test_generate_upscale_defaults_are_the_upsampler_pipeline_defaults():
    from videoldm.defaults import DEFAULT_NOISE_LEVEL, DEFAULT_UPSAMPLER_STEPS
    from videoldm.generation import GenerateOptions

    assert (GenerateOptions.upscale_steps, GenerateOptions.upscale_noise_level) == (DEFAULT_UPSAMPLER_STEPS, DEFAULT_NOISE_LEVEL)


@pytest.mark.parametrize("args, message", [
    (["--upscale-steps", "3"], "--upscale-steps: only with --upscale 4"),
    (["--upscale-noise-level", "3"], "--upscale-noise-level: only with --upscale 4"),
    (["--upscale", "4", "--upscale-noise-level", "21"], "--upscale-noise-level 21: expected 0..20"),
])
def test_generate_refuses_bad_upscale_options(tmp_path, capsys, args, message):
    cascade_pipeline().save_pretrained(tmp_path / "model")
    out = tmp_path / "o.mp4"
    assert run_cli(["generate", "--model", str(tmp_path / "model"), "--frames", "2", "--out", str(out)] + args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_upsample_command_keeps_frames_and_rate(tmp_path):
    from videoldm.data.io import read_video, write_video

    cascade_pipeline().save_pretrained(tmp_path / "model")
    source = tmp_path / "in.mp4"
    write_video(torch.rand(5, 3, 12, 20) * 2 - 1, source, fps=5)  # any size the UNet divides, not the model's own
    out = tmp_path / "out.mp4"
    assert run_cli(["upsample", "--model", str(tmp_path / "model"), "--video", str(source), "--steps", "1",
                    "--window", "6", "--out", str(out)]) == 0
    clip = read_video(out)
    assert clip.frames.shape == (5, 3, 48, 80) and clip.fps == pytest.approx(5)


def test_upsample_command_says_when_it_tiles_on_its_own(tmp_path, capsys, monkeypatch):
    from videoldm.data.io import read_video, write_video

    cascade_pipeline().save_pretrained(tmp_path / "model")
    source = tmp_path / "in.mp4"
    write_video(torch.rand(3, 3, 12, 20) * 2 - 1, source, fps=5)
    base = ["upsample", "--model", str(tmp_path / "model"), "--video", str(source), "--steps", "1"]
    monkeypatch.setattr(planning, "DEFAULT_MAX_PIECE_BYTES", 3 * 32 * 32 * 128 * 8)  # 32-pixel tiles
    assert run_cli(base + ["--out", str(tmp_path / "auto.mp4")]) == 0
    assert "denoised in tiles of 32 (--tile auto" in capsys.readouterr().err
    assert run_cli(base + ["--tile", "none", "--out", str(tmp_path / "whole.mp4")]) == 0
    assert "tiles" not in capsys.readouterr().err
    assert read_video(tmp_path / "auto.mp4").frames.shape == read_video(tmp_path / "whole.mp4").frames.shape == (3, 3, 48, 80)


@pytest.mark.parametrize("args, message", [
    (["--noise-level", "21"], "--noise-level 21: expected 0..20"),
    (["--window", "3"], "--window 3"),
    (["--video", "missing.mp4"], "missing.mp4"),
    (["--prompt", "a digit"], "--prompt: the upsampler of"),
    (["--guidance", "3"], "--guidance: the upsampler of"),
    (["--tile", "8"], "--tile '8': expected a tile size of at least 16"),
    (["--tile", "huge"], "--tile 'huge'"),
])
def test_upsample_command_refuses_bad_input(tmp_path, capsys, args, message):
    from videoldm.data.io import write_video

    cascade_pipeline().save_pretrained(tmp_path / "model")
    write_video(torch.zeros(2, 3, 8, 8), tmp_path / "in.mp4", fps=5)
    base = ["upsample", "--model", str(tmp_path / "model"), "--video", str(tmp_path / "in.mp4"), "--out", str(tmp_path / "o.mp4")]
    assert run_cli(base + args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()


def test_upsample_command_refuses_a_video_whose_state_would_not_fit_in_memory(tmp_path, capsys, monkeypatch):
    from videoldm import generation
    from videoldm.data.io import write_video
    cascade_pipeline().save_pretrained(tmp_path / "model")
    write_video(torch.zeros(4, 3, 8, 8), tmp_path / "in.mp4", fps=5)
    assert generation.available_memory_bytes() > 0
    state = sampler_state_bytes(1, 4, 3, (32, 32), (32, 32))
    assert state == 4 * 4 * (12 + 4) * 3 * 32 * 32  # 16 float32 copies of a 32x32 RGB frame, 4 frames
    whole_frame = piece_bytes(8, 1, 4, (32, 32))  # the tiny upsampler's first level: 8 channels
    assert whole_frame == 128 * 8 * 4 * 32 * 32
    args = ["upsample", "--model", str(tmp_path / "model"), "--video", str(tmp_path / "in.mp4"), "--steps", "1"]
    monkeypatch.setattr(generation, "available_memory_bytes", lambda: state + whole_frame - 1)
    assert run_cli(args + ["--out", str(tmp_path / "o.mp4")]) == 2
    assert "4 frames of 32x32 need about" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()
    # the piece counted is the one that runs: 16-pixel tiles need less than whole frames, and then fit
    assert run_cli(args + ["--tile", "16", "--out", str(tmp_path / "tiled.mp4")]) == 0
    monkeypatch.setattr(generation, "available_memory_bytes", lambda: state + whole_frame)
    assert run_cli(args + ["--tile", "none", "--out", str(tmp_path / "whole.mp4")]) == 0


def test_upsample_command_streams_a_long_video_in_segments(tmp_path, capsys, monkeypatch):
    from videoldm.data.io import read_video, write_video

    cascade_pipeline().save_pretrained(tmp_path / "model")
    write_video(torch.rand(20, 3, 8, 8) * 2 - 1, tmp_path / "in.mp4", fps=5)
    monkeypatch.setattr(planning, "DEFAULT_MAX_STATE_BYTES", 16 * sampler_state_bytes(1, 1, 3, (32, 32), (32, 32)))
    assert run_cli(["upsample", "--model", str(tmp_path / "model"), "--video", str(tmp_path / "in.mp4"), "--steps", "1",
                    "--out", str(tmp_path / "o.mp4")]) == 0
    assert "20 frames: upsampled in 2 segments of up to 16 frames" in capsys.readouterr().err
    assert read_video(tmp_path / "o.mp4").frames.shape == (20, 3, 32, 32)


def test_generate_upscale_refuses_what_would_not_fit_in_memory(tmp_path, capsys, monkeypatch):
    from videoldm import generation

    cascade_pipeline().save_pretrained(tmp_path / "model")
    monkeypatch.setattr(generation, "available_memory_bytes", lambda: 1000)
    out = tmp_path / "o.mp4"
    assert run_cli(["generate", "--model", str(tmp_path / "model"), "--frames", "2", "--upscale", "4",
                    "--out", str(out)]) == 2
    assert "--upscale 4: 2 frames of 64x64 need about" in capsys.readouterr().err
    assert not out.exists()


def test_generate_refuses_upscale_without_an_upsampler(tmp_path, capsys):
    from test_interpolation import interpolation_pipeline

    interpolation_pipeline().save_pretrained(tmp_path / "model")
    base = ["generate", "--model", str(tmp_path / "model"), "--frames", "2", "--out", str(tmp_path / "o.mp4")]
    assert run_cli(base + ["--upscale", "4"]) == 2
    assert "no video upsampler" in capsys.readouterr().err
    assert run_cli(base + ["--keep-stages", str(tmp_path / "k")]) == 2
    assert "nothing to keep" in capsys.readouterr().err


def test_bicubic_residual_round_trips():
    upsampler = VideoUpsampler(unet_config=dict(tiny_pixel_unet().config), low_res_channels=1, max_noise_level=20,
                               bicubic_residual_scale=8.0)
    high_res = torch.rand(1, 2, 1, 16, 16) * 2 - 1
    low_res = downsample_frames(high_res, 4)
    sample = upsampler.sample_from_video(high_res, low_res)
    torch.testing.assert_close(sample, 8 * (high_res - resize_frames(low_res, (16, 16))))
    torch.testing.assert_close(upsampler.video_from_sample(sample, low_res), high_res)
    with pytest.raises(ValueError, match="pixel-space"):
        VideoUpsampler(unet_config={**dict(tiny_pixel_unet().config), "in_channels": 3}, low_res_channels=1,
                       max_noise_level=20, bicubic_residual_scale=8.0)


def test_upsampler_recipes_train_the_image_then_the_video_phase(tmp_path):
    from test_interpolation import interpolation_pipeline

    from videoldm import CascadePipeline
    from videoldm.training.recipes import RECIPES_DIR, load_recipe
    from videoldm.training.stages import build_trainer

    model = interpolation_pipeline()
    model.save_pretrained(tmp_path / "model")
    small = {"canvas_size": 32, "digit_size": 12, "num_videos": 8, "min_speed": 1.0, "max_speed": 2.5}
    image = load_recipe(RECIPES_DIR / "digits_image_upsampler.yaml")
    image["data"].update(small)
    image["model"].update(block_out_channels=[8, 16], down_block_types=["DownBlock2D"] * 2,
                          up_block_types=["UpBlock2D"] * 2, norm_num_groups=4, num_class_embeds=21)
    image["temporal"]["attention_head_dim"] = 8
    image.update(output_dir=str(tmp_path / "image"), patch_size=16, max_noise_level=20)
    image["train"].update(steps=2, batch_size=4, checkpoint_every=2, num_workers=0, warmup_steps=0)
    assert build_trainer(image).train().step == 2
    video = load_recipe(RECIPES_DIR / "digits_upsampler.yaml")
    video["data"].update(small | {"num_frames": 4})
    video.update(output_dir=str(tmp_path / "video"), image_upsampler=str(tmp_path / "image" / "final"), patch_size=16,
                 pipeline=str(tmp_path / "model"))
    video["train"].update(steps=2, batch_size=2, checkpoint_every=2, num_workers=0, warmup_steps=0)
    trainer = build_trainer(video)
    assert {name.split(".")[0] for name in trainer.stage.upsampler.state_dict()} == {"unet", "temporal"}
    assert all(not p.requires_grad for p in trainer.stage.upsampler.spatial_parameters())
    trainer.train()
    pipe = CascadePipeline.from_pretrained(tmp_path / "video" / "final")
    image_phase = VideoUpsamplerPipeline.from_pretrained(tmp_path / "image" / "final").upsampler
    for key, value in image_phase.unet.state_dict().items():  # spatial weights frozen in the video phase
        assert torch.equal(pipe.upsampler.unet.state_dict()[key], value)
    assert pipe.upsampler.config.bicubic_residual_scale == 8.0 and pipe.interpolator is not None  # the model kept whole
    pipe.set_progress_bar_config(disable=True)
    video_out = pipe.upsampler_pipeline()(torch.zeros(1, 3, 1, 8, 12), num_inference_steps=1)
    assert video_out.shape == (1, 3, 1, 32, 48)  # patch-trained (16 px) weights on whole frames of another size


def test_an_sd_x4_upscaler_style_pipeline_inflates_into_a_video_upsampler(tmp_path):
    from diffusers import StableDiffusionUpscalePipeline

    from videoldm.data.io import read_video, write_video

    unet, vae = tiny_latent_upscaler_parts()
    StableDiffusionUpscalePipeline(vae=vae, text_encoder=tiny_clip_text_model(), tokenizer=tiny_clip_tokenizer(), unet=unet,
                                   low_res_scheduler=low_res_scheduler(), scheduler=DDIMScheduler(),
                                   max_noise_level=350).save_pretrained(tmp_path / "image")
    assert run_cli(["inflate", "--image-model", str(tmp_path / "image"), "--out", str(tmp_path / "video")]) == 0
    inflated = VideoUpsamplerPipeline.from_pretrained(tmp_path / "video")
    assert inflated.upsampler.config.scale_factor == 4 and inflated.upsampler.config.max_noise_level == 350
    for key, value in unet.state_dict().items():
        assert torch.equal(inflated.upsampler.unet.state_dict()[key], value)
    write_video(torch.rand(3, 3, 8, 8) * 2 - 1, tmp_path / "in.mp4", fps=4)
    assert run_cli(["upsample", "--model", str(tmp_path / "video"), "--video", str(tmp_path / "in.mp4"), "--steps", "1",
                    "--out", str(tmp_path / "out.mp4")]) == 0
    assert read_video(tmp_path / "out.mp4").frames.shape == (3, 3, 32, 32)


def test_the_shipped_upsampler_beats_bicubic_on_held_out_digits():
    from videoldm import CascadePipeline
    from videoldm.data.moving_digits import MovingDigitsConfig, generate_video
    from videoldm.embedded import embedded_model_dir
    from videoldm.metrics.consistency import psnr

    pipe = CascadePipeline.from_pretrained(embedded_model_dir(), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    config = MovingDigitsConfig(split="test", canvas_size=128, digit_size=48, num_frames=4, min_speed=4.0, max_speed=10.0)
    real = torch.stack([generate_video(index, config).frames for index in range(2)])
    low_res = downsample_frames(real, 4)
    made = (pipe.upsampler_pipeline()(low_res, generator=torch.Generator().manual_seed(0)) + 1) / 2
    bicubic = (resize_frames(low_res, (128, 128)).clamp(-1, 1) + 1) / 2
    assert made.shape == real.shape
    assert psnr(made, (real + 1) / 2).mean() > psnr(bicubic, (real + 1) / 2).mean() + 0.5


def test_segment_frames_reaches_the_cascades_upsampler():
    from videoldm import CascadePipeline
    from videoldm.embedded import embedded_model_dir

    pipe = CascadePipeline.from_pretrained(embedded_model_dir(), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    low_res = torch.rand(1, 7, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def upsample(segment_frames):
        return pipe.upsampler_pipeline()(low_res, num_inference_steps=1, segment_frames=segment_frames,
                                         generator=torch.Generator().manual_seed(1))

    segmented = pipe.upsampler_pipeline().upsample_frames(low_res, num_inference_steps=1, segment_frames=5,
                                                          generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(upsample(5), torch.cat(list(segmented), dim=1), rtol=0, atol=1e-6)
    assert not torch.allclose(upsample(None), upsample(5), atol=1e-4)  # one run: the frames after 5 come out otherwise


def test_upsampler_recipe_needs_the_high_resolution_size_of_video_data(tmp_path):
    from videoldm.training.recipes import RecipeError
    from videoldm.training.stages import UpsamplerStage

    model = {"in_channels": 2, "out_channels": 1, "block_out_channels": [8, 16], "down_block_types": ["DownBlock2D"] * 2,
             "up_block_types": ["UpBlock2D"] * 2, "norm_num_groups": 4, "num_class_embeds": 21}
    settings = dict(model=model, scheduler={}, low_res_scheduler={}, max_noise_level=20, patch_size=16)
    with pytest.raises(RecipeError, match="give size"):
        UpsamplerStage(data={"kind": "folder", "path": str(tmp_path)}, **settings)
    with pytest.raises(RecipeError, match="latent cache"):
        UpsamplerStage(data={"kind": "latents", "path": str(tmp_path)}, **settings)
    with pytest.raises(RecipeError, match="patch_size 16 is larger than the data's 12x12"):
        UpsamplerStage(data={"kind": "folder", "path": str(tmp_path), "size": 12}, **settings)


def test_a_latent_upsampler_trains_its_temporal_layers_on_captioned_real_videos(video_folder, tmp_path):
    """configs/sd_x4_video_upsampler.yaml in miniature: an SD-x4-upscaler-style pipeline inflated by the
    command line, its video phase trained in latent space on real clips with captions, then `upsample --prompt`."""
    import csv

    from diffusers import StableDiffusionUpscalePipeline

    from conftest import GOOD_VIDEOS
    from videoldm.data.io import read_video, write_video
    from videoldm.training.recipes import RECIPES_DIR, RecipeError, load_recipe
    from videoldm.training.stages import build_trainer

    unet, vae = tiny_latent_upscaler_parts()
    StableDiffusionUpscalePipeline(vae=vae, text_encoder=tiny_clip_text_model(), tokenizer=tiny_clip_tokenizer(), unet=unet,
                                   low_res_scheduler=low_res_scheduler(), scheduler=DDIMScheduler(),
                                   max_noise_level=350).save_pretrained(tmp_path / "image")
    assert run_cli(["inflate", "--image-model", str(tmp_path / "image"), "--out", str(tmp_path / "video")]) == 0
    table = tmp_path / "clips.csv"
    with table.open("w", newline="") as handle:
        csv.writer(handle).writerows([["path", "caption"], *[[str(video_folder / name), f"clip {name}"] for name in GOOD_VIDEOS]])

    recipe = load_recipe(RECIPES_DIR / "sd_x4_video_upsampler.yaml")
    recipe.update(image_upsampler=str(tmp_path / "video"), output_dir=str(tmp_path / "run"), patch_size=16)
    recipe["data"].update(path=str(table), size=[32, 32], num_frames=3)
    recipe["train"].update(steps=2, batch_size=2, checkpoint_every=2, warmup_steps=0, num_workers=0, mixed_precision="no")
    trainer = build_trainer(recipe)
    stage = trainer.stage
    assert stage.vae is not None and stage.captions is not None and stage.scale_factor == 4
    before = {k: v.clone() for k, v in stage.upsampler.state_dict().items()}
    trainer.train()
    after = stage.upsampler.state_dict()
    changed = {key.split(".")[0] for key in before if not torch.equal(before[key], after[key])}
    assert changed == {"temporal"}  # spatial weights frozen, temporal layers trained

    trained = VideoUpsamplerPipeline.from_pretrained(tmp_path / "run" / "final")
    assert trained.vae is not None and trained.text_encoder is not None
    for key, value in unet.state_dict().items():
        assert torch.equal(trained.upsampler.unet.state_dict()[key], value)
    write_video(torch.rand(3, 3, 8, 8) * 2 - 1, tmp_path / "in.mp4", fps=4)
    assert run_cli(["upsample", "--model", str(tmp_path / "run" / "final"), "--video", str(tmp_path / "in.mp4"),
                    "--steps", "1", "--prompt", "a clip", "--guidance", "2", "--out", str(tmp_path / "out.mp4")]) == 0
    assert read_video(tmp_path / "out.mp4").frames.shape == (3, 3, 32, 32)

    recipe.update(pipeline="embedded", output_dir=str(tmp_path / "again"))
    with pytest.raises(RecipeError, match="latent-space upsampler exports as its own"):
        build_trainer(recipe)
