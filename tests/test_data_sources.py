"""Users' videos as training data: a folder of real camera videos with bad files among them, the
same clips as a CSV list and as webdataset shards; deterministic draws, skipping and counting."""

from __future__ import annotations

import csv
import subprocess
import sys
import textwrap
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import BAD_VIDEOS, GOOD_VIDEOS

from videoldm.data.build import DataError, build_source, infer_kind
from videoldm.data.sources import (
    ClipFormat,
    DataWarning,
    FramesAsImages,
    ImageFolder,
    VideoCsv,
    VideoFiles,
    VideoFolder,
    WebDatasetVideos,
    draw_generator,
    skipped_summary,
)

CLIP = ClipFormat(num_frames=4, fps=8, height=16, width=16, channels=3)
EXPECTED_SKIPS = Counter(BAD_VIDEOS.values())


def _skipped_files(caught: list[warnings.WarningMessage]) -> set[str]:
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    return {Path(message.split(": ")[0].removeprefix("skipping ")).name.split(":")[-1] for message in messages}


def _build(make):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = make()
    return source, _skipped_files(caught)


@pytest.fixture(scope="module")
def captions_csv(video_folder: Path) -> Path:
    """Every file of the folder (good and bad) listed with a caption, paths relative to the CSV."""
    table = video_folder.parent / f"{video_folder.name}.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "caption"])
        for name in (*GOOD_VIDEOS, *BAD_VIDEOS):
            writer.writerow([f"{video_folder.name}/{name}", f"a video called {Path(name).stem}"])
    return table


@pytest.fixture(scope="module")
def shards(video_folder: Path, tmp_path_factory) -> Path:
    """The folder's video files (good and bad) in two webdataset shards, each with a caption."""
    import webdataset

    files = [name for name in (*GOOD_VIDEOS, *BAD_VIDEOS) if name.endswith(".mp4")]
    folder = tmp_path_factory.mktemp("shards")
    for shard, names in enumerate((files[:3], files[3:])):
        with webdataset.TarWriter(str(folder / f"clips-{shard:03d}.tar")) as writer:
            for name in names:
                writer.write({"__key__": Path(name).stem, "mp4": (video_folder / name).read_bytes(),
                              "txt": f"a video called {Path(name).stem}"})
    return folder


def test_folder_skips_exactly_the_bad_files_and_counts_them(video_folder):
    source, skipped = _build(lambda: VideoFolder(video_folder, CLIP))
    assert skipped == set(BAD_VIDEOS)
    assert source.skipped == EXPECTED_SKIPS
    assert sorted(video.path.name for video in source.videos) == sorted(Path(name).name for name in GOOD_VIDEOS)
    assert skipped_summary(source) == "skipped 4 bad file(s): 1 empty file, 1 too short, 2 unreadable"
    sample = source.sample(0, torch.Generator().manual_seed(0))
    assert set(sample) == {"video"} and sample["video"].shape == (4, 3, 16, 16)
    assert sample["video"].dtype == torch.float32 and -1 <= sample["video"].min() < sample["video"].max() <= 1


def test_draws_are_deterministic_and_follow_the_generator(video_folder):
    source, _ = _build(lambda: VideoFolder(video_folder, CLIP))
    first = source.sample(0, draw_generator(3, 7))["video"]
    assert torch.equal(first, source.sample(0, draw_generator(3, 7))["video"])
    assert torch.equal(source[1]["video"], source[1]["video"])
    starts = {source.sample(0, draw_generator(3, draw))["video"].sum().item() for draw in range(6)}
    assert len(starts) > 1, "random starts and crops differ between draws"


def test_clip_rate_size_and_grey(video_folder):
    from videoldm.data.io import read_video

    grey, _ = _build(lambda: VideoFolder(video_folder, ClipFormat(num_frames=3, fps=5, height=8, width=12, channels=1)))
    index = [video.path.name for video in grey.videos].index("bikes.mp4")
    # bikes.mp4 is 250 frames at 25 fps: at 5 fps it has 50 frames, each 5 source frames apart.
    assert grey.videos[index].frames == 50
    clip = grey.sample(index, torch.Generator().manual_seed(0))["video"]
    assert clip.shape == (3, 1, 8, 12)
    full = read_video(grey.videos[index].path, fps=5).frames
    assert full.shape[0] == 50


def test_csv_lists_the_same_clips_with_captions(video_folder, captions_csv):
    folder, _ = _build(lambda: VideoFolder(video_folder, CLIP))
    table, skipped = _build(lambda: VideoCsv(captions_csv, CLIP))
    assert skipped == set(BAD_VIDEOS) and table.skipped == EXPECTED_SKIPS
    by_name = {video.path.name: i for i, video in enumerate(folder.videos)}
    for index, video in enumerate(table.videos):
        sample = table.sample(index, draw_generator(0, index))
        assert sample["caption"] == f"a video called {video.path.stem}"
        same = folder.sample(by_name[video.path.name], draw_generator(0, index))["video"]
        assert torch.equal(sample["video"], same)


def test_csv_column_options_and_errors(video_folder, tmp_path):
    webvid = tmp_path / "webvid.csv"
    webvid.write_text("videoid,name,page_dir\nbikes,cyclists on a road,.\ncarphone_pristine,a man in a car,.\n")
    source = VideoCsv(webvid, CLIP, caption_column="name", path_template="{page_dir}/{videoid}.mp4", video_root=str(video_folder))
    assert [source[i]["caption"] for i in range(2)] == ["cyclists on a road", "a man in a car"]
    with pytest.raises(ValueError, match="no column 'caption'"):
        VideoCsv(webvid, CLIP, path_column="videoid")
    with pytest.raises(ValueError, match="names column 'missing'"):
        VideoCsv(webvid, CLIP, path_template="{missing}.mp4")


def test_webdataset_shards_stream_the_same_clips_skipping_the_bad_ones(video_folder, shards):
    source, skipped = _build(lambda: WebDatasetVideos(str(shards), CLIP, shuffle_buffer=2))
    stream = source.stream(seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = [next(stream) for _ in range(6)]
    skipped |= _skipped_files(caught)
    assert skipped == set(BAD_VIDEOS)
    assert source.skipped == EXPECTED_SKIPS
    assert [n for n, _ in first] == list(range(6))
    assert {sample["caption"] for _, sample in first} == {"a video called bikes", "a video called carphone_pristine"}
    assert all(sample["video"].shape == (4, 3, 16, 16) for _, sample in first)


def test_webdataset_stream_is_the_same_however_it_is_split_or_resumed(shards):
    source, _ = _build(lambda: WebDatasetVideos(str(shards), CLIP, shuffle_buffer=2))

    def take(count, **kwargs):
        stream = source.stream(seed=1, **kwargs)
        return {n: sample["video"] for n, sample in (next(stream) for _ in range(count))}

    whole = take(8)
    halves = {**take(4, keep=lambda n: n % 2 == 0), **take(4, keep=lambda n: n % 2 == 1)}
    resumed = take(3, start=5)
    assert sorted(halves) == list(range(8)) and sorted(resumed) == [5, 6, 7]
    assert all(torch.equal(whole[n], halves[n]) for n in range(8))
    assert all(torch.equal(whole[n], resumed[n]) for n in (5, 6, 7))
    other_seed = source.stream(seed=2)
    assert any(not torch.equal(whole[n], next(other_seed)[1]["video"]) for n in range(8))


def test_a_source_without_a_usable_clip_is_one_error_naming_it(video_folder, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in BAD_VIDEOS:
        (bad / name).write_bytes((video_folder / name).read_bytes())
    with pytest.raises(ValueError, match=rf"{bad}: no usable video of at least 4 frames among 4 file\(s\)"):
        _build(lambda: VideoFolder(bad, CLIP))
    long_clips = ClipFormat(num_frames=1000, fps=8, height=16, width=16)
    with pytest.raises(ValueError, match="no usable video of at least 1000 frames"):
        _build(lambda: VideoFolder(video_folder, long_clips))


def test_data_sections_are_checked(video_folder, captions_csv, shards):
    frames = {"height": 16, "width": 16, "channels": 3}
    with pytest.raises(DataError, match=r"unknown entries \['canvas'\] for kind 'digits'"):
        build_source({"canvas": 32}, **frames)
    with pytest.raises(DataError, match=r"unknown entries \['caption_column'\]"):
        build_source({"kind": "folder", "path": str(video_folder), "caption_column": "name"}, **frames)
    with pytest.raises(DataError, match="needs a path"):
        build_source({"kind": "folder", "num_frames": 4}, **frames)
    with pytest.raises(DataError, match="unknown kind 'youtube'"):
        build_source({"kind": "youtube"}, **frames)
    assert infer_kind(video_folder) == "folder"
    assert infer_kind(captions_csv) == "csv"
    assert infer_kind(shards) == "webdataset" and infer_kind(str(shards / "clips-{000..001}.tar")) == "webdataset"
    with pytest.raises(ValueError, match="does not exist"):
        infer_kind(video_folder / "nothing")


def test_image_sources_give_frames_of_videos_or_images(video_folder, tmp_path):
    from PIL import Image

    frames, _ = _build(lambda: build_source({"kind": "folder", "path": str(video_folder)}, height=8, width=8, channels=1,
                                            images=True))
    assert isinstance(frames, FramesAsImages) and frames.skipped["unreadable"] == 2
    assert Counter(frames.skipped_files.values()) == frames.skipped  # what the trainer's summary counts
    assert frames.sample(0, torch.Generator().manual_seed(0))["image"].shape == (1, 8, 8)
    Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / "red.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    images, skipped = _build(lambda: ImageFolder(tmp_path, ClipFormat(num_frames=1, height=8, width=8)))
    assert skipped == {"broken.png"} and len(images) == 1
    red = images[0]["image"]
    assert red.shape == (3, 8, 8) and torch.allclose(red[0], torch.ones(8, 8)) and torch.allclose(red[1], -torch.ones(8, 8))


def test_killed_parent_leaves_no_decoding_workers(video_folder, tmp_path):
    (tmp_path / "carphone.mp4").write_bytes((video_folder / "carphone_pristine.mp4").read_bytes())
    script = textwrap.dedent(f"""
        import os, sys, time, torch
        from torch.utils.data import DataLoader
        from videoldm.data.sources import ClipFormat, VideoFolder, worker_init
        source = VideoFolder({str(tmp_path)!r}, ClipFormat(num_frames=4, fps=8, height=16, width=16))
        loader = DataLoader(source, batch_size=1, num_workers=2, worker_init_fn=worker_init, sampler=torch.utils.data.RandomSampler(source, replacement=True, num_samples=10**6))
        for i, batch in enumerate(loader):
            if i == 2:
                children = open(f"/proc/{{os.getpid()}}/task/{{os.getpid()}}/children").read().split()
                print(" ".join(children), flush=True)
                time.sleep(60)  # the workers fill their prefetch queues and wait
    """)
    parent = subprocess.Popen([sys.executable, "-W", "ignore", "-c", script], stdout=subprocess.PIPE, text=True)
    workers = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(workers) == 2 and all(_running(pid) for pid in workers)
    time.sleep(1.0)
    parent.kill()
    parent.wait()
    parent.stdout.close()
    # Idle workers notice a dead parent by themselves only at torch's next status check (up to 5 s).
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and any(_running(pid) for pid in workers):
        time.sleep(0.02)
    assert not any(_running(pid) for pid in workers)


def _running(pid: int) -> bool:
    """Alive and not a zombie (a dead child waiting for the reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("kind", ["images", "folder"])
def test_image_stages_train_on_images_or_frames_of_videos(kind, video_folder, tmp_path):
    from PIL import Image
    from test_training import tiny_recipe

    from videoldm.training.stages import build_trainer

    if kind == "images":
        images = tmp_path / "images"
        images.mkdir()
        for i in range(3):
            Image.new("RGB", (40, 30), (80 * i, 40, 200)).save(images / f"{i}.png")
    recipe = tiny_recipe("digits_autoencoder", tmp_path / "runs", steps=1)
    recipe["data"] = {"kind": kind, "path": str(images if kind == "images" else video_folder)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        trainer = build_trainer(recipe)
    assert not trainer.stage.frames_only
    assert next(iter(trainer.batches(0, 1)))["image"].shape == (4, 1, 32, 32)  # the autoencoder's grey 32x32 frames
    assert trainer.train().step == 1
    if kind == "folder":
        # the end-of-run summary sees the image source's skips (a 3-frame video is long enough for frames)
        assert trainer.skipped == trainer.source.skipped == Counter({"unreadable": 2, "empty file": 1})


def test_a_file_truncated_after_its_header_is_skipped_when_decoded(video_folder, tmp_path):
    """A fast-start MP4 cut about half way: its header (read when the source is built) promises 60
    frames, the data holds fewer; draws that reach past them skip it and fall to another video."""
    import av

    from videoldm.data.io import read_video, write_video

    frames = read_video(video_folder / "carphone_pristine.mp4", num_frames=60).frames
    whole = write_video(frames, tmp_path / "whole.mp4", fps=30)
    # Cut after whole packets, where every frame shown before the cut is in it: x264's layout depends
    # on its thread count (the machine's cores), and a cut inside a packet is a decoding error, which
    # the source cannot tell from corruption.
    with av.open(str(whole)) as container:
        packets = [(packet.pos + packet.size, packet.pts) for packet in container.demux(video=0) if packet.size]
    cuts = [end for k, (end, _) in enumerate(packets[:-1])
            if max(pts for _, pts in packets[: k + 1]) < min(pts for _, pts in packets[k + 1 :])]
    (tmp_path / "cut.mp4").write_bytes(whole.read_bytes()[: min(cuts, key=lambda end: abs(end - packets[-1][0] / 2))])
    source, skipped = _build(lambda: VideoFiles([(tmp_path / "cut.mp4", None), (video_folder / "bikes.mp4", None)], CLIP, "two"))
    assert not skipped and len(source) == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clips = [source.sample(0, draw_generator(0, draw))["video"] for draw in range(8)]
    assert _skipped_files(caught) == {"cut.mp4"} and source.skipped == Counter({"truncated": 1})
    assert all(clip.shape == (4, 3, 16, 16) for clip in clips)
    assert all(torch.equal(clip, source.sample(0, draw_generator(0, draw))["video"]) for draw, clip in enumerate(clips))
