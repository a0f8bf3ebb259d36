"""The digits recipes run a few steps on tiny settings; resumption is exact; the embedded model generates."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
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
    assert pipe.config.default_num_inference_steps == 25  # inflated from an image model: the usual number
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


def test_decoder_validation_videos_show_the_clip_beside_both_decoders(trained_stages, tmp_path):
    from PIL import Image

    from videoldm.training.validation import ValidationSettings

    recipe = tiny_recipe("decoder_digits", trained_stages, steps=1)
    recipe["output_dir"] = str(tmp_path / "decoder")
    trainer = build_trainer({**recipe, "validation": {"every": 1, "num_videos": 1}})
    assert trainer.validation == ValidationSettings(every=1, num_videos=1)
    trainer.train()
    with Image.open(tmp_path / "decoder" / "validation" / "step-000001" / "00_real-image-temporal.gif") as gif:
        assert (gif.n_frames, gif.size) == (4, (3 * 32, 32))  # real | image decoder | temporal decoder


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


# ----------------------------------------------------------------------------- processes, checkpoints, interruption
def _trained(output_dir: Path) -> dict[str, torch.Tensor]:
    """The trainable weights of the newest checkpoint of a run."""
    from safetensors.torch import load_file

    from videoldm.training.trainer import TRAINABLE_FILE, complete_checkpoints

    return load_file(complete_checkpoints(output_dir)[-1] / TRAINABLE_FILE)


def _losses(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]


def _assert_same_run(run: Path, reference: Path, weight_tolerance: float = 1e-6) -> None:
    """Same loss sequence and same trainable weights, within float tolerance."""
    losses, expected = _losses(run), _losses(reference)
    assert [entry["step"] for entry in losses] == [entry["step"] for entry in expected]
    assert torch.allclose(torch.tensor([e["loss"] for e in losses]), torch.tensor([e["loss"] for e in expected]), atol=1e-6)
    weights, expected_weights = _trained(run), _trained(reference)
    assert weights.keys() == expected_weights.keys()
    for name, value in expected_weights.items():
        assert torch.allclose(weights[name], value, atol=weight_tolerance), name


def _video_recipe(trained_stages: Path, output_dir: Path, steps: int, **train) -> dict:
    recipe = tiny_recipe("digits_video", trained_stages, steps=steps)
    recipe["output_dir"] = str(output_dir)
    recipe["train"].update(log_every=1, **train)
    return recipe


def _write_recipe(recipe: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


# Splitting the batch over processes or accumulation steps sums the gradient in another order. Adam's
# first steps divide each gradient by its own size, so elements with a near-zero gradient turn that
# float noise into up to ~2e-5: half an Adam step (lr 2e-4) is the tolerance.
REORDERED_SUM_TOLERANCE = 1e-4

# One thread per process: the runs agree with the in-process reference (conftest sets one thread)
# and share the CI machine's cores politely.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# Rank-wise weights of a multi-process `videoldm train`: the real command, with each process also
# saving what it ended with (only the main process writes checkpoints).
EVERY_RANK_SAVES = """
import sys, torch
import videoldm.training.stages as stages
from videoldm.cli import main
built = []
def build_and_keep(*args, **kwargs):
    built.append(build_trainer(*args, **kwargs))
    return built[-1]
build_trainer, stages.build_trainer = stages.build_trainer, build_and_keep
try:
    main(["train", sys.argv[1]])
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
trainer = built[0]
weights = {trainer.parameter_names[id(p)]: p.detach().cpu() for p in trainer.parameters}
torch.save(weights, f"{sys.argv[2]}/rank{trainer.accelerator.process_index}.pt")
"""


def test_two_processes_train_like_one_with_the_same_global_batch(trained_stages, tmp_path):
    steps = 3
    single = build_trainer(_video_recipe(trained_stages, tmp_path / "one", steps))
    single.train()
    recipe = _write_recipe(_video_recipe(trained_stages, tmp_path / "two", steps), tmp_path / "video.yaml")
    (tmp_path / "script.py").write_text(EVERY_RANK_SAVES)
    with socket.socket() as probe:  # a free port: other test runs on this machine may hold the default one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
               str(tmp_path / "script.py"), str(recipe), str(tmp_path)]
    run = subprocess.run(command, env={**SUBPROCESS_ENV, "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 process(es) (MULTI_CPU, cpu), global batch 4 = 2 x 2" in run.stdout + run.stderr
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    # Unsynchronised ranks would differ from each other; ranks training on other samples would differ
    # from the 1-process run by whole Adam steps.
    expected = {single.parameter_names[id(p)]: p.detach() for p in single.parameters}
    for name, value in expected.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"the ranks differ in {name}"
        assert torch.allclose(ranks[0][name], value, atol=REORDERED_SUM_TOLERANCE), name
    _assert_same_run(tmp_path / "two", tmp_path / "one", weight_tolerance=REORDERED_SUM_TOLERANCE)


@pytest.fixture(scope="module")
def uninterrupted(trained_stages, tmp_path_factory) -> tuple[dict, Path]:
    """A 12-step video run (checkpoint every 4 steps, a data worker), trained without interruption."""
    recipe = _video_recipe(trained_stages, tmp_path_factory.mktemp("straight") / "run", steps=12, checkpoint_every=4)
    build_trainer(recipe).train()
    return recipe, Path(recipe["output_dir"])


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_an_interrupted_run_resumes_to_the_uninterrupted_weights_and_losses(uninterrupted, tmp_path, capsys, signum):
    from videoldm.cli import main

    recipe, reference = uninterrupted
    run_dir = tmp_path / "run"
    path = _write_recipe({**recipe, "output_dir": str(run_dir)}, tmp_path / "video.yaml")
    command = [sys.executable, "-m", "videoldm", "train", str(path)]
    # its own process group, as a shell job: Ctrl-C reaches the data worker too
    process = subprocess.Popen(command, env=SUBPROCESS_ENV, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoint-4").is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be interrupted"
    os.killpg(process.pid, signum)
    _, stderr = process.communicate(timeout=120)
    assert not (run_dir / "final").exists()
    if signum == signal.SIGINT:
        assert process.returncode == 130, stderr[-2000:]
        stopped_at = _losses(run_dir)[-1]["step"]
        assert f"interrupted by SIGINT at step {stopped_at}; saved" in stderr
        assert (run_dir / f"checkpoint-{stopped_at}").is_dir(), "Ctrl-C writes a checkpoint of the last step"
    else:
        assert process.returncode == -signal.SIGKILL
    # the same command again (in this process, to save a start-up)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(path)])
    assert exit_info.value.code in (0, None)
    assert "resumed from step" in capsys.readouterr().out
    _assert_same_run(run_dir, reference)
    assert not list(run_dir.glob(".*")), "no partial checkpoint is left behind"


def _stage_with_loss(trainer, loss):
    """Replace the stage's loss in a trainer (it reaches the stage through its prepared StageLoss)."""
    trainer.loss_module.compute = loss


def test_sigterm_finishes_the_step_writes_a_checkpoint_and_means_exit_143(trained_stages, tmp_path):
    from videoldm.training.trainer import TrainingInterrupted

    trainer = build_trainer(_video_recipe(trained_stages, tmp_path / "run", steps=8, checkpoint_every=4))
    real_loss = trainer.stage.loss

    def loss_then_sigterm(batch, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step
        return real_loss(batch, step)

    _stage_with_loss(trainer, loss_then_sigterm)
    with pytest.raises(TrainingInterrupted, match="SIGTERM at step 2") as interrupted:
        trainer.train()
    assert interrupted.value.exit_code == 143
    assert [path.name for path in (tmp_path / "run").glob("checkpoint-*")] == ["checkpoint-2"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, "the handlers are restored"


def test_a_nan_loss_stops_with_its_step_and_keeps_the_last_good_checkpoint(trained_stages, tmp_path):
    from videoldm.training.trainer import TrainingDiverged

    trainer = build_trainer(_video_recipe(trained_stages, tmp_path / "run", steps=8, checkpoint_every=2))
    real_loss = trainer.stage.loss

    def loss_nan_at_step_3(batch, step):
        loss, logs = real_loss(batch, step)
        return (loss * float("nan") if step == 3 else loss), logs

    _stage_with_loss(trainer, loss_nan_at_step_3)
    with pytest.raises(TrainingDiverged, match=r"at step 4; .*last good checkpoint is .*checkpoint-2"):
        trainer.train()
    assert sorted(path.name for path in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2"]
    good = _trained(tmp_path / "run")
    assert all(torch.isfinite(value).all() for value in good.values())


def test_checkpoints_hold_only_trained_weights_and_partial_ones_are_ignored(trained_stages, tmp_path):
    from videoldm.training.trainer import complete_checkpoints

    run = tmp_path / "run"
    trainer = build_trainer(_video_recipe(trained_stages, run, steps=4, checkpoint_every=1, keep_checkpoints=2))
    trainer.train()
    assert [path.name for path in complete_checkpoints(run)] == ["checkpoint-3", "checkpoint-4"]
    names = _trained(run).keys()
    assert names == {trainer.parameter_names[id(p)] for p in trainer.stage.unet.temporal_parameters()}
    assert all(name.startswith("unet.temporal.") for name in names)
    # a write that was killed half-way (no state file) and a partial directory are not resumed from
    (run / "checkpoint-9").mkdir()
    (run / ".checkpoint-10.partial").mkdir()
    resumed = build_trainer(_video_recipe(trained_stages, run, steps=4))
    assert resumed.resume() and resumed.step == 4


def test_a_changed_recipe_suggests_fresh_and_fresh_sets_the_old_run_aside(trained_stages, tmp_path, capsys):
    from videoldm.cli import main

    run = tmp_path / "run"
    build_trainer(_video_recipe(trained_stages, run, steps=2)).train()
    changed = _video_recipe(trained_stages, run, steps=2)
    changed["temporal"]["temporal_kinds"] = ["conv"]
    path = _write_recipe(changed, tmp_path / "changed.yaml")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    assert "checkpoint-2 does not fit this recipe" in lines[0] and "--fresh" in lines[0]
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(path), "--fresh"])
    assert exit_info.value.code in (0, None)
    (aside,) = run.glob("previous-*")
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoint-2", "final", "train_log.jsonl"]
    assert (run / "checkpoint-2").is_dir() and (run / "final").is_dir()


def test_accumulation_and_gradient_checkpointing_leave_the_result_unchanged(trained_stages, tmp_path):
    def weights(name: str, **train) -> dict[str, torch.Tensor]:
        trainer = build_trainer(_video_recipe(trained_stages, tmp_path / name, steps=2, **train))
        assert trainer.stage.unet.is_gradient_checkpointing == train.get("gradient_checkpointing", False)
        trainer.train()
        return {trainer.parameter_names[id(p)]: p.detach() for p in trainer.parameters}

    plain = weights("plain")
    checkpointed = weights("checkpointed", gradient_checkpointing=True)
    accumulated = weights("accumulated", gradient_accumulation_steps=2)
    for name, value in plain.items():
        assert torch.allclose(checkpointed[name], value, atol=1e-6), name
        assert torch.allclose(accumulated[name], value, atol=REORDERED_SUM_TOLERANCE), name
    _assert_same_run(tmp_path / "accumulated", tmp_path / "plain", weight_tolerance=REORDERED_SUM_TOLERANCE)


def test_mixed_precision_on_a_cpu_computes_in_float32(trained_stages, tmp_path):
    trainer = build_trainer(_video_recipe(trained_stages, tmp_path / "run", steps=1, mixed_precision="bf16"))
    assert trainer.mixed_precision == "no" and trainer.accelerator.mixed_precision == "no"
    assert trainer.train().step == 1
