"""Sampling, pipeline directories and MP4 output with tiny random models."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import CROSS_ATTENTION_DIM, randomize_temporal, tiny_image_unet, tiny_scheduler, tiny_vae
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UNet2DConditionModel

import videoldm.pipelines.decoding as decoding
from videoldm import LabelEncoder, VideoLDMPipeline, VideoUNet
from videoldm.data.io import read_video, write_video
from videoldm.pipelines import VideoLDMPipelineOutput, decode_latents
from videoldm.pipelines.sampling import Guidance, guided_prediction


def tiny_pipeline(cross_attention: bool = True) -> VideoLDMPipeline:
    unet = VideoUNet.from_image_unet(tiny_image_unet(cross_attention))
    randomize_temporal(unet)
    torch.manual_seed(3)
    label_encoder = LabelEncoder(num_classes=10, max_labels=2, embedding_dim=16) if cross_attention else None
    pipe = VideoLDMPipeline(unet=unet, vae=tiny_vae(), scheduler=tiny_scheduler(), label_encoder=label_encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_text_pipeline(directory) -> VideoLDMPipeline:
    """A pipeline with a tiny random CLIP text encoder and a letters-only tokenizer written to ``directory``."""
    transformers = pytest.importorskip("transformers")
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)} | {c + "</w>": 26 + i for i, c in enumerate(letters)}
    bos, eos = len(vocab), len(vocab) + 1
    vocab |= {"<|startoftext|>": bos, "<|endoftext|>": eos}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(
        str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=8)
    torch.manual_seed(0)
    config = transformers.CLIPTextConfig(vocab_size=len(vocab), hidden_size=CROSS_ATTENTION_DIM, intermediate_size=32,
                                         num_attention_heads=2, num_hidden_layers=1, max_position_embeddings=8,
                                         bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    text_encoder = transformers.CLIPTextModel(config).eval()
    unet = VideoUNet.from_image_unet(tiny_image_unet())
    randomize_temporal(unet)
    pipe = VideoLDMPipeline(unet=unet, vae=tiny_vae(), scheduler=tiny_scheduler(), text_encoder=text_encoder,
                            tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def unet_batch_sizes(pipe) -> list[int]:
    """The batch size of every UNet call of ``pipe`` from now on (2B for a guided step)."""
    sizes: list[int] = []
    pipe.unet.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    return sizes


def _generate(pipe, seed=0, **kwargs):
    options = dict(num_frames=4, num_inference_steps=3, output_type="pt", generator=torch.Generator().manual_seed(seed))
    options.update(kwargs)
    return pipe(**options).frames


@pytest.mark.parametrize("scheduler_class", [None, DPMSolverMultistepScheduler, EulerDiscreteScheduler])
def test_any_scheduler_and_seeded_determinism(scheduler_class):
    pipe = tiny_pipeline()
    if scheduler_class is not None:
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    first = _generate(pipe, labels=[[3, -1]], guidance_scale=2.0)
    second = _generate(pipe, labels=[[3, -1]], guidance_scale=2.0)
    other = _generate(pipe, seed=1, labels=[[3, -1]], guidance_scale=2.0)
    assert first.shape == (1, 4, 3, 16, 16)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert 0.0 <= first.min() and first.max() <= 1.0


def test_output_types_follow_diffusers_conventions():
    pipe = tiny_pipeline(cross_attention=False)
    pil = _generate(pipe, output_type="pil", num_videos=2)
    np_frames = _generate(pipe, output_type="np", num_videos=2)
    latents = _generate(pipe, output_type="latent", num_videos=2)
    assert len(pil) == 2 and len(pil[0]) == 4 and pil[0][0].size == (16, 16)
    assert isinstance(np_frames, np.ndarray) and np_frames.shape == (2, 4, 16, 16, 3)
    assert latents.shape == (2, 4, 4, 8, 8)
    with pytest.raises(ValueError, match="output_type"):
        _generate(pipe, output_type="gif")


def test_decode_chunk_size_does_not_change_frames():
    pipe = tiny_pipeline(cross_attention=False)
    one = _generate(pipe, decode_chunk_size=1)
    all_frames = _generate(pipe, decode_chunk_size=16)
    assert (one - all_frames).abs().max() < 1e-5


def test_callback_on_step_end_sees_every_step():
    pipe = tiny_pipeline(cross_attention=False)
    seen = []
    _generate(pipe, num_inference_steps=5, callback_on_step_end=lambda i, t, latents: seen.append((i, latents.shape)))
    assert [i for i, _ in seen] == list(range(5)) and seen[0][1] == (1, 4, 4, 8, 8)


def test_guidance_scale_one_is_conditional_zero_is_unconditional():
    pipe = tiny_pipeline()
    latents = torch.randn(1, 3, 4, 8, 8)
    cond = {"encoder_hidden_states": pipe.label_encoder(torch.tensor([[4, 1]]))}
    uncond = {"encoder_hidden_states": pipe.label_encoder(pipe.label_encoder.null_labels(1))}
    with torch.no_grad():
        conditional = pipe.unet(latents, 10, **cond).sample
        unconditional = pipe.unet(latents, 10, **uncond).sample
        for scale, expected in ((1.0, conditional), (0.0, unconditional)):
            assert torch.equal(guided_prediction(pipe.unet, latents, torch.tensor(10), cond, [Guidance(uncond, scale)]), expected)
        guided = guided_prediction(pipe.unet, latents, torch.tensor(10), cond, [Guidance(uncond, 3.0)])
    assert torch.allclose(guided, unconditional + 3.0 * (conditional - unconditional), atol=1e-5)


def test_image_only_samples_frames_independently():
    pipe = tiny_pipeline(cross_attention=False)
    noise = torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    together = _generate(pipe, num_frames=3, latents=noise, image_only=True, output_type="latent")
    alone = _generate(pipe, num_frames=1, latents=noise[:, :1], image_only=True, output_type="latent")
    assert (together[:, :1] - alone).abs().max() < 1e-5


def test_inflate_from_diffusers_directory_and_round_trip_unet(tmp_path):
    image_unet = tiny_image_unet()
    image_unet.save_pretrained(tmp_path / "image_unet")
    loaded_image = UNet2DConditionModel.from_pretrained(tmp_path / "image_unet")
    video = VideoUNet.from_image_unet(loaded_image)
    randomize_temporal(video)
    video.save_pretrained(tmp_path / "video_unet")
    assert (tmp_path / "video_unet" / "diffusion_pytorch_model.safetensors").is_file()
    reloaded = VideoUNet.from_pretrained(tmp_path / "video_unet")
    for (name, a), (_, b) in zip(video.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name
    sample = torch.randn(1, 3, 4, 8, 8)
    context = torch.randn(1, 5, 16)
    with torch.no_grad():
        assert (video(sample, 5, context).sample - reloaded(sample, 5, context).sample).abs().max() == 0


def test_temporal_weights_transfer_to_another_image_backbone(tmp_path):
    video = VideoUNet.from_image_unet(tiny_image_unet(seed=0))
    randomize_temporal(video)
    video.save_temporal(tmp_path / "temporal")
    personalised = tiny_image_unet(seed=7)
    transferred = VideoUNet.from_image_unet_and_temporal(personalised, tmp_path / "temporal")
    for key, value in video.temporal_state_dict().items():
        assert torch.equal(transferred.temporal_state_dict()[key], value)
    for key, value in personalised.state_dict().items():
        assert torch.equal(transferred.unet.state_dict()[key], value)
    swapped = video.load_spatial(personalised)
    assert torch.equal(swapped.unet.conv_in.weight, personalised.conv_in.weight)
    with pytest.raises(ValueError, match="not compatible"):
        video.load_spatial(tiny_image_unet(cross_attention=False))
    with pytest.raises(FileNotFoundError, match="no temporal weights"):
        video.load_temporal(tmp_path / "nowhere")


def test_pipeline_directory_round_trips_through_diffusion_pipeline(tmp_path):
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "pipe")
    reloaded = DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(reloaded, VideoLDMPipeline) and isinstance(reloaded.unet, VideoUNet)
    reloaded.set_progress_bar_config(disable=True)
    expected = _generate(pipe, labels=[[5, 2]], guidance_scale=1.5)
    actual = _generate(reloaded, labels=[[5, 2]], guidance_scale=1.5)
    assert (expected - actual).abs().max() == 0


def test_a_directory_carries_its_own_default_number_of_steps(tmp_path):
    pipe = tiny_pipeline(cross_attention=False)
    pipe.register_to_config(default_num_inference_steps=4)
    pipe.save_pretrained(tmp_path / "pipe")
    assert json.loads((tmp_path / "pipe" / "model_index.json").read_text())["default_num_inference_steps"] == 4
    reloaded = DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    reloaded.set_progress_bar_config(disable=True)
    seen = []
    _generate(reloaded, num_inference_steps=None, callback_on_step_end=lambda i, t, latents: seen.append(i))
    assert seen == list(range(4))
    seen.clear()
    _generate(reloaded, num_inference_steps=2, callback_on_step_end=lambda i, t, latents: seen.append(i))
    assert seen == [0, 1]
    assert tiny_pipeline().config.default_num_inference_steps == 25  # a pipeline that names none


def test_generate_writes_a_playable_mp4(tmp_path):
    pipe = tiny_pipeline(cross_attention=False)
    frames = _generate(pipe, num_frames=6)[0] * 2 - 1
    path = write_video(frames, tmp_path / "video.mp4", fps=10)
    clip = read_video(path)
    assert clip.frames.shape == (6, 3, 16, 16) and clip.fps == pytest.approx(10)
    again = _generate(pipe, num_frames=6)[0] * 2 - 1
    assert torch.equal(frames, again)


@pytest.mark.parametrize("labels", [None, [[-1, -1]]], ids=["no-labels", "null-labels"])
def test_guidance_without_labels_is_one_unet_pass_per_step(labels):
    pipe = tiny_pipeline()
    sizes = unet_batch_sizes(pipe)
    guided = _generate(pipe, labels=labels, guidance_scale=3.0)
    assert sizes == [1] * 3
    assert torch.equal(guided, _generate(pipe, labels=labels, guidance_scale=1.0))
    sizes.clear()
    _generate(pipe, labels=[[4, -1]], guidance_scale=3.0)
    assert sizes == [2] * 3


def test_text_guidance_is_skipped_when_prompt_equals_negative_prompt(tmp_path):
    pipe = tiny_text_pipeline(tmp_path)
    sizes = unet_batch_sizes(pipe)
    for prompt, negative in [(None, None), ("", None), ("abc", "abc")]:
        sizes.clear()
        guided = _generate(pipe, prompt=prompt, negative_prompt=negative, guidance_scale=3.0)
        assert sizes == [1] * 3
        assert torch.equal(guided, _generate(pipe, prompt=prompt, negative_prompt=negative, guidance_scale=1.0))
    sizes.clear()
    _generate(pipe, prompt="abc", guidance_scale=3.0)
    assert sizes == [2] * 3


def test_conditioning_the_model_cannot_use_is_refused(tmp_path):
    label_model, text_model = tiny_pipeline(), tiny_text_pipeline(tmp_path)
    unconditional = tiny_pipeline(cross_attention=False)
    with pytest.raises(ValueError, match="label-conditional: it has no text encoder; pass labels instead of a prompt"):
        _generate(label_model, prompt="a three")
    with pytest.raises(ValueError, match="label-conditional: it has no text encoder; it takes no negative prompt"):
        _generate(label_model, labels=[[3, -1]], negative_prompt="a four")
    with pytest.raises(ValueError, match="text-conditional: it has no label encoder; pass a prompt instead of labels"):
        _generate(text_model, labels=[[3, -1]])
    with pytest.raises(ValueError, match="unconditional: it has no text encoder; it takes no negative prompt"):
        _generate(unconditional, negative_prompt="blurry")
    with pytest.raises(ValueError, match="unconditional: it has no label encoder; it takes no labels"):
        _generate(unconditional, labels=[[3]])


def test_decode_latents_honours_shift_factor():
    vae = tiny_vae()
    vae.register_to_config(scaling_factor=0.5, shift_factor=0.25)
    latents = torch.randn(1, 2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = vae.decode(latents[0] / 0.5 + 0.25).sample.clamp(-1, 1)
        assert torch.allclose(decode_latents(vae, latents)[0], expected, atol=1e-6)
        vae.register_to_config(shift_factor=None)
        unshifted = vae.decode(latents[0] / 0.5).sample.clamp(-1, 1)
        assert torch.allclose(decode_latents(vae, latents)[0], unshifted, atol=1e-6)


@pytest.mark.parametrize("force_upcast", [True, False])
def test_float16_vae_decodes_in_float32_when_force_upcast(force_upcast):
    vae = tiny_vae().half()
    vae.register_to_config(force_upcast=force_upcast)
    float32_vae = copy.deepcopy(vae).float()
    latents = torch.randn(1, 2, 4, 8, 8, generator=torch.Generator().manual_seed(0)).half()
    with torch.no_grad():
        pixels = decode_latents(vae, latents)
        in_float32 = decode_latents(float32_vae, latents).half()
    assert pixels.dtype == torch.float16 and vae.dtype == torch.float16
    assert torch.equal(pixels, in_float32) == force_upcast


def test_pipeline_output_is_a_dataclass():
    frames = torch.zeros(1, 2, 3, 16, 16)
    output = VideoLDMPipelineOutput(frames=frames)
    assert dataclasses.is_dataclass(output) and [field.name for field in dataclasses.fields(output)] == ["frames"]
    assert output.frames is frames and output[0] is frames and output["frames"] is frames
    assert output.to_tuple() == (frames,)
    pipe = tiny_pipeline(cross_attention=False)
    assert torch.equal(_generate(pipe), pipe(num_frames=4, num_inference_steps=3, output_type="pt",
                                             generator=torch.Generator().manual_seed(0), return_dict=False)[0])


@pytest.mark.parametrize("guidance_scale", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_guidance_scale_is_refused_before_sampling(guidance_scale):
    pipe = tiny_pipeline()
    sizes = unet_batch_sizes(pipe)
    with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
        _generate(pipe, labels=[[3, -1]], guidance_scale=guidance_scale)
    assert sizes == []


@pytest.mark.parametrize("output_type", ["pt", "latent"])
def test_non_finite_latents_are_an_error_before_decoding(output_type, monkeypatch):
    pipe = tiny_pipeline(cross_attention=False)
    decoded = []
    monkeypatch.setattr(decoding, "decode_latents", lambda *args: decoded.append(args))

    def poison(step_index, timestep, latents):
        return torch.full_like(latents, float("nan")) if step_index == 1 else None

    with pytest.raises(ValueError, match=r"non-finite latents \(NaN or inf\)"):
        _generate(pipe, output_type=output_type, callback_on_step_end=poison)
    assert decoded == []


def test_initial_noise_shares_the_asked_fraction_between_frames():
    from diffusers.utils.torch_utils import randn_tensor

    from videoldm.pipelines.sampling import initial_noise

    shape = (8, 16, 4, 32, 32)
    independent = initial_noise(shape, 0.0, torch.Generator().manual_seed(0), torch.device("cpu"), torch.float32)
    assert torch.equal(independent, randn_tensor(shape, generator=torch.Generator().manual_seed(0)))  # the old draw
    for correlation in (0.5, 0.9):
        noise = initial_noise(shape, correlation, torch.Generator().manual_seed(0), torch.device("cpu"), torch.float32)
        assert abs(noise.var().item() - 1) < 0.03  # every frame is still a standard normal start
        frames = noise.flatten(2)  # (B, T, n): the correlation of two frames' noise, averaged over pairs
        centred = frames - frames.mean(dim=2, keepdim=True)
        unit = centred / centred.norm(dim=2, keepdim=True)
        pairs = torch.einsum("btn,bsn->bts", unit, unit)
        off_diagonal = pairs[:, ~torch.eye(16, dtype=torch.bool)]
        assert abs(off_diagonal.mean().item() - correlation) < 0.03


def test_noise_correlation_is_an_option_with_a_directory_default(tmp_path):
    pipe = tiny_pipeline(cross_attention=False)
    plain = _generate(pipe)
    assert torch.equal(_generate(pipe, noise_correlation=0.0), plain)  # 0: the independent draw, unchanged
    correlated = _generate(pipe, noise_correlation=0.8)
    assert not torch.equal(correlated, plain)
    # frames of one video start alike: this untrained tiny model's frames come out closer together
    assert correlated.diff(dim=1).abs().mean() < plain.diff(dim=1).abs().mean()

    pipe.register_to_config(default_noise_correlation=0.8)
    pipe.save_pretrained(tmp_path / "pipe")
    assert json.loads((tmp_path / "pipe" / "model_index.json").read_text())["default_noise_correlation"] == 0.8
    reloaded = DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    reloaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(_generate(reloaded), correlated)  # None: the directory's own
    torch.testing.assert_close(_generate(reloaded, noise_correlation=0.0), plain)
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="noise_correlation must be in"):
            _generate(pipe, noise_correlation=bad)
    with pytest.raises(ValueError, match="noise_correlation must be in"):
        VideoLDMPipeline(unet=pipe.unet, vae=pipe.vae, scheduler=pipe.scheduler, default_noise_correlation=1.0)
