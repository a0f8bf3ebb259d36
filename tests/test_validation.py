"""Validation videos during training (a recipe's `validation:` section, `--validate-every`): written and logged at
every N steps and the last with the EMA weights, deterministic, without changing the training run, and neither
repeated nor skipped when a run is resumed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from videoldm.cli import main

pytest.importorskip("tensorboard")


def recipe(tmp_path: Path, name: str = "run", validation: dict | None = None, **train) -> Path:
    values = {"stage": "video", "output_dir": str(tmp_path / name), "model": "embedded",
              "data": {"kind": "digits", "num_videos": 8, "num_frames": 4},
              "train": {"steps": 4, "batch_size": 2, "checkpoint_every": 3, "num_workers": 0, "log_every": 1,
                        "log_with": "tensorboard", **train}}
    if validation is not None:
        values["validation"] = validation
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def run(args: list) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in args])
    return exit_info.value.code


def logged_steps(run_dir: Path, kind: str) -> dict[str, list[int]]:
    """Steps of every tag of ``kind`` ("scalars" or "images") as TensorBoard reads the run (purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "videoldm"), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    read = accumulator.Images if kind == "images" else accumulator.Scalars
    return {tag: [event.step for event in read(tag)] for tag in accumulator.Tags()[kind]}


VALIDATION = {"every": 2, "labels": [[3], [7, 1]], "steps": 2, "num_frames": 5}
NAMES = ["00_labels-3.gif", "01_labels-7-1.gif"]


def test_validation_videos_at_every_n_steps_and_in_tensorboard(tmp_path, capsys):
    assert run(["train", recipe(tmp_path, validation=VALIDATION)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "step 2: 2 validation video(s) in" in out and "step 4: 2 validation video(s) in" in out
    folders = sorted(path.name for path in (tmp_path / "run" / "validation").iterdir())
    assert folders == ["step-000002", "step-000004"]
    for folder in folders:
        files = sorted(path.name for path in (tmp_path / "run" / "validation" / folder).iterdir())
        assert files == NAMES
        with Image.open(tmp_path / "run" / "validation" / folder / NAMES[1]) as gif:
            assert (gif.n_frames, gif.size) == (5, (32, 32))
    images = logged_steps(tmp_path / "run", "images")
    assert images == {"validation/00_labels-3": [2, 4], "validation/01_labels-7-1": [2, 4]}
    assert logged_steps(tmp_path / "run", "scalars")["validation_seconds"] == [2, 4]


def test_validation_changes_nothing_in_training(tmp_path, capsys):
    assert run(["train", recipe(tmp_path, "with", validation=VALIDATION)]) == 0, capsys.readouterr().err
    assert run(["train", recipe(tmp_path, "without")]) == 0, capsys.readouterr().err
    losses = [[json.loads(line)["loss"] for line in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
              for name in ("with", "without")]
    assert losses[0] == losses[1]
    weights = [(tmp_path / name / "final" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
               for name in ("with", "without")]
    assert weights[0] == weights[1]


def test_a_run_killed_between_validation_and_checkpoint_resumes_without_repeats(tmp_path, capsys):
    path = recipe(tmp_path, validation=VALIDATION)
    assert run(["train", path]) == 0, capsys.readouterr().err
    step_4 = tmp_path / "run" / "validation" / "step-000004"
    first = {name: (step_4 / name).read_bytes() for name in NAMES}
    # killed after step 4's validation videos, before its checkpoint: the last checkpoint is step 3
    shutil.rmtree(tmp_path / "run" / "checkpoint-4")
    shutil.rmtree(tmp_path / "run" / "final")
    assert run(["train", path]) == 0, capsys.readouterr().err
    assert "resumed from step 3" in capsys.readouterr().out
    assert {name: (step_4 / name).read_bytes() for name in NAMES} == first  # the same videos again
    # TensorBoard's purge at the resumed step drops the killed run's step-4 events: each step once
    assert logged_steps(tmp_path / "run", "images") == {"validation/00_labels-3": [2, 4], "validation/01_labels-7-1": [2, 4]}
    assert logged_steps(tmp_path / "run", "scalars")["loss"] == [1, 2, 3, 4]


def test_validate_every_on_the_command_line_samples_unconditional_videos(tmp_path, capsys):
    assert run(["train", recipe(tmp_path, steps=2), "--validate-every", 1]) == 0, capsys.readouterr().err
    for step in (1, 2):
        files = sorted(path.name for path in (tmp_path / "run" / "validation" / f"step-{step:06d}").iterdir())
        assert files == ["00_unconditional.gif", "01_unconditional.gif"]


@pytest.mark.parametrize("validation, expected", [
    ({"every": 2, "prompts": ["a cat"]}, "validation: prompts need a text-conditional model; this one takes labels"),
    ({"every": 2, "labels": [[12]]}, "validation: labels [12]: labels must lie in [-1, 9]"),
    ({"every": 0}, "validation: every must be >= 1, got 0"),
    ({"evry": 2}, "validation"),
])
def test_a_bad_validation_section_is_one_error_line_before_training(tmp_path, capsys, validation, expected):
    assert run(["train", recipe(tmp_path, validation=validation)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "run" / "checkpoint-3").exists()


def test_a_stage_without_validation_videos_says_so(tmp_path, capsys):
    path = tmp_path / "interpolation.yaml"
    path.write_text(yaml.safe_dump({"stage": "interpolation", "output_dir": str(tmp_path / "run"),
                                    "data": {"kind": "digits", "num_videos": 4, "num_frames": 17},
                                    "validation": {"every": 1}, "train": {"steps": 1, "batch_size": 1}}))
    assert run(["train", path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "InterpolationStage makes no validation videos" in err[0], err
