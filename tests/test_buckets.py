"""Buckets: clips of several lengths and sizes train in their own formats (`data: {buckets: [[frames, height,
width], ...]}`), each batch from one bucket, the same on 1 process as on 2."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import refused_recipe
from test_training import REORDERED_SUM_TOLERANCE, SUBPROCESS_ENV, _assert_same_run

from videoldm.cli import main
from videoldm.data.build import DataError, build_source
from videoldm.data.io import write_video
from videoldm.data.sources import ClipFormat, nearest_bucket
from videoldm.training.stages import build_trainer

BUCKETS = [[6, 32, 48], [6, 48, 32], [4, 32, 32]]
# name -> (frames, height, width): landscape, portrait and square clips, and one too small for any bucket
CLIPS = {"wide_a": (8, 40, 64), "wide_b": (9, 36, 60), "tall_a": (8, 64, 40), "tall_b": (7, 56, 36),
         "square": (5, 36, 36), "tiny": (8, 16, 16)}
EXPECTED_BUCKET = {"wide_a": 0, "wide_b": 0, "tall_a": 1, "tall_b": 1, "square": 2}


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mixed_clips")
    generator = torch.Generator().manual_seed(0)
    for name, (frames, height, width) in CLIPS.items():
        base = torch.rand(1, 3, height, width, generator=generator) * 2 - 1
        moving = torch.stack([base[0].roll(shifts=2 * t, dims=-1) for t in range(frames)])
        write_video(moving, folder / f"{name}.mp4", fps=8, crf=0)
    return folder


def bucket_formats(buckets=BUCKETS) -> list[ClipFormat]:
    return [ClipFormat(num_frames=f, height=h, width=w, channels=1) for f, h, w in buckets]


def test_the_nearest_bucket_is_the_closest_aspect_ratio_that_needs_no_upscaling():
    formats = bucket_formats()
    assert nearest_bucket(formats, 8, 40, 64) == 0  # landscape
    assert nearest_bucket(formats, 8, 64, 40) == 1  # portrait
    assert nearest_bucket(formats, 8, 40, 40) == 2  # square
    assert nearest_bucket(formats, 5, 40, 64) == 2  # too short for the landscape bucket: the one it fills
    assert nearest_bucket(formats, 8, 32, 40) == 2  # too narrow for 32x48 and too short for 48x32 without upscaling
    assert nearest_bucket(formats, 8, 16, 16) is None
    # equally close in aspect: the larger one
    assert nearest_bucket(bucket_formats([[4, 32, 32], [4, 64, 64]]), 8, 64, 64) == 1


def test_each_video_keeps_its_bucket_and_the_too_small_one_is_skipped(mixed_folder):
    with pytest.warns(UserWarning, match="tiny.mp4: smaller than every bucket"):
        source = build_source({"kind": "folder", "path": str(mixed_folder), "buckets": BUCKETS},
                              height=32, width=32, channels=1, size_multiple=8)
    buckets = {video.path.stem: bucket for video, bucket in zip(source.videos, source.bucket_of)}
    assert buckets == EXPECTED_BUCKET
    for index, video in enumerate(source.videos):
        frames, height, width = BUCKETS[source.bucket_of[index]]
        assert source[index]["video"].shape == (frames, 1, height, width), video.path.name


@pytest.mark.parametrize("data, expected", [
    ({"buckets": [[4, 30, 32]]}, "bucket [4, 30, 32]: height and width must be multiples of 8"),
    ({"buckets": [[4, 32]]}, "buckets must list [frames, height, width] triples"),
    ({"buckets": [[4, 32, 32]], "size": 32}, "remove num_frames and size"),
    ({"buckets": [[4, 32, 32], [4, 32, 32]]}, "buckets repeat a format"),
])
def test_bad_buckets_are_data_errors(mixed_folder, data, expected):
    with pytest.raises(DataError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        build_source({"kind": "folder", "path": str(mixed_folder), **data}, height=32, width=32, channels=1,
                     size_multiple=8)


def bucket_recipe(folder: Path, output_dir: Path, steps: int = 6) -> dict:
    return {"stage": "video", "output_dir": str(output_dir), "model": "embedded",
            "data": {"kind": "folder", "path": str(folder), "buckets": BUCKETS},
            "train": {"steps": steps, "batch_size": 4, "checkpoint_every": steps, "num_workers": 0, "log_every": 1,
                      "warmup_steps": 0}}


def test_every_batch_is_one_bucket_and_clips_keep_their_format(mixed_folder, tmp_path):
    trainer = build_trainer(bucket_recipe(mixed_folder, tmp_path / "run"))
    shapes = []
    loss = trainer.loss_module.compute

    def recording(batch, step):
        shapes.append(tuple(batch["video"].shape))
        return loss(batch, step)

    trainer.loss_module.compute = recording
    trainer.train()
    assert len(shapes) == 6
    assert all(shape[0] == 4 for shape in shapes)  # a whole batch, stacked: one format
    assert {shape[1:] for shape in shapes} <= {(f, 1, h, w) for f, h, w in BUCKETS}
    assert len({shape[1:] for shape in shapes}) >= 2, shapes  # not every clip cut to one size


def test_two_processes_train_on_buckets_like_one(mixed_folder, tmp_path):
    build_trainer(bucket_recipe(mixed_folder, tmp_path / "one", steps=3)).train()
    recipe = tmp_path / "buckets.yaml"
    recipe.write_text(yaml.safe_dump(bucket_recipe(mixed_folder, tmp_path / "two", steps=3)))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
               "1", "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "videoldm", "train", str(recipe)]
    run = subprocess.run(command, env={**SUBPROCESS_ENV, "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 process(es) (MULTI_CPU, cpu), global batch 4 = 2 x 2" in run.stdout + run.stderr
    _assert_same_run(tmp_path / "two", tmp_path / "one", weight_tolerance=REORDERED_SUM_TOLERANCE)


def test_buckets_refuse_cache_data(mixed_folder, tmp_path, capsys):
    recipe = bucket_recipe(mixed_folder, tmp_path / "run")
    recipe["train"]["cache_data"] = True
    assert "cache_data keeps one clip per video" in "\n".join(refused_recipe(recipe, tmp_path / "recipe.yaml", capsys))


def test_encode_caches_per_bucket_and_training_on_the_cache_batches_one_bucket(mixed_folder, tmp_path, capsys):
    from videoldm.data.latents import CachedLatents

    buckets = ",".join("x".join(map(str, bucket)) for bucket in BUCKETS)
    with pytest.raises(SystemExit) as exit_info:
        main(["encode", "--data", str(mixed_folder), "--buckets", buckets, "--out", str(tmp_path / "cache"),
              "--shard-size", "3", "--batch-size", "2"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    assert "wrote" in capsys.readouterr().out
    cache = CachedLatents(tmp_path / "cache")
    assert cache.buckets == BUCKETS and len(cache) == 5
    for index in range(len(cache)):
        frames, height, width = BUCKETS[cache.bucket_of[index]]
        assert cache[index]["latents"].shape == (frames, 4, height // 4, width // 4)
    assert sorted(len(videos) for videos in cache.bucket_videos) == [1, 2, 2]

    recipe = bucket_recipe(mixed_folder, tmp_path / "run", steps=4)
    recipe["data"] = {"kind": "latents", "path": str(tmp_path / "cache")}
    trainer = build_trainer(recipe)
    shapes = []
    loss = trainer.loss_module.compute
    trainer.loss_module.compute = lambda batch, step: (shapes.append(tuple(batch["latents"].shape)), loss(batch, step))[1]
    trainer.train()
    assert len(shapes) == 4 and all(shape[0] == 4 for shape in shapes)


def test_encode_buckets_exclude_size_and_frames(mixed_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["encode", "--data", str(mixed_folder), "--buckets", "4x32x32", "--size", "32x32", "--out", str(tmp_path / "c")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --buckets gives the clips' lengths and sizes; drop --num-frames and --size"


def test_data_on_the_command_line_keeps_the_recipes_buckets(mixed_folder, tmp_path):
    from videoldm.training.recipes import data_override

    recipe = {"stage": "video", "data": {"kind": "digits", "buckets": BUCKETS, "fps": 8}}
    assert data_override(recipe, str(mixed_folder)) == {"kind": "folder", "path": str(mixed_folder), "fps": 8,
                                                        "buckets": BUCKETS}
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "cache.json").write_text("{}")
    assert data_override(recipe, str(tmp_path / "cache")) == {"kind": "latents", "path": str(tmp_path / "cache")}
