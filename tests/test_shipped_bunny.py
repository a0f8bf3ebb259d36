"""The shipped bunny model (real footage): loads by name, samples RGB 64x64 frames of the right shape and dtype,
deterministically, and continues them window by window."""

from __future__ import annotations

import json

import pytest
import torch

from videoldm import TemporalDecoder, VideoLDMPipeline
from videoldm.embedded import shipped_model_dir
from videoldm.pipelines.directory import inspect_pipeline_directory


@pytest.fixture(scope="module")
def bunny() -> VideoLDMPipeline:
    pipe = VideoLDMPipeline.from_pretrained(shipped_model_dir("bunny"), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_bunny_model_is_small_half_precision_and_plays_at_its_own_rate():
    directory = shipped_model_dir("bunny")
    size = sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())
    assert size < 60 * 2**20, size
    info = inspect_pipeline_directory(directory)
    assert info.conditioning == "none" and info.has_context_conditioning and info.default_fps == 12.0
    assert info.frame_shape == (3, 64, 64)
    assert json.loads((directory / "model_index.json").read_text())["default_noise_correlation"] == 0.0
    from safetensors import safe_open

    files = sorted(directory.rglob("*.safetensors"))
    assert len(files) == 3  # the UNet in two shards (each file under 30 MB), the temporal decoder in one
    for path in files:
        assert path.stat().st_size < 30 * 2**20, path
        with safe_open(str(path), "pt") as weights:
            assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"F16"}, path


def test_the_bunny_model_samples_four_frames_deterministically(bunny):
    assert isinstance(bunny.vae, TemporalDecoder)
    first, again = (bunny(num_frames=4, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                          output_type="pt").frames for _ in range(2))
    assert first.shape == (1, 4, 3, 64, 64) and first.dtype == torch.float32
    assert torch.equal(first, again)
    assert 0 <= first.min() and first.max() <= 1 and first.std() > 0.01  # not a constant frame


def test_the_bunny_model_rolls_out_past_its_window(bunny):
    frames = bunny(num_frames=20, window_frames=16, context_frames=2, num_inference_steps=2,
                   generator=torch.Generator().manual_seed(0), output_type="pt").frames
    assert frames.shape == (1, 20, 3, 64, 64)
