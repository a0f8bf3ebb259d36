"""The prediction model: context conditioning (invariant 9), rollouts, init image, continuation."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_temporal, tiny_image_unet, tiny_scheduler, tiny_vae

from videoldm import LabelEncoder, VideoLDMPipeline, VideoUNet
from videoldm.models.autoencoder import TemporalDecoder
from videoldm.models.context import masked_context
from videoldm.pipelines.decoding import StreamingDecoder
from videoldm.pipelines.planning import count_cascade_steps, plan_rollout
from videoldm.pipelines.prediction import rollout_latents, select_continuation
from videoldm.pipelines.sampling import Guidance, guided_prediction
from videoldm.training.stages import context_frame_mask


def context_unet(seed: int = 1) -> VideoUNet:
    """A tiny prediction model with random temporal and context weights (as after training)."""
    unet = VideoUNet.from_image_unet(tiny_image_unet()).with_context_conditioning(8)
    randomize_temporal(unet, seed)
    return unet.eval()


def context_pipeline(vae: torch.nn.Module | None = None) -> VideoLDMPipeline:
    torch.manual_seed(3)
    pipe = VideoLDMPipeline(unet=context_unet(), vae=vae or tiny_vae(), scheduler=tiny_scheduler(),
                            label_encoder=LabelEncoder(num_classes=10, max_labels=2, embedding_dim=16))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_masked_context_is_exactly_zero_outside_the_context():
    sample = torch.randn(2, 5, 4, 8, 8)
    latents = torch.full_like(sample, float("nan"))
    latents[:, :2] = 1.5
    mask, masked = masked_context(context_frame_mask(torch.tensor([2, 1]), 5), latents, sample)
    assert mask.shape == (2, 5, 1, 8, 8) and masked.shape == sample.shape
    assert torch.equal(masked[0, :2], torch.full_like(masked[0, :2], 1.5)) and masked[0, 2:].eq(0).all()
    assert torch.equal(masked[1, :1], torch.full_like(masked[1, :1], 1.5)) and masked[1, 1:].eq(0).all()
    assert torch.equal(mask[:, :, 0, 0, 0], torch.tensor([[1.0, 1, 0, 0, 0], [1, 0, 0, 0, 0]]))


def test_fresh_context_model_equals_the_model_it_came_from_and_the_image_model():
    image = tiny_image_unet()
    video = VideoUNet.from_image_unet(image)
    randomize_temporal(video)
    prediction = video.with_context_conditioning(8).eval()
    sample, states = torch.randn(2, 4, 4, 8, 8), torch.randn(2, 3, 16)
    mask, context = context_frame_mask(torch.tensor([2, 1]), 4), torch.randn(2, 4, 4, 8, 8)
    with torch.no_grad():
        expected = video.eval()(sample, 10, states).sample
        for kwargs in ({}, {"context_mask": mask, "context_latents": context}):
            assert (prediction(sample, 10, states, **kwargs).sample - expected).abs().max() < 1e-6
        fresh = VideoUNet.from_image_unet(image).with_context_conditioning(8).eval()
        per_frame = image(sample.flatten(0, 1), 10, states.repeat_interleave(4, 0)).sample.unflatten(0, (2, 4))
        assert (fresh(sample, 10, states, context_mask=mask, context_latents=context).sample - per_frame).abs().max() < 1e-5


def test_context_conditions_through_the_given_frames_only():
    unet = context_unet()
    sample, states = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 3, 16)
    mask = context_frame_mask(torch.tensor([2]), 4)
    context = torch.randn(1, 4, 4, 8, 8)
    other = context.clone()
    other[:, 2:] = torch.randn(1, 2, 4, 8, 8)  # only non-context frames differ
    with torch.no_grad():
        with_context = unet(sample, 10, states, context_mask=mask, context_latents=context).sample
        assert torch.equal(with_context, unet(sample, 10, states, context_mask=mask, context_latents=other).sample)
        unconditional = unet(sample, 10, states).sample
        assert torch.equal(unconditional, unet(sample, 10, states, context_mask=torch.zeros(1, 4), context_latents=context).sample)
        assert (with_context - unconditional).abs().max() > 1e-3
        # image-only frames (alpha = 1) are the image model whatever the context
        only = torch.ones(1, 4, dtype=torch.bool)
        assert torch.equal(unet(sample, 10, states, image_only_indicator=only).sample,
                           unet(sample, 10, states, image_only_indicator=only, context_mask=mask, context_latents=context).sample)


def test_context_guidance_scale_one_is_conditional_zero_is_unconditional():
    unet = context_unet()
    sample, states = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 3, 16)
    mask, context = context_frame_mask(torch.tensor([2]), 4), torch.randn(1, 4, 4, 8, 8)
    conditional = {"encoder_hidden_states": states, "context_mask": mask, "context_latents": context}
    no_context = conditional | {"context_mask": torch.zeros_like(mask), "context_latents": torch.zeros_like(context)}
    with torch.no_grad():
        with_context, without = unet(sample, 10, **conditional).sample, unet(sample, 10, **no_context).sample
        for scale, expected in ((1.0, with_context), (0.0, without)):
            assert torch.equal(guided_prediction(unet, sample, torch.tensor(10), conditional, [Guidance(no_context, scale)]), expected)
        guided = guided_prediction(unet, sample, torch.tensor(10), conditional, [Guidance(no_context, 2.5)])
    assert torch.allclose(guided, without + 2.5 * (with_context - without), atol=1e-5)


def test_label_and_context_guidance_combine_in_one_batch_of_three():
    unet = context_unet()
    sample, cond, uncond = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 3, 16), torch.randn(1, 3, 16)
    mask, context = context_frame_mask(torch.tensor([1]), 4), torch.randn(1, 4, 4, 8, 8)
    full = {"encoder_hidden_states": cond, "context_mask": mask, "context_latents": context}
    no_label = full | {"encoder_hidden_states": uncond}
    no_context = full | {"context_mask": torch.zeros_like(mask), "context_latents": torch.zeros_like(context)}
    batches = []
    unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    with torch.no_grad():
        f, f_label, f_context = (unet(sample, 10, **kwargs).sample for kwargs in (full, no_label, no_context))
        guided = guided_prediction(unet, sample, torch.tensor(10), full, [Guidance(no_label, 3.0), Guidance(no_context, 1.5)])
    assert batches[-1] == 3
    assert torch.allclose(guided, f + 2.0 * (f - f_label) + 0.5 * (f - f_context), atol=1e-5)


def test_temporal_weights_of_a_prediction_model_round_trip(tmp_path):
    unet = context_unet()
    assert any(key.startswith("context_encoder.") for key in unet.temporal_state_dict())
    unet.save_temporal(tmp_path)
    other = VideoUNet.from_image_unet_and_temporal(tiny_image_unet(), tmp_path)
    for key, value in unet.state_dict().items():
        assert torch.equal(value, other.state_dict()[key]), key
    assert {id(p) for p in unet.temporal_parameters()} >= {id(p) for p in unet.context_encoder.parameters()}
    unet.freeze_spatial()
    assert all(p.requires_grad for p in unet.context_encoder.parameters())


@pytest.mark.parametrize("pieces", [[16], [3, 5, 8], [1] * 11, [7, 9, 2]])
def test_streaming_decoder_equals_one_windowed_decode(pieces):
    decoder = TemporalDecoder.from_autoencoder(tiny_vae()).eval()
    randomize_temporal(decoder)
    latents = torch.randn(1, sum(pieces), 4, 8, 8)
    with torch.no_grad():
        expected = decoder.decode(latents, chunk_size=8, overlap=2).clamp(-1, 1)
        stream = StreamingDecoder(decoder, decoder.decode, chunk_size=8)
        done = [stream.push(piece) for piece in latents.split(pieces, dim=1)] + [stream.flush()]
    streamed = torch.cat([frames for frames in done if frames is not None], dim=1)
    assert streamed.shape == expected.shape
    assert (streamed - expected).abs().max() < 1e-5


@pytest.mark.parametrize(("frames", "window", "context", "given", "expected"), [
    (16, 16, 2, 0, [(0, 16)]),
    (40, 16, 2, 0, [(0, 16), (2, 14), (2, 10)]),
    (5, 4, 1, 0, [(0, 4), (1, 1)]),
    (7, 4, 2, 1, [(1, 3), (2, 2), (2, 2)]),
    (9, 4, 0, 0, [(0, 4), (0, 4), (0, 1)]),
])
def test_rollout_plan(frames, window, context, given, expected):
    plan = plan_rollout(frames, window, context, given)
    assert [(w.num_context, w.num_new) for w in plan] == expected
    assert sum(w.num_new for w in plan) == frames


def test_rollout_conditions_each_window_on_the_last_frames_made():
    seen = []

    def sample_window(window, context):
        seen.append(None if context is None else context[0, :, 0, 0, 0].tolist())
        start = len(seen) * 100
        return torch.arange(start, start + 4.0).reshape(1, 4, 1, 1, 1)

    made = torch.cat(list(rollout_latents(plan_rollout(7, 4, 2, 1), sample_window, torch.full((1, 3, 1, 1, 1), -1.0))), 1)
    assert seen == [[-1.0], [102.0, 103.0], [202.0, 203.0]]
    assert made[0, :, 0, 0, 0].tolist() == [101, 102, 103, 202, 203, 302, 303]


@pytest.mark.parametrize("num_frames", [5, 16, 23])
def test_rollout_makes_exactly_the_requested_frames(num_frames):
    pipe = context_pipeline()
    video = pipe(labels=[[3, -1]], num_frames=num_frames, window_frames=6, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0), output_type="pt").frames
    assert video.shape == (1, num_frames, 3, 16, 16)


def test_select_continuation_keeps_each_videos_steadiest_entry():
    torch.manual_seed(0)
    context = torch.randn(2, 2, 3, 4, 4)  # (B, S, c, h, w)
    steady = 2 * context[:, 1] - context[:, 0]  # zero second difference into the first new frame
    candidates = torch.randn(3, 2, 5, 3, 4, 4)
    candidates[:, :, :2] = context
    candidates[2, 0, 2] = steady[0] + 0.01  # video 0: candidate 2 continues the motion
    candidates[1, 1, 2] = steady[1]  # video 1: candidate 1
    chosen = select_continuation(candidates, num_context=2)
    assert torch.equal(chosen[0], candidates[2, 0]) and torch.equal(chosen[1], candidates[1, 1])
    with pytest.raises(ValueError, match="context frames"):
        select_continuation(candidates, num_context=1)


def test_window_candidates_sample_each_context_window_k_times_and_keep_one():
    pipe = context_pipeline()
    steps, kwargs = [], dict(labels=[[3, -1]] * 2, num_videos=2, num_frames=13, window_frames=6, num_inference_steps=2,
                             output_type="latent")
    one = pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames
    best = pipe(generator=torch.Generator().manual_seed(0), window_candidates=3,
                callback_on_step_end=lambda *_: steps.append(1), **kwargs).frames
    assert best.shape == one.shape == (2, 13, 4, 8, 8)
    assert torch.equal(best[:, :6], one[:, :6])  # the first window has no context to score: one sample
    assert not torch.equal(best, one)
    # windows 2 and 3 (context S = 2) are sampled 3 times: 1 + 3 + 3 windows of 2 steps
    assert len(steps) == count_cascade_steps(13, num_inference_steps=2, window_frames=6, window_candidates=3).total == 14
    with pytest.raises(ValueError, match="window_candidates"):
        pipe(window_candidates=0, **kwargs)


def test_generate_frames_yields_the_same_video_piece_by_piece():
    pipe = context_pipeline(TemporalDecoder.from_autoencoder(tiny_vae()).eval())
    randomize_temporal(pipe.vae)
    kwargs = dict(num_frames=13, window_frames=5, num_inference_steps=2, decode_chunk_size=4)
    whole = pipe(generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs).frames
    pieces = list(pipe.generate_frames(generator=torch.Generator().manual_seed(0), **kwargs))
    assert len(pieces) > 1
    assert torch.allclose((torch.cat(pieces, 1) + 1) / 2, whole, atol=1e-6)


def test_init_image_comes_back_as_frame_zero():
    pipe = context_pipeline()
    image = torch.rand(3, 16, 16) * 2 - 1
    video = pipe(init_image=image, num_frames=9, window_frames=4, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0), output_type="pt").frames
    with torch.no_grad():
        round_trip = pipe.vae.decode(pipe.vae.encode(image[None]).latent_dist.mode()).sample.clamp(-1, 1)
    assert video.shape == (1, 9, 3, 16, 16)
    assert (video[0, 0] - (round_trip[0] + 1) / 2).abs().max() < 1e-6


def test_init_image_with_a_temporal_decoder_streams_only_frames():
    """A temporal decoder holds the init image's frame until a decoder window fills; nothing is yielded meanwhile."""
    pipe = context_pipeline(TemporalDecoder.from_autoencoder(tiny_vae()))
    pieces = list(pipe.generate_frames(init_image=torch.rand(3, 16, 16) * 2 - 1, num_frames=4, num_inference_steps=1,
                                       decode_chunk_size=4, generator=torch.Generator().manual_seed(0)))
    assert all(isinstance(piece, torch.Tensor) for piece in pieces)
    assert sum(piece.shape[1] for piece in pieces) == 4


def test_continuation_keeps_the_given_frames_exactly_and_uses_them_as_context():
    pipe = context_pipeline()
    given = torch.rand(1, 5, 3, 16, 16) * 2 - 1
    kwargs = dict(num_frames=6, window_frames=4, num_inference_steps=2, output_type="pt")
    video = pipe(init_video=given, generator=torch.Generator().manual_seed(0), **kwargs).frames
    assert video.shape == (1, 11, 3, 16, 16)
    assert torch.equal(video[:, :5], (given + 1) / 2)
    kwargs["output_type"] = "latent"
    new_latents = pipe(init_video=given, generator=torch.Generator().manual_seed(0), **kwargs).frames
    other_start = given.clone()
    other_start[:, -2:] = -given[:, -2:]
    continued_otherwise = pipe(init_video=other_start, generator=torch.Generator().manual_seed(0), **kwargs).frames
    assert new_latents.shape == (1, 6, 4, 8, 8)
    assert (continued_otherwise - new_latents).abs().max() > 1e-4


def test_models_without_context_refuse_given_frames():
    unet = VideoUNet.from_image_unet(tiny_image_unet())
    pipe = VideoLDMPipeline(unet=unet, vae=tiny_vae(), scheduler=tiny_scheduler(),
                            label_encoder=LabelEncoder(num_classes=10, max_labels=2, embedding_dim=16))
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="no context conditioning"):
        pipe(init_image=torch.zeros(3, 16, 16), num_frames=4, num_inference_steps=1)
    with pytest.raises(ValueError, match="no context conditioning"):
        unet(torch.randn(1, 2, 4, 8, 8), 1, torch.randn(1, 3, 16), context_mask=torch.ones(1, 2))
    # independent windows need no context
    video = pipe(num_frames=7, window_frames=3, context_frames=0, num_inference_steps=1, output_type="pt").frames
    assert video.shape == (1, 7, 3, 16, 16)


def test_cli_rollout_and_continuation_write_exact_frame_counts(tmp_path):
    from videoldm.cli import main
    from videoldm.data.io import read_video, write_video

    context_pipeline().save_pretrained(tmp_path / "model")
    given = torch.rand(4, 3, 16, 16) * 2 - 1
    write_video(given, tmp_path / "given")

    def run(*args: str) -> None:
        with pytest.raises(SystemExit) as exit_info:
            main(["generate", "--model", str(tmp_path / "model"), "--steps", "1", "--window", "4", *args])
        assert exit_info.value.code == 0

    run("--frames", "11", "--out", str(tmp_path / "long/"))
    assert len(list((tmp_path / "long").iterdir())) == 11
    run("--frames", "3", "--continue", str(tmp_path / "given"), "--out", str(tmp_path / "continued/"))
    continued = read_video(tmp_path / "continued").frames
    assert continued.shape == (7, 3, 16, 16)
    assert torch.equal(continued[:4], read_video(tmp_path / "given").frames)
    run("--frames", "5", "--init-image", str(tmp_path / "given" / "frame_00000.png"), "--out", str(tmp_path / "i2v.gif"))
    assert read_video(tmp_path / "i2v.gif").frames.shape[0] == 5


def test_prediction_stage_trains_temporal_and_context_weights_only(tmp_path):
    from videoldm.training.stages import build_trainer

    context_pipeline(tiny_vae(channels=1)).save_pretrained(tmp_path / "video")  # digits are grey
    recipe = {"stage": "prediction", "output_dir": str(tmp_path / "run"), "model": str(tmp_path / "video"),
              "data": {"canvas_size": 16, "digit_size": 6, "num_frames": 4, "num_videos": 4},
              "context_probabilities": [0.2, 0.3, 0.5],
              "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "num_workers": 0, "warmup_steps": 0}}
    trainer = build_trainer(recipe)
    spatial = {k: v.clone() for k, v in trainer.stage.unet.unet.state_dict().items()}
    context = [p.clone() for p in trainer.stage.unet.context_encoder.parameters()]
    result = trainer.train()
    assert result.step == 2
    assert all(torch.equal(v, trainer.stage.unet.unet.state_dict()[k]) for k, v in spatial.items())
    assert any(not torch.equal(a, b) for a, b in zip(context, trainer.stage.unet.context_encoder.parameters()))
    exported = VideoLDMPipeline.from_pretrained(tmp_path / "run" / "final")
    assert exported.unet.has_context_conditioning


def test_init_image_and_init_video_take_pil_images():
    from PIL import Image

    from videoldm.data.io import to_uint8

    pipe = context_pipeline()
    frames = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    exact = torch.from_numpy(to_uint8(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1  # what the 8-bit images hold
    images = [Image.fromarray(frame) for frame in to_uint8(frames)]
    run = dict(num_frames=4, num_inference_steps=1, output_type="latent")
    for tensor_kwargs, pil_kwargs in (({"init_image": exact[0]}, {"init_image": images[0]}),
                                      ({"init_video": exact}, {"init_video": images})):
        expected = pipe(generator=torch.Generator().manual_seed(1), **tensor_kwargs, **run).frames
        assert torch.equal(pipe(generator=torch.Generator().manual_seed(1), **pil_kwargs, **run).frames, expected)


def test_given_frames_enter_the_noisy_input_at_each_steps_noise_level():
    """In training a context frame's noisy input is the forward process of its latent; sampling matches:
    at every step of a window, the given positions hold sqrt(a_t) z + sqrt(1 - a_t) eps with one eps."""
    pipe = context_pipeline()
    calls: list[tuple[torch.Tensor, float, torch.Tensor | None, torch.Tensor | None]] = []

    def record(module, args, kwargs):
        calls.append((args[0].clone(), float(args[1]), kwargs.get("context_mask"), kwargs.get("context_latents")))

    pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    given = torch.rand(1, 3, 3, 16, 16) * 2 - 1
    pipe(init_video=given, num_frames=4, window_frames=4, num_inference_steps=4, output_type="latent",
         generator=torch.Generator().manual_seed(0))
    alphas = pipe.scheduler.alphas_cumprod
    windows = [calls[i : i + 4] for i in range(0, len(calls), 4)]
    assert len(windows) == 2  # 2 given + 2 new, then 2 context + 2 new
    for window in windows:
        mask = window[0][2][0]
        assert mask.tolist() == [True, True, False, False]
        implied_noise = [(latents[0, mask] - alphas[int(t)].sqrt() * context[0, mask]) / (1 - alphas[int(t)]).sqrt()
                         for latents, t, _, context in window]
        for noise in implied_noise[1:]:
            torch.testing.assert_close(noise, implied_noise[0], rtol=0, atol=1e-4)
