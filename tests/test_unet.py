"""DESIGN.md invariants 1-8 for the inflated VideoUNet, on tiny random diffusers UNets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import CROSS_ATTENTION_DIM, randomize_temporal, tiny_image_unet, tiny_vae

from videoldm import TemporalDecoder, VideoUNet
from videoldm.models.unet import SPATIAL_PREFIX, TEMPORAL_PREFIX
from videoldm.training.objective import DiffusionObjective
from diffusers import DDPMScheduler

FRAME_COUNTS = [1, 3, 8]


# Test helpers (moved from videoldm.training.objective, where nothing else used them).
def load_noise_scheduler(source: str | Path | dict | Any) -> DDPMScheduler:
    """The training (DDPM) scheduler of an image model: from a scheduler, its config, or a directory.

    A directory may be a scheduler folder or a pipeline folder with a ``scheduler/`` subfolder.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if (path / "scheduler" / "scheduler_config.json").is_file():
            path = path / "scheduler"
        if not (path / "scheduler_config.json").is_file():
            raise FileNotFoundError(f"no scheduler_config.json in {source} or {source}/scheduler")
        return DDPMScheduler.from_pretrained(path)
    config = source if isinstance(source, dict) else source.config
    return DDPMScheduler.from_config(config)


def temporal_training_step(
    video_unet: torch.nn.Module,
    objective: DiffusionObjective,
    optimizer: torch.optim.Optimizer,
    latents: torch.Tensor,
    model_kwargs: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """One optimiser step of the temporal layers on latents ``(B, T, C, H, W)``; returns the loss.

    Freezes the spatial layers first, so only temporal parameters can change.
    """
    video_unet.freeze_spatial()
    optimizer.zero_grad(set_to_none=True)
    loss = objective.loss(video_unet, latents, model_kwargs, generator)
    loss.backward()
    optimizer.step()
    return loss.item()


def _inputs(batch: int, num_frames: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, num_frames, 4, 8, 8, generator=generator)
    context = torch.randn(batch, 5, CROSS_ATTENTION_DIM, generator=generator)
    return sample, context


def _image_model_per_frame(image_unet, sample, timestep, context):
    batch, num_frames = sample.shape[:2]
    frames = image_unet(sample.flatten(0, 1), timestep, context.repeat_interleave(num_frames, 0)).sample
    return frames.view_as(sample)


def test_invariant1_image_state_dict_loads_with_only_temporal_keys_missing(image_unet):
    video = VideoUNet.from_image_unet(image_unet)
    fresh = VideoUNet(unet_config=dict(image_unet.config))
    missing, unexpected = fresh.load_image_state_dict(image_unet.state_dict())
    assert unexpected == []
    temporal_keys = {key for key in fresh.state_dict() if key.startswith(TEMPORAL_PREFIX)}
    assert temporal_keys and set(missing) == temporal_keys
    spatial = {key[len(SPATIAL_PREFIX) :]: value for key, value in video.state_dict().items() if key.startswith(SPATIAL_PREFIX)}
    assert spatial.keys() == image_unet.state_dict().keys()
    for key, value in image_unet.state_dict().items():
        assert torch.equal(spatial[key], value), key


def test_every_spatial_block_gets_a_temporal_layer(image_unet):
    video = VideoUNet.from_image_unet(image_unet)
    resnets = [name for name, _ in image_unet.named_modules() if name.split(".")[-2:-1] == ["resnets"]]
    attentions = [name for name, _ in image_unet.named_modules() if name.split(".")[-2:-1] == ["attentions"]]
    keys = set(video.temporal.keys())
    assert {name.replace(".", "__") for name in resnets + attentions} == keys
    conv_only = VideoUNet.from_image_unet(image_unet, temporal_kinds=["conv"])
    assert set(conv_only.temporal.keys()) == {name.replace(".", "__") for name in resnets}
    everywhere = VideoUNet.from_image_unet(image_unet, temporal_kinds=["attention"], attention_everywhere=True)
    assert len(everywhere.temporal) > len(attentions)


@pytest.mark.parametrize("num_frames", FRAME_COUNTS)
@pytest.mark.parametrize("alpha_logit", [-4.0, 0.0, 3.0])
def test_invariant2_fresh_inflation_reproduces_image_model(image_unet, num_frames, alpha_logit):
    video = VideoUNet.from_image_unet(image_unet)
    with torch.no_grad():
        for name, parameter in video.temporal.named_parameters():
            if name.endswith("mix_logit"):
                parameter.fill_(alpha_logit)
    sample, context = _inputs(2, num_frames)
    with torch.no_grad():
        expected = _image_model_per_frame(image_unet, sample, 500, context)
        actual = video(sample, 500, context).sample
    assert actual.shape == sample.shape
    assert (actual - expected).abs().max() < 1e-5


@pytest.mark.parametrize("num_frames", FRAME_COUNTS)
def test_invariant3_image_only_indicator_gives_image_model(image_unet, num_frames):
    video = VideoUNet.from_image_unet(image_unet)
    randomize_temporal(video)
    sample, context = _inputs(2, num_frames)
    indicator = torch.ones(2, num_frames, dtype=torch.bool)
    with torch.no_grad():
        expected = _image_model_per_frame(image_unet, sample, 300, context)
        actual = video(sample, 300, context, image_only_indicator=indicator).sample
        changed = video(sample, 300, context).sample
    assert (actual - expected).abs().max() < 1e-5
    assert (changed - expected).abs().max() > 1e-3, "random temporal weights must change the output"


def test_invariant3_mixed_image_and_video_batch(image_unet):
    video = VideoUNet.from_image_unet(image_unet)
    randomize_temporal(video)
    sample, context = _inputs(2, 3)
    indicator = torch.tensor([[True] * 3, [False] * 3])
    with torch.no_grad():
        mixed = video(sample, 100, context, image_only_indicator=indicator).sample
        image = _image_model_per_frame(image_unet, sample, 100, context)
        video_only = video(sample[1:], 100, context[1:]).sample
    assert (mixed[0] - image[0]).abs().max() < 1e-5
    assert (mixed[1] - video_only[0]).abs().max() < 1e-5


def test_invariant4_alpha_is_sigmoid_and_blends_spatial_first():
    from videoldm import AlphaBlender

    blender = AlphaBlender(alpha_init=0.5)
    for logit in (-30.0, -1.0, 0.0, 2.0, 30.0):
        with torch.no_grad():
            blender.mix_logit.fill_(logit)
        alpha = blender.alpha()
        assert 0.0 <= alpha.item() <= 1.0
        assert torch.allclose(alpha, torch.sigmoid(torch.tensor(logit)))
        spatial, temporal = torch.full((2, 1), 3.0), torch.full((2, 1), -1.0)
        assert torch.allclose(blender(spatial, temporal), alpha * 3.0 + (1 - alpha) * -1.0)
    with pytest.raises(ValueError, match="alpha_init"):
        AlphaBlender(alpha_init=1.0)


def test_invariant5_training_step_updates_temporal_weights_only(image_unet):
    video = VideoUNet.from_image_unet(image_unet)
    video.freeze_spatial()
    spatial_before = {name: p.detach().clone() for name, p in video.unet.named_parameters()}
    temporal_before = {name: p.detach().clone() for name, p in video.temporal.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in video.parameters() if p.requires_grad], lr=1e-3)
    objective = DiffusionObjective(DDPMScheduler(num_train_timesteps=1000))
    sample, context = _inputs(2, 3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        temporal_training_step(video, objective, optimizer, sample, {"encoder_hidden_states": context}, generator)
    assert not any(p.requires_grad for p in video.unet.parameters())
    for name, parameter in video.unet.named_parameters():
        assert torch.equal(parameter, spatial_before[name]), name
    changed = [name for name, p in video.temporal.named_parameters() if not torch.equal(p, temporal_before[name])]
    assert len(changed) == len(temporal_before), "every temporal parameter gets a gradient and moves"


def test_invariant6_videos_are_independent_frames_are_not(image_unet):
    video = VideoUNet.from_image_unet(image_unet)
    randomize_temporal(video)
    sample, context = _inputs(3, 4)
    with torch.no_grad():
        base = video(sample, 200, context).sample
        perturbed_video = sample.clone()
        perturbed_video[0] += torch.randn_like(perturbed_video[0])
        changed_video = video(perturbed_video, 200, context).sample
        perturbed_frame = sample.clone()
        perturbed_frame[1, 0] += 1.0
        changed_frame = video(perturbed_frame, 200, context).sample
    assert torch.equal(changed_video[1:], base[1:]) or (changed_video[1:] - base[1:]).abs().max() < 1e-6
    assert (changed_frame[1, 1:] - base[1, 1:]).abs().max() > 1e-4, "other frames of the video must react"
    assert (changed_frame[[0, 2]] - base[[0, 2]]).abs().max() < 1e-6


@pytest.mark.parametrize("num_frames", [1, 2, 5, 11])
def test_invariant7_any_number_of_frames(num_frames):
    video = VideoUNet.from_image_unet(tiny_image_unet())
    randomize_temporal(video)
    sample, context = _inputs(1, num_frames)
    with torch.no_grad():
        out = video(sample, 10, context).sample
    assert out.shape == sample.shape and torch.isfinite(out).all()


def test_invariant7_single_frame_with_alpha_one_is_image_generation(image_unet):
    video = VideoUNet.from_image_unet(image_unet)
    randomize_temporal(video, alpha_logit=40.0)  # sigmoid(40) == 1 in float32
    sample, context = _inputs(2, 1)
    with torch.no_grad():
        assert (video(sample, 10, context).sample - _image_model_per_frame(image_unet, sample, 10, context)).abs().max() < 1e-5


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_invariant8_schedule_and_target_are_the_image_models(prediction_type, tmp_path):
    image_scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        prediction_type=prediction_type,
    )
    image_scheduler.save_pretrained(tmp_path / "scheduler")
    objective = DiffusionObjective(load_noise_scheduler(tmp_path))
    assert objective.prediction_type == prediction_type
    assert torch.equal(objective.noise_scheduler.betas, image_scheduler.betas)
    latents, noise = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 4, 8, 8)
    timesteps = torch.tensor([10, 900])
    expected = noise if prediction_type == "epsilon" else image_scheduler.get_velocity(latents, noise, timesteps)
    assert torch.equal(objective.target(latents, noise, timesteps), expected)


def test_timestep_shapes_and_errors():
    video = VideoUNet.from_image_unet(tiny_image_unet())
    sample, context = _inputs(2, 3)
    with torch.no_grad():
        scalar = video(sample, 7, context).sample
        per_video = video(sample, torch.tensor([7, 7]), context).sample
        per_frame = video(sample, torch.full((2, 3), 7), context).sample
    assert torch.equal(scalar, per_video) and torch.equal(scalar, per_frame)
    with pytest.raises(ValueError, match="timestep"):
        video(sample, torch.tensor([1, 2, 3]), context)
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        video(sample[0], 1, context)


def _recomputation_counter(video: VideoUNet) -> list[int]:
    """Counts calls of the first ResNet's temporal layer: one per forward, one more per recomputation."""
    calls = [0]
    first_resnet = next(key for key in video.temporal.keys() if "__resnets__" in key)
    # a pre-hook: recomputation stops as soon as the last needed tensor is saved, before the layer returns
    video.temporal[first_resnet][0].register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_gradient_checkpointing_gives_the_same_gradients():
    # cross-attention UNet: the temporal attention after each transformer block reads the text conditioning
    video = VideoUNet.from_image_unet(tiny_image_unet(cross_attention=True))
    randomize_temporal(video)
    video.freeze_spatial().train()
    sample, context = _inputs(1, 3)
    calls = _recomputation_counter(video)

    def temporal_grads():
        video.zero_grad()
        video(sample, 50, context).sample.square().mean().backward()
        return [p.grad.clone() for p in video.temporal_parameters()]

    plain = temporal_grads()
    assert calls[0] == 1
    video.enable_gradient_checkpointing()
    checkpointed = temporal_grads()
    assert calls[0] == 3, "the first temporal layer's block is recomputed in backward"
    assert video.temporal.frame_context is None
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, checkpointed))


def test_gradient_checkpointing_recomputes_with_the_context_of_its_own_forward():
    video = VideoUNet.from_image_unet(tiny_image_unet(cross_attention=True))
    randomize_temporal(video)
    video.freeze_spatial().train()
    first, second = _inputs(1, 3), _inputs(2, 2, seed=1)
    indicator = torch.tensor([[True, False], [True, True]])

    def losses() -> tuple[torch.Tensor, torch.Tensor]:
        # two forwards (other B, T, conditioning and image-only frames) before either backward, as
        # when two losses share one backward: each recomputation must see its own forward's context
        return (
            video(first[0], 50, first[1]).sample.square().mean(),
            video(second[0], 50, second[1], image_only_indicator=indicator).sample.square().mean(),
        )

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        return torch.autograd.grad(loss, list(video.temporal_parameters()))

    plain = [grads(loss) for loss in losses()]
    video.enable_gradient_checkpointing()
    checkpointed = [grads(loss) for loss in losses()]
    for expected, actual in zip(plain, checkpointed):
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(expected, actual))


@pytest.mark.parametrize("options", [
    {"conv_kernel_size": (2, 1, 1)}, {"conv_kernel_size": (3, 0, 3)}, {"conv_kernel_size": (3, 3)},
    {"temporal_kinds": []}, {"temporal_kinds": ["conv", "warp"]},
])
def test_bad_temporal_options_are_refused(options):
    with pytest.raises(ValueError, match="kernel_size|temporal_kinds"):
        VideoUNet.from_image_unet(tiny_image_unet(), **options)


def test_decoder_refuses_even_kernel():
    with pytest.raises(ValueError, match="kernel_size"):
        TemporalDecoder.from_autoencoder(tiny_vae(), kernel_size=(3, 4, 3))
