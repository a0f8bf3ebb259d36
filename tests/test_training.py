"""The digits recipes run a few steps on tiny settings; resumption is exact; the embedded model generates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from videoldm.training.recipes import RECIPES_DIR, RecipeError, load_recipe
from videoldm.training.stages import build_trainer

CONFIGS = RECIPES_DIR


def tiny_recipe(name: str, runs: Path, steps: int = 3) -> dict:
    """The shipped recipe ``name`` shrunk to a few steps of tiny models on a few short videos."""
    recipe = load_recipe(CONFIGS / f"{name}.yaml")
    recipe["output_dir"] = str(runs / recipe["stage"])
    for key in ("autoencoder", "image_model", "video_model"):
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
    if recipe["stage"] == "decoder":
        recipe["discriminator"].update(base_channels=8, norm_num_groups=8)
        recipe["disc_start"] = 1
    return recipe


@pytest.fixture(scope="module")
def trained_stages(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    for name in ("digits_autoencoder", "digits_image_ldm", "digits_video", "decoder_digits"):
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


def test_decoder_stage_exports_the_video_pipeline_with_its_temporal_decoder(trained_stages):
    from diffusers import AutoencoderKL

    from videoldm import TemporalDecoder, VideoLDMPipeline

    pipe = VideoLDMPipeline.from_pretrained(trained_stages / "decoder" / "final")
    assert isinstance(pipe.vae, TemporalDecoder)
    image_vae = AutoencoderKL.from_pretrained(trained_stages / "autoencoder" / "final")
    spatial = pipe.vae.vae.state_dict()
    assert all(torch.equal(spatial[key], value) for key, value in image_vae.state_dict().items())
    trained_blend = [p for name, p in pipe.vae.temporal.named_parameters() if not name.endswith("mix_logit")]
    assert any(p.abs().sum() > 0 for p in trained_blend), "the zero-initialised temporal layers must have trained"
    pipe.set_progress_bar_config(disable=True)
    for decoder in ("video", "image"):
        frames = pipe(labels=[[1, -1]], num_frames=3, num_inference_steps=2, decoder=decoder, output_type="pt").frames
        assert frames.shape == (1, 3, 1, 32, 32)


def test_decoder_stage_trains_only_temporal_layers_and_discriminator(trained_stages, tmp_path):
    from videoldm.training.perceptual import PerceptualLoss

    vgg16 = {f"features.{key}": value for key, value in PerceptualLoss().features.state_dict().items()}
    torch.save(vgg16, tmp_path / "vgg16.pth")
    recipe = tiny_recipe("decoder_digits", trained_stages, steps=2)
    recipe["output_dir"] = str(tmp_path / "decoder")
    recipe["perceptual"] = {"vgg16_weights": str(tmp_path / "vgg16.pth"), "weight": 0.5}
    trainer = build_trainer(recipe)
    stage = trainer.stage
    assert stage.perceptual_loss is not None
    before = {name: p.detach().clone() for name, p in stage.decoder.named_parameters()}
    discriminator_before = [p.detach().clone() for p in stage.discriminator.parameters()]
    trainer.train()
    changed = {name for name, p in stage.decoder.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(name.startswith("temporal.") for name in changed), sorted(changed)[:5]
    assert any(not torch.equal(a, b) for a, b in zip(stage.discriminator.parameters(), discriminator_before))


def test_video_stage_trains_temporal_layers_only(trained_stages, tmp_path):
    recipe = tiny_recipe("digits_video", trained_stages, steps=2)
    recipe["output_dir"] = str(tmp_path / "video")
    trainer = build_trainer(recipe)
    spatial = {name: p.detach().clone() for name, p in trainer.stage.unet.unet.named_parameters()}
    trainer.train()
    for name, parameter in trainer.stage.unet.unet.named_parameters():
        assert torch.equal(parameter, spatial[name]), name


@pytest.mark.parametrize("name", ["digits_video", "decoder_digits"])
def test_resumed_run_continues_from_its_checkpoint_exactly(trained_stages, tmp_path, name):
    def recipe(directory: str) -> dict:
        tiny = tiny_recipe(name, trained_stages, steps=4)
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
    # every module the stage checkpoints (the decoder stage's discriminator and its optimiser included)
    for key, module in straight.stage.modules().items():
        other = dict(resumed.stage.modules()[key].named_parameters())
        for parameter_name, parameter in module.named_parameters():
            assert torch.allclose(parameter, other[parameter_name], atol=1e-6), f"{key}.{parameter_name}"


def test_recipe_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"stage": "nonsense", "output_dir": "x"}))
    with pytest.raises(ValueError, match="nonsense"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="missing.yaml"):
        load_recipe(tmp_path / "missing.yaml")
    recipe = tiny_recipe("digits_video", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="train the previous stage first"):
        build_trainer(recipe)


def test_video_stage_refuses_unknown_entries_such_as_image_batch_fraction(tmp_path):
    # image_batch_fraction was removed: with frozen spatial layers, image-only samples (alpha forced
    # to 1) give the temporal layers no gradient. A recipe still naming it must say so, not train.
    recipe = load_recipe(CONFIGS / "digits_video.yaml")
    recipe["image_batch_fraction"] = 0.5
    with pytest.raises(RecipeError, match=r"recipe of stage VideoStage: unknown entries \[.image_batch_fraction.\]"):
        build_trainer(recipe)
    path = tmp_path / "video.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(RecipeError, match=r"video\.yaml: unknown entries \['image_batch_fraction'\]"):
        load_recipe(path)


def test_embedded_model_generates_a_digit_video():
    from videoldm import VideoLDMPipeline
    from videoldm.embedded import embedded_model_dir

    # The shipped weights are half precision; CPUs compute in float32.
    pipe = VideoLDMPipeline.from_pretrained(embedded_model_dir(), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(labels=[[7, -1]], num_frames=4, num_inference_steps=3, guidance_scale=2.0,
                  generator=torch.Generator().manual_seed(0), output_type="pt").frames
    assert frames.shape == (1, 4, 1, 32, 32) and frames.dtype == torch.float32
    assert frames.max() > 0.5, "a digit is drawn (bright pixels on the dark canvas)"
