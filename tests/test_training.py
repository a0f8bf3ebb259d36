"""The digits recipes run a few steps on tiny settings; resumption is exact; the embedded model generates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from videoldm.training.stages import build_trainer, load_recipe

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_recipe(name: str, runs: Path, steps: int = 3) -> dict:
    """The shipped recipe ``name`` shrunk to a few steps of tiny models on a few short videos."""
    recipe = load_recipe(CONFIGS / f"{name}.yaml")
    recipe["output_dir"] = str(runs / recipe["stage"])
    for key in ("autoencoder", "image_model"):
        if key in recipe:
            recipe[key] = str(runs / Path(recipe[key]).parent.name / "final")
    recipe["data"].update(num_videos=16, num_frames=4)
    recipe["train"].update(steps=steps, batch_size=4, checkpoint_every=2, num_workers=1, warmup_steps=0)
    if recipe["stage"] == "autoencoder":
        recipe["model"].update(block_out_channels=[8, 16, 16], norm_num_groups=8)
    if recipe["stage"] == "image_ldm":
        recipe["model"].update(block_out_channels=[16, 32], norm_num_groups=8, attention_head_dim=8, cross_attention_dim=16)
        recipe["label_embedding_dim"] = 16
    if recipe["stage"] == "video":
        recipe["temporal"]["attention_head_dim"] = 8
    return recipe


@pytest.fixture(scope="module")
def trained_stages(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    for name in ("digits_autoencoder", "digits_image_ldm", "digits_video"):
        result = build_trainer(tiny_recipe(name, runs)).train()
        assert result.step == 3 and all(torch.isfinite(torch.tensor(v)) for v in result.logs.values())
    return runs


def test_every_recipe_runs_and_exports(trained_stages):
    from videoldm import VideoLDMPipeline, VideoUNet

    assert (trained_stages / "autoencoder" / "final" / "config.json").is_file()
    pipe = VideoLDMPipeline.from_pretrained(trained_stages / "video" / "final")
    assert isinstance(pipe.unet, VideoUNet)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(labels=[[1, -1]], num_frames=3, num_inference_steps=2, output_type="pt").frames
    assert frames.shape == (1, 3, 1, 32, 32)


def test_video_stage_trains_temporal_layers_only(trained_stages, tmp_path):
    recipe = tiny_recipe("digits_video", trained_stages, steps=2)
    recipe["output_dir"] = str(tmp_path / "video")
    trainer = build_trainer(recipe)
    spatial = {name: p.detach().clone() for name, p in trainer.stage.unet.unet.named_parameters()}
    trainer.train()
    for name, parameter in trainer.stage.unet.unet.named_parameters():
        assert torch.equal(parameter, spatial[name]), name


def test_resumed_run_continues_from_its_checkpoint_exactly(trained_stages, tmp_path):
    def recipe(directory: str) -> dict:
        tiny = tiny_recipe("digits_video", trained_stages, steps=4)
        tiny["output_dir"] = str(tmp_path / directory)
        return tiny

    straight = build_trainer(recipe("straight"))
    straight.train()
    interrupted = build_trainer(recipe("resumed"))
    assert interrupted.train(max_steps=2).step == 2
    assert not (tmp_path / "resumed" / "final").exists()
    resumed = build_trainer(recipe("resumed"))
    result = resumed.train()
    assert result.step == 4
    for (name, a), b in zip(straight.stage.unet.temporal.named_parameters(), resumed.stage.unet.temporal.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_recipe_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"stage": "nonsense", "output_dir": "x"}))
    with pytest.raises(ValueError, match="nonsense"):
        load_recipe(bad)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_recipe(tmp_path / "missing.yaml")
    recipe = tiny_recipe("digits_video", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="train the previous stage first"):
        build_trainer(recipe)


def test_embedded_model_generates_a_digit_video(tmp_path):
    from videoldm.cli import load_pipeline

    pipe = load_pipeline(None)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(labels=[[7, -1]], num_frames=4, num_inference_steps=3, guidance_scale=2.0,
                  generator=torch.Generator().manual_seed(0), output_type="pt").frames
    assert frames.shape == (1, 4, 1, 32, 32) and frames.dtype == torch.float32
    assert frames.max() > 0.5, "a digit is drawn (bright pixels on the dark canvas)"
