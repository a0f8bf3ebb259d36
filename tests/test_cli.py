"""The command line: inflate and generate on tiny models; bad input is one line and exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import tiny_image_unet, tiny_scheduler, tiny_vae
from diffusers import DiffusionPipeline

from videoldm import LabelEncoder, VideoUNet
from videoldm.data.io import read_video


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "videoldm.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def image_pipeline_dir(tmp_path_factory):
    """A diffusers image pipeline directory (UNet, VAE, scheduler, label encoder)."""
    from videoldm.pipelines import VideoLDMPipeline

    directory = tmp_path_factory.mktemp("image_model")
    torch.manual_seed(0)
    label_encoder = LabelEncoder(num_classes=10, max_labels=2, embedding_dim=16)
    # A VideoLDMPipeline whose UNet is the plain image UNet is a valid diffusers image pipeline dir.
    pipe = VideoLDMPipeline(unet=tiny_image_unet(), vae=tiny_vae(), scheduler=tiny_scheduler(), label_encoder=label_encoder)
    pipe.save_pretrained(directory)
    return directory


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip().startswith("videoldm ")


def test_inflate_then_generate_mp4(image_pipeline_dir, tmp_path):
    result = run_cli("inflate", "--image-model", str(image_pipeline_dir), "--out", str(tmp_path / "video_model"))
    assert result.returncode == 0, result.stderr
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "video_model")
    assert isinstance(pipe.unet, VideoUNet)
    out = tmp_path / "demo.mp4"
    args = ["generate", "--model", str(tmp_path / "video_model"), "--out", str(out), "--frames", "5",
            "--steps", "2", "--seed", "3", "--guidance", "2", "--label", "7", "--fps", "6"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    clip = read_video(out)
    assert clip.frames.shape == (5, 3, 16, 16) and clip.fps == pytest.approx(6)
    out_gif = tmp_path / "demo.gif"
    assert run_cli(*[a if a != str(out) else str(out_gif) for a in args]).returncode == 0
    assert read_video(out_gif).frames.shape[0] == 5


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "--frames", "0"], "--frames"),
        (["generate", "--model", "/no/such/dir"], "/no/such/dir"),
        (["generate", "--out", "x.avi"], ".avi"),
        (["inflate", "--image-model", "/no/such/dir", "--out", "/tmp/x"], "/no/such/dir"),
        (["no-such-command"], "no-such-command"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, monkeypatch, capsys):
    from videoldm.cli import main

    monkeypatch.setattr(sys, "argv", ["videoldm", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in stderr


def test_load_pipeline_leaves_out_the_stages_a_command_will_not_run(monkeypatch, tmp_path):
    from videoldm import cli

    info = cli.inspect_model(None)
    light = cli.load_pipeline(info, interpolation=False, upsampling=False)
    assert light.interpolator is None and light.upsampler is None and light.low_res_scheduler is None
    assert light.unet is not None and light.vae is not None
    with pytest.raises(ValueError, match="no video upsampler"):
        light.check_cascade_options(1, 4)
    full = cli.load_pipeline(info)
    assert full.interpolator is not None and full.upsampler is not None

    asked = []
    monkeypatch.setattr(cli, "write_generation", lambda *args, **kwargs: None)
    monkeypatch.setattr(cli, "load_pipeline", lambda info, **stages: asked.append(stages) or full)
    for options in (["--fps-multiplier", "4"], ["--upscale", "4"], []):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["generate", "--out", str(tmp_path / "v.mp4"), *options])
        assert exit_info.value.code in (0, None)
    assert asked == [dict(interpolation=True, upsampling=False), dict(interpolation=False, upsampling=True),
                     dict(interpolation=False, upsampling=False)]
