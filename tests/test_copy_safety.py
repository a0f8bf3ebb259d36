"""Inflated models behave as ordinary modules (DESIGN.md, "How inflation is attached").

A deep copy runs its own temporal layers, ``torch.save(model)`` round-trips, ``torch.compile``
gives the eager output, and no tensors stay on the model between forwards.
"""

from __future__ import annotations

import copy
import gc
import weakref
from typing import Callable

import pytest
import torch
from conftest import CROSS_ATTENTION_DIM, randomize_temporal, tiny_image_unet, tiny_vae
from torch import nn

from videoldm import VideoUNet
from videoldm.models.autoencoder import TemporalDecoder
from videoldm.models.temporal import TemporalHook


def _video_unet() -> VideoUNet:
    model = VideoUNet.from_image_unet(tiny_image_unet())
    randomize_temporal(model)
    return model.eval()


def _decoder() -> TemporalDecoder:
    model = TemporalDecoder.from_autoencoder(tiny_vae())
    randomize_temporal(model)
    return model.eval()


def _conditioning(seed: int = 0) -> torch.Tensor:
    """Per-video text conditioning ``(1, 5, D)``."""
    return torch.randn(1, 5, CROSS_ATTENTION_DIM, generator=torch.Generator().manual_seed(seed))


def _latents(seed: int = 0) -> torch.Tensor:
    """A latent video ``(1, 3, 4, 8, 8)``: the input of both tiny models."""
    return torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(seed + 100))


def _run_unet(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(_latents(), 10, _conditioning()).sample


def _run_decoder(model: TemporalDecoder) -> torch.Tensor:
    with torch.no_grad():
        return model.decode(_latents())


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module], torch.Tensor]]] = {
    "unet": (_video_unet, _run_unet),
    "decoder": (_decoder, _run_decoder),
}


def _temporal_hooks(model: VideoUNet | TemporalDecoder) -> list[TemporalHook]:
    spatial = getattr(model, model.spatial_attribute)
    return [hook for module in spatial.modules() for hook in module._forward_hooks.values() if isinstance(hook, TemporalHook)]


def _assert_hooks_run_own_layers(model: VideoUNet | TemporalDecoder) -> None:
    hooks = _temporal_hooks(model)
    assert sorted(hook.key for hook in hooks) == sorted(model.temporal.keys())
    assert all(hook.inflation is model.temporal for hook in hooks)


@pytest.mark.parametrize("kind", MODELS)
def test_deep_copy_runs_its_own_temporal_layers(kind):
    build, run = MODELS[kind]
    original = build()
    expected = run(original)
    clone = copy.deepcopy(original)
    _assert_hooks_run_own_layers(clone)
    assert torch.equal(run(clone), expected)

    randomize_temporal(clone, seed=7, alpha_logit=-1.0)
    changed = run(clone)
    assert torch.equal(run(original), expected)
    assert (changed - expected).abs().max() > 1e-3
    reference = build()
    reference.load_state_dict(clone.state_dict())
    assert torch.equal(run(reference), changed)


@pytest.mark.parametrize("kind", MODELS)
def test_attach_is_idempotent_on_a_copy(kind):
    build, run = MODELS[kind]
    original = build()
    expected = run(original)
    clone = copy.deepcopy(original)
    for _ in range(2):
        clone.temporal.attach(getattr(clone, clone.spatial_attribute))
    _assert_hooks_run_own_layers(clone)
    _assert_hooks_run_own_layers(original)
    assert torch.equal(run(clone), expected) and torch.equal(run(original), expected)


@pytest.mark.parametrize("kind", MODELS)
def test_torch_save_round_trips(kind, tmp_path):
    build, run = MODELS[kind]
    original = build()
    original.enable_gradient_checkpointing()  # its checkpoint function is pickled with the blocks
    torch.save(original, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    _assert_hooks_run_own_layers(loaded)
    assert torch.equal(run(loaded), run(original))
    loaded.temporal.attach(getattr(loaded, loaded.spatial_attribute))
    _assert_hooks_run_own_layers(loaded)


def test_video_unet_keeps_no_tensors_between_forwards():
    model = _video_unet()
    sample, conditioning = _latents(), _conditioning()
    alive = weakref.ref(conditioning)
    with torch.no_grad():
        model(sample, 10, conditioning)
    assert model.temporal.frame_context is None
    del conditioning
    gc.collect()
    assert alive() is None

    with pytest.raises(RuntimeError):
        model(sample, 10, torch.randn(1, 5, CROSS_ATTENTION_DIM + 1))  # fails inside the UNet
    assert model.temporal.frame_context is None


def test_checkpointed_graph_holds_the_frame_context_until_backward():
    model = _video_unet().freeze_spatial().train()
    model.enable_gradient_checkpointing()
    conditioning = _conditioning()
    alive = weakref.ref(conditioning)
    loss = model(_latents(), 10, conditioning).sample.square().mean()
    del conditioning
    gc.collect()
    assert model.temporal.frame_context is None
    assert alive() is not None, "recomputation in backward needs the context of its forward"
    loss.backward()
    assert model.temporal.frame_context is None
    del loss
    gc.collect()
    assert alive() is None


def test_decoder_keeps_no_tensors_between_decodes():
    model = _decoder()
    indicator = torch.zeros(1, 3, dtype=torch.bool)
    alive = weakref.ref(indicator)
    with torch.no_grad():
        model.decode(_latents(), image_only_indicator=indicator)
    assert model.temporal.frame_context is None
    del indicator
    gc.collect()
    assert alive() is None


@pytest.mark.parametrize("backend", [
    # aot_eager traces (dynamo) and functionalises (AOTAutograd) like inductor, without its slow C++ build
    "aot_eager",
    # 60 s on 2 CPU cores with a cold inductor cache (16 s warm), nearly all code generation
    pytest.param("inductor", marks=pytest.mark.slow),
])
def test_torch_compile_matches_eager(backend):
    model = _video_unet()
    compiled = torch.compile(model, backend=backend)
    torch.testing.assert_close(_run_unet(compiled), _run_unet(model), atol=1e-5, rtol=0)
    assert model.temporal.frame_context is None
