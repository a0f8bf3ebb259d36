"""The command line's error contract, case by case: hostile input is one line on stderr naming the
culprit, exit status 2, no traceback, and no file written, changed or left behind.

Each case runs ``videoldm`` in-process in a sandbox folder holding every file it may touch; the
sandbox is compared before and after. Every case must fail before a network is loaded, so the
whole table runs in seconds.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from conftest import tiny_image_unet, tiny_scheduler, tiny_vae

from videoldm import LabelEncoder, VideoUNet
from videoldm.pipelines import CascadePipeline, VideoLDMPipeline


def _save_pipeline(directory: Path, unet: torch.nn.Module) -> Path:
    label_encoder = LabelEncoder(num_classes=10, max_labels=2, embedding_dim=16)
    VideoLDMPipeline(unet=unet, vae=tiny_vae(), scheduler=tiny_scheduler(), label_encoder=label_encoder).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Pipeline directories: a label-conditional video model, an image model, and broken copies."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    video = _save_pipeline(root / "video", VideoUNet.from_image_unet(tiny_image_unet()))
    image = _save_pipeline(root / "image", tiny_image_unet())
    truncated = root / "truncated"
    shutil.copytree(video, truncated)
    weights = truncated / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    bad_index = root / "bad_index"
    shutil.copytree(video, bad_index)
    (bad_index / "model_index.json").write_text('{"unet": ["videoldm.models.unet", "VideoUNet"')
    no_vae = root / "no_vae"
    shutil.copytree(video, no_vae)
    shutil.rmtree(no_vae / "vae")
    bad_steps = root / "bad_steps"
    shutil.copytree(video, bad_steps)
    index = json.loads((bad_steps / "model_index.json").read_text())
    (bad_steps / "model_index.json").write_text(json.dumps(index | {"default_num_inference_steps": "many"}))
    not_a_model = root / "not_a_model"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("hello")
    prediction_unet = VideoUNet.from_image_unet(tiny_image_unet()).with_context_conditioning(8)
    prediction = _save_pipeline(root / "prediction", prediction_unet)
    interpolation = root / "interpolation"
    pipe = CascadePipeline.from_pretrained(prediction)
    pipe.register_modules(interpolator=prediction_unet.with_context_conditioning(8, frame_rate_regimes=2).temporal_weights())
    pipe.save_pretrained(interpolation)
    return {"video": video, "image": image, "truncated": truncated, "bad_index": bad_index, "no_vae": no_vae, "bad_steps": bad_steps,
            "not_a_model": not_a_model, "prediction": prediction, "interpolation": interpolation}


def _sandbox(root: Path) -> None:
    """Files the cases aim at: an existing video, a non-empty folder, a plain file, recipes, a tiny clip."""
    from videoldm.data.io import write_video

    (root / "existing.mp4").write_bytes(b"an earlier video")
    (root / "frames").mkdir()
    (root / "frames" / "frame_00000.png").write_bytes(b"an earlier frame")
    (root / "a_file").write_text("not a directory")
    (root / "dir.mp4").mkdir()
    (root / "results").mkdir()
    write_video(torch.zeros(4, 3, 16, 16), root / "clip.mp4", fps=8)
    Image.new("RGB", (8, 8)).save(root / "small.png")
    recipes = {
        "bad_yaml.yaml": "stage: video\noutput_dir: [unclosed\n",
        "list.yaml": "- stage\n- video\n",
        "unknown_stage.yaml": "stage: teleport\noutput_dir: runs/x\n",
        "bad_type.yaml": "stage: autoencoder\noutput_dir: runs/x\ndata: {}\nmodel: {}\ntrain: {steps: many}\n",
        "unknown_key.yaml": "stage: autoencoder\noutput_dir: runs/x\ndata: {}\nmodel: {}\nimage_batch_fraction: 0.5\n",
        "under_file.yaml": "stage: autoencoder\noutput_dir: a_file/run\ndata: {}\nmodel: {}\n",
        "missing_arg.yaml": "stage: video\noutput_dir: runs/x\ndata: {}\n",
        "bad_settings.yaml": "stage: autoencoder\noutput_dir: runs/x\ndata: {}\nmodel: {}\ntrain: {mixed_precision: fp8}\n",
        "accumulate.yaml": "stage: autoencoder\noutput_dir: runs/x\ndata: {}\nmodel: {}\n"
                           "train: {batch_size: 4, gradient_accumulation_steps: 2}\n",
    }
    for name, text in recipes.items():
        (root / name).write_text(text)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


# (arguments, text the one error line must contain). "{video}" etc. name the model fixtures.
HOSTILE = [
    # generate: options
    (["generate", "--frames", "0"], "--frames"),
    (["generate", "--frames", "1000000"], "--frames"),
    (["generate", "--model", "{video}", "--frames", "2000"], "--frames 2000"),
    (["generate", "--steps", "0"], "--steps"),
    (["generate", "--steps", "5000"], "--steps"),
    (["generate", "--seed", "-1"], "--seed"),
    (["generate", "--seed", str(2**64)], "--seed"),
    (["generate", "--guidance", "nan"], "--guidance"),
    (["generate", "--guidance", "inf"], "--guidance"),
    (["generate", "--fps", "0"], "--fps"),
    (["generate", "--noise-correlation", "1"], "--noise-correlation"),
    (["generate", "--noise-correlation", "nan"], "--noise-correlation"),
    (["generate", "--fps", "nan"], "--fps"),
    (["generate", "--decoder", "foo"], "--decoder"),
    (["generate", "--label", "x"], "--label"),
    # generate: output paths
    (["generate", "--out", "x.avi"], ".avi"),
    (["generate", "--out", "dir.mp4"], "dir.mp4"),
    (["generate", "--out", "a_file/out.mp4"], "a_file"),
    (["generate", "--out", "frames"], "frames"),
    (["generate", "--out", "a_file"], "a_file"),
    # generate: models
    (["generate", "--model", "/no/such/dir"], "/no/such/dir"),
    (["generate", "--model", "{not_a_model}"], "model_index.json"),
    (["generate", "--model", "{truncated}"], "diffusion_pytorch_model.safetensors"),
    (["generate", "--model", "{bad_index}"], "model_index.json"),
    (["generate", "--model", "{no_vae}"], "vae"),
    (["generate", "--model", "{bad_steps}"], "default_num_inference_steps must be a whole number >= 1"),
    (["generate", "--model", "{image}"], "inflate"),
    # generate: conditioning the model cannot use
    (["generate", "--model", "{video}", "--prompt", "a red car"], "--prompt"),
    (["generate", "--model", "{video}", "--label", "12"], "--label 12"),
    (["generate", "--model", "{video}", "--label", "1", "--label", "2", "--label", "3"], "--label"),
    (["generate", "--label", "-2"], "--label -2"),
    (["generate", "--label", "3", "--label", "-1"], "--label -1"),
    # generate: long videos (prediction models only)
    (["generate", "--model", "{video}", "--init-image", "small.png"], "--init-image"),
    (["generate", "--model", "{video}", "--continue", "clip.mp4"], "--continue"),
    (["generate", "--model", "{prediction}", "--init-image", "missing.png"], "missing.png"),
    (["generate", "--model", "{prediction}", "--init-image", "small.png"], "resize"),
    (["generate", "--model", "{prediction}", "--init-image", "a_file"], "a_file"),
    (["generate", "--model", "{prediction}", "--continue", "a_file"], "a_file"),
    (["generate", "--model", "{prediction}", "--init-image", "small.png", "--continue", "clip.mp4"], "--init-image"),
    (["generate", "--model", "{prediction}", "--context-frames", "4", "--window", "4"], "--context-frames"),
    (["generate", "--model", "{prediction}", "--window", "1"], "--window"),
    (["generate", "--model", "{prediction}", "--context-guidance", "nan"], "--context-guidance"),
    (["generate", "--model", "{prediction}", "--fps-multiplier", "4"], "no interpolation model"),
    (["generate", "--model", "{interpolation}", "--fps-multiplier", "3"], "--fps-multiplier 3"),
    (["generate", "--model", "{interpolation}", "--fps-multiplier", "4", "--continue", "clip.mp4"], "--continue"),
    (["generate", "--model", "{interpolation}", "--fps-multiplier", "16", "--frames", "1"], "--frames >= 2"),
    (["generate", "--model", "{interpolation}", "--fps-multiplier", "16", "--fps", "100"], "fps"),
    # interpolate
    (["interpolate", "--video", "clip.mp4", "--model", "{video}"], "no interpolation model"),
    (["interpolate", "--video", "clip.mp4"], "--resize"),
    (["interpolate", "--video", "clip.mp4", "--model", "{prediction}"], "no interpolation model"),
    (["interpolate", "--video", "clip.mp4", "--model", "{interpolation}", "--factor", "8"], "--factor 8"),
    (["interpolate", "--video", "clip.mp4", "--model", "{interpolation}", "--factor", "16", "--regime", "1"], "--regime 1"),
    (["interpolate", "--video", "missing.mp4", "--model", "{interpolation}"], "missing.mp4"),
    (["interpolate", "--video", "small.png", "--model", "{interpolation}"], "--resize"),
    (["interpolate", "--video", "small.png", "--model", "{interpolation}", "--resize"], "at least 2"),
    (["interpolate", "--video", "clip.mp4", "--model", "{interpolation}", "--out", "x.avi"], ".avi"),
    (["interpolate", "--video", "clip.mp4", "--model", "{interpolation}", "--steps", "0"], "--steps"),
    (["interpolate", "--video", "clip.mp4", "--model", "{interpolation}", "--context-guidance", "inf"], "--context-guidance"),
    (["interpolate", "--video", "clip.mp4", "--model", "{interpolation}", "--label", "12"], "--label 12"),
    (["interpolate", "--video", "clip.mp4", "--model", "{interpolation}", "--prompt", "a car"], "--prompt"),
    (["interpolate", "--video", "clip.mp4", "--model", "{interpolation}", "--fps", "500", "--factor", "16"], "fps"),
    (["interpolate", "--model", "{interpolation}"], "--video"),
    # inflate
    (["inflate", "--image-model", "/no/such/dir", "--out", "new"], "/no/such/dir"),
    (["inflate", "--image-model", "{image}", "--out", "new", "--kernel", "2,1,1"], "--kernel"),
    (["inflate", "--image-model", "{image}", "--out", "new", "--kernel", "0,1,1"], "--kernel"),
    (["inflate", "--image-model", "{image}", "--out", "new", "--kernel", "3,3"], "--kernel"),
    (["inflate", "--image-model", "{image}", "--out", "new", "--kernel", "a,b,c"], "--kernel"),
    (["inflate", "--image-model", "{image}", "--out", "new", "--temporal-kinds", ""], "--temporal-kinds"),
    (["inflate", "--image-model", "{image}", "--out", "new", "--temporal-kinds", "conv,warp"], "--temporal-kinds"),
    (["inflate", "--image-model", "{image}", "--out", "frames"], "--out"),
    (["inflate", "--image-model", "{image}", "--out", "a_file/new"], "a_file"),
    (["inflate", "--image-model", "{video}", "--out", "new"], "already a video pipeline"),
    (["inflate", "--image-model", "{truncated}", "--out", "new"], "diffusion_pytorch_model.safetensors"),
    # train
    (["train", "missing.yaml"], "missing.yaml"),
    (["train", "bad_yaml.yaml"], "line"),
    (["train", "list.yaml"], "mapping"),
    (["train", "unknown_stage.yaml"], "teleport"),
    (["train", "bad_type.yaml"], "steps"),
    (["train", "unknown_key.yaml"], "image_batch_fraction"),
    (["train", "missing_arg.yaml"], "image_model"),
    (["train", "bad_settings.yaml"], "mixed_precision"),
    (["train", "under_file.yaml"], "a_file"),
    (["train", "bad_type.yaml", "--steps", "0"], "--steps"),
    (["train", "bad_type.yaml", "--max-minutes", "nan"], "--max-minutes"),
    (["train", "accumulate.yaml", "--batch-size", "3"], "--batch-size"),
    # evaluate
    (["evaluate", "--fake", "clip.mp4", "--real", "clip.mp4", "--num-frames", "8"], "--num-frames"),
    (["evaluate", "--fake", "clip.mp4", "--metrics", "fid", "--real", "clip.mp4", "--device", "foo"], "--device"),
    (["evaluate", "--fake", "clip.mp4", "--metrics", "fid", "--real", "clip.mp4", "--device", "cuda:7"], "--device"),
    (["evaluate", "--fake", "clip.mp4", "--metrics", "fvd,sharpness", "--real", "clip.mp4"], "sharpness"),
    (["evaluate", "--fake", "clip.mp4", "--metrics", "fid", "--real", "clip.mp4", "--json", "results"], "--json"),
    (["evaluate", "--fake", "clip.mp4", "--metrics", "fid", "--real", "/no/such/real"], "/no/such/real"),
    (["evaluate", "--fake", "/no/such/fake", "--metrics", "fid", "--real", "clip.mp4"], "/no/such/fake"),
    (["evaluate", "--fake", "a_file", "--metrics", "fid", "--real", "clip.mp4"], "a_file"),
    (["evaluate", "--fake", "clip.mp4", "--model", "{video}"], "--generate"),
    (["evaluate", "--fake", "gen", "--generate", "2", "--model", "{video}", "--label", "12", "--metrics", "fid",
      "--real", "clip.mp4"], "--label 12"),
    (["evaluate", "--fake", "gen", "--generate", "2", "--model", "{image}", "--metrics", "fid", "--real", "clip.mp4"],
     "inflate"),
    (["evaluate", "--fake", "gen", "--generate", "20", "--batch-size", "2", "--seed", str(2**63 - 5),
      "--metrics", "fid", "--real", "clip.mp4"], "--seed"),
    # anything
    (["no-such-command"], "no-such-command"),
]


@pytest.mark.parametrize("args, culprit", HOSTILE, ids=[" ".join(args)[:60] for args, _ in HOSTILE])
def test_hostile_input_is_one_line_exit_2_nothing_written(args, culprit, models, tmp_path, monkeypatch, capsys):
    from videoldm.cli import main

    _sandbox(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    argv = [arg.format(**{name: str(path) for name, path in models.items()}) for arg in args]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert exit_info.value.code == 2, captured.err
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert culprit in lines[0], lines[0]
    assert _snapshot(tmp_path) == before


def test_hostile_table_is_wide():
    commands = {args[0] for args, _ in HOSTILE}
    assert len(HOSTILE) >= 30 and {"generate", "interpolate", "inflate", "train", "evaluate"} <= commands


def test_interrupt_exits_130(monkeypatch, capsys):
    from videoldm import cli, generation

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generation, "inspect_model", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate"])
    assert exit_info.value.code == 130
    assert "interrupted" in capsys.readouterr().err


def test_command_exit_code_is_the_process_exit_code(monkeypatch):
    import typer

    from videoldm import cli, generation

    def exits_3(*_args, **_kwargs):
        raise typer.Exit(3)

    monkeypatch.setattr(generation, "inspect_model", exits_3)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate"])
    assert exit_info.value.code == 3


def test_internal_bug_keeps_its_traceback(monkeypatch):
    from videoldm import cli, generation

    def bug(*_args, **_kwargs):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(generation, "inspect_model", bug)
    with pytest.raises(ValueError, match="internal invariant"):
        cli.main(["generate"])


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    """A run killed while writing leaves neither a partial file nor a temporary behind."""
    from videoldm.data import io

    (tmp_path / "old.mp4").write_bytes(b"the previous video")

    def dies_midway(pixels):
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "_pad_to_even", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        with io.video_writer(tmp_path / "old.mp4") as write:
            write(torch.zeros(2, 3, 8, 8))  # the container file exists by now
    assert [p.name for p in tmp_path.iterdir()] == ["old.mp4"]
    assert (tmp_path / "old.mp4").read_bytes() == b"the previous video"


def test_inflate_writes_complete_directory_atomically(models, tmp_path):
    from videoldm.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["inflate", "--image-model", str(models["image"]), "--out", str(tmp_path / "video_model"),
              "--kernel", "3,1,1", "--temporal-kinds", "conv"])
    assert exit_info.value.code == 0
    assert [p.name for p in tmp_path.iterdir()] == ["video_model"]
    config = json.loads((tmp_path / "video_model" / "unet" / "config.json").read_text())
    assert config["conv_kernel_size"] == [3, 1, 1] and config["temporal_kinds"] == ["conv"]


def test_bundled_recipe_found_by_name():
    from videoldm.training.recipes import bundled_recipes, load_recipe, resolve_recipe

    assert "digits_video" in bundled_recipes()
    recipe = load_recipe(resolve_recipe("digits_video"))
    assert recipe["stage"] == "video"


def test_main_module_exit_code(tmp_path):
    """``python -m videoldm`` exits with the command's status (2 on a user error)."""
    import subprocess

    result = subprocess.run([sys.executable, "-m", "videoldm", "generate", "--frames", "0"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_an_output_the_file_system_refuses_is_a_user_error_before_any_work(monkeypatch, capsys):
    """Root's permission bits call /proc writable; the file system refuses new files there. The output is
    tried before the model is loaded, and the error names the file."""
    from videoldm import cli

    def no_loading(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(cli, "load_pipeline", no_loading)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--out", "/proc/videoldm-test.mp4"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/proc/videoldm-test.mp4" in err[0] and err[0].startswith("error: --out")
