"""Pipeline directories saved before the redesign (one all-in-one VideoLDMPipeline) still load and sample the same.

``tests/data/old_layout_pipeline`` is a tiny random pipeline with every stage (prediction model, temporal
decoder, label encoder, interpolation weights, video upsampler) saved by videoldm at 1e580ec, the last
commit before the pipelines were split; ``old_layout_reference_outputs.safetensors`` holds what that
code sampled from it. The same calls through the split pipelines must give the same frames.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from videoldm.pipelines import CascadePipeline, VideoLDMPipeline

DATA = Path(__file__).parent / "data"
OLD_PIPELINE = DATA / "old_layout_pipeline"


@pytest.fixture(scope="module")
def cascade() -> CascadePipeline:
    pipe = CascadePipeline.from_pretrained(OLD_PIPELINE, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(DATA / "old_layout_reference_outputs.safetensors")


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_an_old_directory_samples_every_stage_as_before(cascade, reference):
    rollout = cascade(labels=[[3]], num_frames=20, window_frames=8, guidance_scale=2.0, context_guidance_scale=1.5,
                      generator=seeded(0), output_type="pt").frames
    torch.testing.assert_close(rollout, reference["rollout"], rtol=0, atol=0)
    continued = cascade(labels=[[4]], num_frames=6, window_frames=8, init_video=reference["rollout"][0, :5] * 2 - 1,
                        generator=seeded(1), output_type="pt").frames
    torch.testing.assert_close(continued, reference["continued"], rtol=0, atol=0)
    full = cascade(labels=[[5]], num_frames=3, fps_multiplier=4, upscale=4, upsampler_steps=2, noise_level=10,
                   generator=seeded(2), output_type="pt").frames
    torch.testing.assert_close(full, reference["cascade"], rtol=0, atol=0)


def test_an_old_directory_interpolates_and_upsamples_as_before(cascade, reference):
    interpolated = cascade.interpolation_pipeline()(reference["rollout"][0, :3] * 2 - 1, 4, labels=[[3]],
                                                   generator=seeded(3), output_type="pt").frames
    torch.testing.assert_close(interpolated, reference["interpolated"], rtol=0, atol=0)
    upsampled = cascade.upsampler_pipeline()(reference["rollout"][:, :4] * 2 - 1, num_inference_steps=2, generator=seeded(4))
    torch.testing.assert_close((upsampled + 1) / 2, reference["upsampled"], rtol=0, atol=1e-6)


def test_the_key_frame_pipeline_loads_an_old_directory_with_its_own_components():
    pipe = VideoLDMPipeline.from_pretrained(OLD_PIPELINE, dtype=torch.float32)
    assert set(pipe.components) == {"unet", "vae", "scheduler", "text_encoder", "tokenizer", "label_encoder"}
    assert pipe.config.default_num_inference_steps == 3


@pytest.mark.parametrize("order", ["videoldm first", "diffusers first"])
def test_diffusion_pipeline_loads_a_saved_pipeline_after_a_plain_import_videoldm(order):
    """The new-user finding of the redesign issue: ``import videoldm`` alone makes DiffusionPipeline resolve our classes."""
    imports = ("import videoldm; from diffusers import DiffusionPipeline" if order == "videoldm first"
               else "from diffusers import DiffusionPipeline; import videoldm")
    script = f"{imports}; pipe = DiffusionPipeline.from_pretrained({str(OLD_PIPELINE)!r}); print(type(pipe).__name__)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "VideoLDMPipeline"


def test_import_videoldm_stays_torch_free():
    script = "import sys, videoldm; print('torch' in sys.modules, 'diffusers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["False", "False"], result.stderr[-2000:]


def test_the_names_diffusers_resolves_are_our_pipeline_classes():
    import diffusers

    import videoldm  # noqa: F401 - registers the names
    from videoldm import pipelines

    for name in pipelines.PIPELINE_NAMES:
        assert getattr(diffusers, name) is getattr(pipelines, name)
        assert issubclass(getattr(pipelines, name), diffusers.DiffusionPipeline)
