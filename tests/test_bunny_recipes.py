"""The bunny recipes (configs/bunny_*.yaml) run end to end on a tiny synthetic film: an RGB autoencoder, an
unconditional image LDM, the Video LDM trained as a prediction model from the inflated image LDM, and the temporal
decoder; the result samples unconditionally and continues given frames."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from videoldm.training.recipes import RECIPES_DIR, load_recipe
from videoldm.training.stages import build_trainer


def tiny(name: str, film: Path, runs: Path) -> dict:
    """``configs/bunny_<name>.yaml`` on the synthetic film with tiny networks, 2 steps."""
    recipe = load_recipe(RECIPES_DIR / f"bunny_{name}.yaml")
    recipe["output_dir"] = str(runs / name)
    recipe["data"] = {**recipe["data"], "path": str(film), "cache": str(runs / "film"), "held_out": [30, 54], "size": 16}
    if name == "video":
        recipe["data"]["num_frames"] = 4
    for key, stage in (("autoencoder", "autoencoder"), ("image_model", "image_ldm")):
        if key in recipe:
            recipe[key] = str(runs / stage / "final")
    recipe["train"].update(steps=2, batch_size=2, checkpoint_every=2, num_workers=0, warmup_steps=0)
    if name == "autoencoder":
        recipe["model"].update(block_out_channels=[8, 16, 16], norm_num_groups=8, sample_size=16)
    if name == "image_ldm":
        recipe["model"].update(block_out_channels=[16, 32, 32], norm_num_groups=8, attention_head_dim=8, sample_size=4)
    if name == "video":
        recipe["temporal"]["attention_head_dim"] = 8
        recipe["context_channels"] = 8
        recipe["validation"] = {"every": 2, "num_videos": 1, "num_frames": 4, "steps": 2}
    if name == "decoder":
        recipe["discriminator"].update(base_channels=8, norm_num_groups=8)
        recipe["data"].update(size=32, cache=str(runs / "film-32"))  # the discriminator's 4x4 kernels need 32x32 frames
        recipe.pop("validation")
    return recipe


@pytest.fixture(scope="module")
def bunny_runs(synthetic_film, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("bunny")
    for name in ("autoencoder", "image_ldm", "video", "decoder"):
        result = build_trainer(tiny(name, synthetic_film, runs)).train()
        assert result.step == 2 and all(torch.isfinite(torch.tensor(value)) for value in result.logs.values())
    return runs


def test_the_bunny_video_ldm_samples_unconditionally_and_continues_frames(bunny_runs):
    from videoldm import VideoLDMPipeline

    pipe = VideoLDMPipeline.from_pretrained(bunny_runs / "video" / "final")
    assert pipe.label_encoder is None and pipe.text_encoder is None and pipe.unet.has_context_conditioning
    assert pipe.config.default_fps == 12  # the rate its clips were taken at: `videoldm generate` writes at it
    from videoldm.pipelines.directory import inspect_pipeline_directory

    assert inspect_pipeline_directory(bunny_runs / "video" / "final").default_fps == 12.0
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(num_frames=4, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").frames
    assert frames.shape == (1, 4, 3, 16, 16)
    longer = pipe(num_frames=7, window_frames=4, context_frames=2, num_inference_steps=2, output_type="pt").frames
    assert longer.shape == (1, 7, 3, 16, 16)
    assert sorted(p.name for p in (bunny_runs / "video" / "validation" / "step-000002").iterdir()) == ["00_unconditional.gif"]


def test_the_bunny_decoder_is_a_temporal_decoder_of_the_bunny_autoencoder(bunny_runs):
    from diffusers import AutoencoderKL

    from videoldm import TemporalDecoder

    decoder = TemporalDecoder.from_pretrained(bunny_runs / "decoder" / "final")
    image_vae = AutoencoderKL.from_pretrained(bunny_runs / "autoencoder" / "final")
    spatial = decoder.vae.state_dict()
    assert all(torch.equal(spatial[key], value) for key, value in image_vae.state_dict().items())
