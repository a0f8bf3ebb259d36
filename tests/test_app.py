"""The web UI's request handling without a browser: the server's limits, the command line it shows
(which must make the very same video), progress, and `videoldm serve`'s own errors and clean exit."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from videoldm import cli
from videoldm.app import EMBEDDED_MODEL_NAME, Form, ServerLimits, VideoService, parse_labels
from videoldm.generation import GenerateOptions, UserError, inspect_model
from videoldm.data.io import read_video
from videoldm.pipelines import VideoLDMPipeline

LIMITS = ServerLimits(max_frames=32, max_steps=10)
QUICK = dict(frames=4, steps=2, seed=3)


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> VideoService:
    return VideoService({EMBEDDED_MODEL_NAME: inspect_model(None)}, LIMITS, tmp_path_factory.mktemp("videos"))


@pytest.mark.parametrize("changes, message", [
    (dict(frames=33), "--frames 33: this server makes at most 32"),
    (dict(frames=10**9), "--frames 1000000000"),
    (dict(frames=0), "--frames 0: expected 1..100000"),
    (dict(frames=2.5), "--frames 2.5: expected a whole number"),
    (dict(frames=None), "--frames None: expected a whole number"),
    (dict(steps=11), "--steps 11: this server takes at most 10"),
    (dict(steps=-3), "--steps -3: expected 1..1000"),
    (dict(seed=-2), "--seed -2"),
    (dict(seed=float("nan")), "--seed nan"),
    (dict(guidance=float("inf")), "--guidance inf: not a finite number"),
    (dict(guidance=None), "--guidance: expected a number"),
    (dict(fps=0), "--fps 0.0: expected 0.1..1000.0"),
    (dict(model="/etc"), "model: not one this server offers"),
    (dict(model=str(Path(cli.__file__).parent / "weights" / "digits")), "model: not one this server offers"),
    (dict(labels="three"), "--label 'three'"),
    (dict(labels="12"), "--label 12: expected a class in 0..9"),
    (dict(labels="1 2 3"), "--label given 3 times"),
    (dict(prompt="a red car"), "--prompt: model"),
    (dict(init_image="/no/such/image.png"), "--init-image"),
    (dict(fps_multiplier=3), "--fps-multiplier 3: expected 1 or one of 4, 16"),
    (dict(fps_multiplier=2.5), "--fps-multiplier 2.5: expected a whole number"),
    (dict(upscale=4, upscale_steps=11), "--upscale-steps 11: this server takes at most 10"),
    (dict(upscale=4, upscale_steps=None), "--upscale-steps None: expected a whole number"),
    (dict(upscale=4, upscale_noise_level=351), "--upscale-noise-level 351"),
    (dict(upscale=2), "--upscale 2: expected 1 or 4"),
])
def test_bad_form_is_refused_before_sampling(service, changes, message, monkeypatch):
    monkeypatch.setattr(VideoService, "_pipeline", lambda *_: pytest.fail("a bad form must not load a model"))
    with pytest.raises(UserError) as error:
        service.generate(replace(Form(**QUICK), **changes))
    assert message in str(error.value)


def test_seed_minus_one_draws_a_seed(service):
    seeds = {service.options(Form(**{**QUICK, "seed": -1})).seed for _ in range(4)}
    assert len(seeds) > 1 and all(0 <= seed <= cli.MAX_SEED for seed in seeds)


def test_parse_labels():
    assert parse_labels("") == () and parse_labels(" 3 ") == (3,) and parse_labels("3, 8") == (3, 8)
    assert parse_labels("-1") == (-1,)


def test_every_option_round_trips_through_the_command_line(tmp_path, monkeypatch):
    """The command shown parses back, by the CLI itself, into the same options: every field set away from
    its default (the CLI's defaults are GenerateOptions' own, so fields left out are equal too)."""
    options = GenerateOptions(
        model=tmp_path / "my model", frames=40, steps=7, seed=2**62 + 1, guidance=1.2345678901234567,
        prompt="a 'quoted' car", labels=(3, 8), fps=12.5, fps_multiplier=4, upscale=4, keep_stages=tmp_path / "stages",
        upscale_steps=3, upscale_noise_level=7,
        decoder="image", image_only=True, context_guidance=0.3,
        context_frames=3, window_candidates=3, window=12, init_image=tmp_path / "start image.png", continue_video=tmp_path / "c.mp4",
        noise_correlation=0.85)
    assert all(getattr(options, name) != getattr(GenerateOptions(), name) for name in cli.GENERATE_OPTION_NAMES)
    parsed = []

    def capture(given, out):
        parsed.append((given, out))
        raise UserError("captured")

    monkeypatch.setattr(cli, "plan_generation", capture)
    command = shlex.split(options.command_line(Path("out dir/v.mp4")))
    assert command[:2] == ["videoldm", "generate"]
    with pytest.raises(SystemExit):
        cli.main(command[1:])
    assert parsed == [(options, Path("out dir/v.mp4"))]


def test_no_steps_is_the_models_own_number_and_the_command_shown_names_it(service, tmp_path):
    """The embedded model's directory names 10 steps (measured equal to 25 in quality_digits.py); a
    cleared Steps field and a command without --steps both take them, and the command shown says so."""
    assert inspect_model(None).default_steps == 10
    assert service.options(replace(Form(**QUICK), steps=None)).steps == 10
    plan = cli.plan_generation(GenerateOptions(frames=4), tmp_path / "v.mp4")
    assert plan.options.steps == 10 and plan.pipeline_arguments()["num_inference_steps"] == 10
    assert "--steps 10" in plan.options.command_line(Path("v.mp4"))
    assert cli.plan_generation(GenerateOptions(frames=4, steps=3), tmp_path / "v.mp4").options.steps == 3


class GenerateFramesRecorder:
    """Records the keyword arguments of every VideoLDMPipeline.generate_frames call."""

    def __init__(self, monkeypatch):
        self.calls: list[dict] = []
        original = VideoLDMPipeline.generate_frames

        def recording(pipe, *args, **kwargs):
            assert not args, "generate_frames is called with keywords only"
            self.calls.append(kwargs)
            return original(pipe, **kwargs)

        monkeypatch.setattr(VideoLDMPipeline, "generate_frames", recording)


def _same_argument(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, torch.Generator):
        return isinstance(b, torch.Generator) and torch.equal(a.get_state(), b.get_state())
    return a == b


@pytest.mark.parametrize("with_init_image", [False, True])
def test_the_command_shown_makes_the_same_video(service, with_init_image, tmp_path, monkeypatch):
    form = Form(**QUICK)
    if with_init_image:
        pixels = np.zeros((32, 32), np.uint8)
        pixels[8:24, 12:20] = 255
        Image.fromarray(pixels).save(tmp_path / "start.png")
        form = Form(**QUICK, init_image=str(tmp_path / "start.png"))
    recorder = GenerateFramesRecorder(monkeypatch)
    result = service.generate(form)
    assert result.seed == 3 and "--seed 3" in result.command
    assert ("--init-image start.png" in result.command) == with_init_image

    monkeypatch.chdir(tmp_path)  # where the user runs the command: their init image is here
    command = shlex.split(result.command)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(command[1:])
    assert exit_info.value.code == 0

    page_call, cli_call = recorder.calls
    # the only difference: each passes its own progress observer, which returns None (changes nothing)
    assert page_call.pop("callback_on_step_end") is not None and cli_call.pop("callback_on_step_end") is not None
    assert page_call.keys() == cli_call.keys()
    assert all(_same_argument(page_call[key], cli_call[key]) for key in page_call), \
        [key for key in page_call if not _same_argument(page_call[key], cli_call[key])]
    page_video, cli_video = read_video(result.video), read_video(tmp_path / command[command.index("--out") + 1])
    assert page_video.frames.shape == (4, 3, 32, 32)
    assert torch.equal(page_video.frames, cli_video.frames)


def test_progress_follows_every_window_to_the_end(service):
    reports = []
    service.generate(Form(frames=20, steps=2, seed=1), lambda fraction, text: reports.append((fraction, text)))
    fractions = [fraction for fraction, _ in reports]
    assert len(reports) == 4 and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert reports[-1][1] == "window 2/2, step 2/2"


def test_frame_rate_multiplier_interpolates_and_progress_counts_its_windows(service):
    """The embedded pipeline ships an interpolation model: 3 key frames x4 -> 9 frames at 4x the rate."""
    reports = []
    result = service.generate(Form(frames=3, steps=1, seed=1, fps=2, fps_multiplier=4),
                              lambda fraction, text: reports.append((fraction, text)))
    clip = read_video(result.video)
    assert clip.frames.shape[0] == 9 and clip.fps == 8 and "--fps-multiplier 4" in result.command
    assert len(reports) == 2 and reports[-1] == (1.0, "window 2/2, step 1/1")  # key frames, then one interpolation window


def test_upscale_runs_the_video_upsampler_and_progress_counts_its_steps(service):
    reports = []
    result = service.generate(Form(frames=2, steps=1, seed=1, upscale=4), lambda fraction, text: reports.append((fraction, text)))
    assert read_video(result.video).frames.shape == (2, 3, 128, 128) and "--upscale 4" in result.command
    assert reports[-1][0] == 1.0 and reports[-1][1].startswith("upsampling, step")


def test_upscale_steps_and_noise_level_reach_the_upsampler_only_with_upscale_4(service):
    quick = Form(frames=2, steps=1, seed=1)
    options = service.options(replace(quick, upscale=4, upscale_steps=3, upscale_noise_level=40))
    assert (options.upscale_steps, options.upscale_noise_level) == (3, 40)
    assert "--upscale-steps 3 --upscale-noise-level 40" in options.command_line(Path("v.mp4"))
    # left on the page while Upscale is 1: not passed on (the command line would refuse them)
    options = service.options(replace(quick, upscale=1, upscale_steps=3, upscale_noise_level=40))
    assert (options.upscale_steps, options.upscale_noise_level) == (GenerateOptions.upscale_steps,
                                                                    GenerateOptions.upscale_noise_level)


def test_only_the_latest_video_is_kept(service):
    first = service.generate(Form(frames=1, steps=1)).video
    second = service.generate(Form(frames=1, steps=1)).video
    assert second.is_file() and not first.exists()


# ------------------------------------------------------------------------------ videoldm serve
def _serve_error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", *args])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr
    return lines[0]


def test_serve_without_the_ui_extra_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # what find_spec reports for a missing package
    assert "pip install 'videoldm[ui]'" in _serve_error([], capsys)


def test_serve_checks_its_arguments(tmp_path, capsys):
    pytest.importorskip("gradio", reason="the ui extra is not installed")
    assert "/no/such/dir" in _serve_error(["--model", "/no/such/dir"], capsys)
    assert "--max-frames" in _serve_error(["--max-frames", "0"], capsys)
    assert "--port" in _serve_error(["--port", "70000"], capsys)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert f"--port {port}: cannot listen" in _serve_error(["--port", str(port)], capsys)


def free_port() -> int:
    """A port nothing listens on now (the OS's choice)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(*args: str) -> tuple[subprocess.Popen, str, Path, list[str]]:
    """Start ``videoldm serve ARGS`` on a free port; returns the process, its URL, its temporary
    directory and its output lines so far (a thread keeps reading them)."""
    import threading

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "videoldm", "serve", "--port", str(port), *args], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if "Running on" in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(180) or process.poll() is not None:
        process.kill()
        raise AssertionError("videoldm serve did not start:\n" + "".join(lines))
    workdir = Path(re.search(r"temporary files: (\S+)", "".join(lines)).group(1))
    url = re.search(r"(http://\S+)", "".join(line for line in lines if "Running on" in line)).group(1).rstrip("/")
    return process, url, workdir, lines


def test_serve_listens_on_localhost_and_removes_its_files_on_exit():
    pytest.importorskip("gradio", reason="the ui extra is not installed")
    process, url, workdir, lines = start_server()
    try:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200 and b"<html" in response.read(4096).lower()
        assert workdir.is_dir()
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C; the browser tests stop their server with SIGTERM
        code = process.wait(60)
    assert code == cli.INTERRUPTED_EXIT_CODE, "".join(lines)
    assert not workdir.exists()
