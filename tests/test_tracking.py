"""Trackers through accelerate: `train.log_with` / `--log-with tensorboard` writes an event file holding the losses,
learning rate, step time, samples per second and peak memory; a bad tracker is one error line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from videoldm.cli import main

pytest.importorskip("tensorboard")


def recipe(tmp_path: Path, **train) -> Path:
    values = {"stage": "video", "output_dir": str(tmp_path / "run"), "model": "embedded",
              "data": {"kind": "digits", "num_videos": 8, "num_frames": 8},
              "train": {"steps": 3, "batch_size": 2, "checkpoint_every": 3, "num_workers": 0, "log_every": 1, **train}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in args])
    return exit_info.value.code


def scalars(run_dir: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(run_dir.rglob("events.out.tfevents.*"))
    assert events, f"no tensorboard event file under {run_dir}"
    logged: dict[str, list[int]] = {}
    for event_file in events:
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            logged.setdefault(tag, []).extend(event.step for event in accumulator.Scalars(tag))
    return logged


@pytest.mark.parametrize("where", ["recipe", "command line"])
def test_tensorboard_gets_every_logged_step(tmp_path, capsys, where):
    path = recipe(tmp_path, **({"log_with": "tensorboard"} if where == "recipe" else {}))
    extra = ["--log-with", "tensorboard"] if where == "command line" else []
    assert run(["train", path, *extra]) == 0, capsys.readouterr().err
    logged = scalars(tmp_path / "run")
    for tag in ("loss", "lr", "step_seconds", "samples_per_second", "peak_memory_mb"):
        assert sorted(logged[tag]) == [1, 2, 3], (tag, logged)
    assert (tmp_path / "run" / "train_log.jsonl").is_file()  # the JSON log stays


def test_a_resumed_run_logs_each_step_once(tmp_path, capsys):
    path = recipe(tmp_path, log_with="tensorboard", checkpoint_every=1)
    assert run(["train", path, "--steps", 2]) == 0, capsys.readouterr().err
    assert run(["train", path]) == 0, capsys.readouterr().err
    assert sorted(scalars(tmp_path / "run")["loss"]) == [1, 2, 3]


def test_an_unknown_tracker_is_one_error_line(tmp_path, capsys):
    assert run(["train", recipe(tmp_path), "--log-with", "nosuchtracker"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --log-with: log_with must be one of")
