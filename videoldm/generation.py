"""A user's request, shared by the command line and the web UI: options, checks, planning, loading, writing.

Every check here reads only the request, the files it names and a pipeline directory's configs, so
a bad request is answered before torch, diffusers or a network is loaded; a :class:`UserError` names
the option or file and what was expected (the command line prints it as one line, exit status 2;
the web UI shows it). Networks and video I/O are imported by the functions that load and write.
"""

from __future__ import annotations

import math
import shlex
import socket
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from ._startup import garbage_collection_paused
from .data.paths import check_creatable, check_video_output, existing_video_path
from .defaults import (
    DECODERS,
    DEFAULT_CONTEXT_FRAMES,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_INTERPOLATION_CONTEXT_GUIDANCE,
    DEFAULT_NOISE_LEVEL,
    DEFAULT_NUM_FRAMES,
    DEFAULT_UPSAMPLER_STEPS,
    DEFAULT_UPSAMPLER_WINDOW_FRAMES,
    DEFAULT_UPSAMPLER_WINDOW_OVERLAP,
    DEFAULT_WINDOW_FRAMES,
    MAX_CONTEXT_FRAMES,
    MAX_FPS,
    MAX_FRAMES,
    MAX_ROLLOUT_FRAMES,
    MAX_SEED,
    MAX_STEPS,
    MAX_WINDOW_CANDIDATES,
    PASSES_PER_FACTOR,
    TEMPORAL_KINDS,
)
from .embedded import resolve_model
from .models.configs import downsampling_factor
from .pipelines.directory import (
    UPSAMPLER_COMPONENTS,
    PipelineDirectoryError,
    PipelineInfo,
    check_model_folder,
    conditioning_fault,
    inspect_pipeline_directory,
)
from .pipelines.planning import (
    DEFAULT_MAX_PIECE_BYTES,
    DEFAULT_MAX_STATE_BYTES,
    KEY_FRAMES,
    CascadeSteps,
    count_cascade_steps,
    guidance_branches,
    piece_bytes,
    plan_segments,
    resolve_segment_frames,
    resolve_tile_size,
    sampler_state_bytes,
)

if TYPE_CHECKING:
    import torch

    from .pipelines.cascade import CascadePipeline
    from .pipelines.upsample import VideoUpsamplerPipeline


class UserError(Exception):
    """An error caused by the user's input; reported as one line, exit code 2."""


@contextmanager
def reported_as(option: str, *errors: type[BaseException]) -> Iterator[None]:
    """Turn ``errors`` (default ValueError) raised by a validation call into a :class:`UserError` for ``option``."""
    try:
        yield
    except errors or (ValueError,) as error:
        raise UserError(f"{option}: {first_line(error)}") from None


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ------------------------------------------------------------------------------------ checks
def check_new_directory(path: Path, option: str) -> None:
    """``path`` must not exist or be an empty directory, and be creatable (no file on its way)."""
    if path.is_file() or (path.is_dir() and any(path.iterdir())):
        raise UserError(f"{option} {path} already exists; give a new or empty directory")
    with reported_as(option):
        check_creatable(path)


def check_output_file(path: Path, option: str) -> None:
    """``path`` must be a file path (not a directory) whose directory exists or can be created."""
    if path.is_dir():
        raise UserError(f"{option} {path} is a directory; expected a file path")
    with reported_as(option):
        check_creatable(path)


def check_device(device: str) -> None:
    """``device`` must name a torch device type this machine has (cpu, cuda[:N], mps)."""
    import torch  # lazy, as every network import here: a request is checked before torch loads

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r}: expected a torch device such as cpu, cuda or cuda:1") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(parsed.type, False):
        raise UserError(f"--device {device!r}: this machine has no {parsed.type} device")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise UserError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def inspect_model(model: Optional[Path]) -> PipelineInfo:
    """The :class:`PipelineInfo` of ``--model`` (a directory or a shipped model's name; default: the digits
    model), checked without loading weights."""
    with reported_as("--model", PipelineDirectoryError, FileNotFoundError):
        model = resolve_model(model)
        info = inspect_pipeline_directory(model)
    if not info.is_video:
        raise UserError(
            f"--model {model}: its unet is an image {info.components['unet'][1]}; inflate it first with `videoldm inflate`"
        )
    return info


def check_conditioning(info: PipelineInfo, prompt: Optional[str], labels: Optional[list[int]], *, prompt_is_conditioning: bool = True) -> None:
    """Refuse conditioning the model cannot use (:func:`~videoldm.pipelines.directory.conditioning_fault`, the
    pipelines' own rule), more labels than it takes or a class it does not know."""
    prompted = prompt is not None and prompt_is_conditioning
    fault = conditioning_fault(info.conditioning, prompt=prompted, labels=bool(labels))
    if fault is not None:
        option = "--prompt" if prompted and info.conditioning != "text" else "--label"
        raise UserError(f"{option}: model {info.path}: {fault}")
    if labels:
        config = info.configs["label_encoder"]
        num_classes, max_labels = int(config.get("num_classes", 10)), int(config.get("max_labels", 1))
        if len(labels) > max_labels:
            raise UserError(f"--label given {len(labels)} times; model {info.path} takes at most {max_labels}")
        bad = [label for label in labels if not 0 <= label < num_classes]
        if bad:
            raise UserError(f"--label {bad[0]}: expected a class in 0..{num_classes - 1}")


def resolve_steps(info: PipelineInfo, steps: Optional[int]) -> int:
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


def load_pipeline(info: PipelineInfo, *, interpolation: bool = True, upsampling: bool = True) -> CascadePipeline:
    """Load the (already inspected) pipeline of ``info`` in float32, as a :class:`~videoldm.pipelines.CascadePipeline`.

    ``interpolation=False`` / ``upsampling=False`` leave those stages' models out (None): a command that
    will not run them does not pay their loading time and memory.
    """
    import torch  # lazy: see check_device

    from .pipelines.cascade import CascadePipeline

    left_out = (() if interpolation else INTERPOLATION_COMPONENTS) + (() if upsampling else UPSAMPLING_COMPONENTS)
    # Weights may be stored in half precision (the embedded model is); CPUs compute in float32.
    return CascadePipeline.from_pretrained(info.path, dtype=torch.float32,
                                           **{name: None for name in left_out if name in info.components})


# ------------------------------------------------------------------------------------ generate
@dataclass(frozen=True)
class GenerateOptions:
    """The options of ``videoldm generate`` but ``--out``; the web UI (:mod:`videoldm.app`) fills one from its form.

    ``steps`` None is the model's own number (:func:`resolve_steps`), ``fps`` None its own frame rate
    (``PipelineInfo.default_fps``). ``labels`` as given: empty is
    the default (for a label model, class SEED mod its number of classes), ``(-1,)`` is no label.
    The defaults here are the command line's.
    """

    model: Optional[Path] = None
    frames: int = DEFAULT_NUM_FRAMES
    steps: Optional[int] = None  # the model's own (its model_index.json's default_num_inference_steps)
    seed: int = 0
    guidance: float = DEFAULT_GUIDANCE_SCALE
    prompt: Optional[str] = None
    labels: tuple[int, ...] = ()
    fps: Optional[float] = None  # the model's own (its model_index.json's default_fps)
    fps_multiplier: int = 1
    upscale: int = 1
    upscale_steps: int = DEFAULT_UPSAMPLER_STEPS
    upscale_noise_level: int = DEFAULT_NOISE_LEVEL
    keep_stages: Optional[Path] = None
    decoder: str = "video"
    image_only: bool = False
    context_guidance: float = 1.0
    context_frames: int = DEFAULT_CONTEXT_FRAMES
    window_candidates: int = 1
    window: int = DEFAULT_WINDOW_FRAMES
    init_image: Optional[Path] = None
    continue_video: Optional[Path] = None
    noise_correlation: Optional[float] = None  # the model's own (model_index.json's default_noise_correlation; else 0)

    def command_line(self, out: Path) -> str:
        """The ``videoldm generate`` command that makes this video at ``out``: every option that differs
        from the default, and the frames, steps, seed, guidance and labels always (so the reader sees them)."""
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
    "noise_correlation": (0.0, 0.99),  # 1 would give all frames one noise
}


FINITE_OPTIONS = ("guidance", "context_guidance", "fps", "noise_correlation")


def read_given_frames(path: Path, option: str, frame_shape: tuple[int, Optional[int], Optional[int]], *, fps: Optional[float] = None,
                      max_frames: Optional[int] = None, resize: bool = False):
    """Frames of ``path`` (an image, video or frame folder) as the model's ``(T, C, H, W)`` in [-1, 1], and their rate.

    RGB frames become grey (ITU-R 601 luma) for a one-channel model; the size must be the model's
    (any, when its height and width are None) unless ``resize`` (bilinear, antialiased; aspect ratio not kept). ``fps`` resamples (a frame
    folder: its rate); more than ``max_frames`` frames is an error.
    """
    with reported_as(option, FileNotFoundError):  # a missing file is answered before torch is imported
        existing_video_path(path)
    with garbage_collection_paused():  # lazy: see check_device; the collector would walk torch's import
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
    """A checked ``generate`` request: its options (labels resolved: ``(-1,)`` for none; steps and fps resolved),
    the model's :class:`~videoldm.pipelines.directory.PipelineInfo`, and the given frames ``(K, C, H, W)``
    read from ``--init-image`` or ``--continue``."""

    options: GenerateOptions
    info: PipelineInfo
    given: Optional[torch.Tensor] = None

    @property
    def output_fps(self) -> float:
        """The written video's frame rate: the key frames' times ``--fps-multiplier``."""
        return self.options.fps * self.options.fps_multiplier

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
        options = self.options
        num_given = 0 if self.given is None else len(self.given)
        upsampling = self.upsampling_plan()
        return count_cascade_steps(
            options.frames - (1 if options.init_image is not None else 0), fps_multiplier=options.fps_multiplier,
            upscale=options.upscale, num_inference_steps=options.steps, upsampler_steps=options.upscale_steps,
            upsampling_segments=1 if upsampling is None else len(upsampling.segments), window_frames=self.window_frames,
            context_frames=options.context_frames, num_given=num_given, window_candidates=options.window_candidates)

    def pipeline_arguments(self) -> dict[str, Any]:
        """The keyword arguments of :meth:`~videoldm.pipelines.VideoLDMPipeline.generate_frames` for this request,
        but its generator (seeded with ``options.seed`` where it samples)."""
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
            decoder=options.decoder,
            image_only=options.image_only,
            noise_correlation=options.noise_correlation,
        )


def check_generate_bounds(options: GenerateOptions) -> None:
    """The numeric options within :data:`GENERATE_BOUNDS`, the floats finite (the command line's typer
    options check the same before a command runs; the web UI's form needs this)."""
    for name in FINITE_OPTIONS:
        value = getattr(options, name)
        if value is not None and not math.isfinite(value):
            raise UserError(f"{GENERATE_OPTION_NAMES[name]} {value}: not a finite number")
    for name, (low, high) in GENERATE_BOUNDS.items():
        value = getattr(options, name)
        if value is not None and not low <= value <= high:
            raise UserError(f"{GENERATE_OPTION_NAMES[name]} {value}: expected {low}..{high}")


def check_fps_multiplier(info: PipelineInfo, options: GenerateOptions) -> None:
    """``--fps-multiplier`` 1, or 4 / 16 with a model that has an interpolation model (one or two regimes)."""
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
    check_generate_bounds(options)
    if options.decoder not in DECODERS:
        raise UserError(f"--decoder {options.decoder!r}: expected one of {', '.join(DECODERS)}")
    with reported_as("--out"):
        check_video_output(out)
    info = inspect_model(options.model)
    if options.fps is None:
        options = replace(options, fps=info.default_fps)
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
    import torch  # lazy: see check_device

    from .data.io import video_writer, write_video

    options = plan.options
    output_fps = plan.output_fps

    def keep(stage: str, pixels: torch.Tensor) -> None:
        options.keep_stages.mkdir(parents=True, exist_ok=True)
        write_video(pixels[0], options.keep_stages / f"{stage}.mp4", fps=options.fps if stage == KEY_FRAMES else output_fps)

    made = pipe.cascade_frames(**plan.pipeline_arguments(), generator=torch.Generator().manual_seed(options.seed),
                               callback_on_step_end=on_step,
                               fps_multiplier=options.fps_multiplier, upscale=options.upscale,
                               upsampler_steps=options.upscale_steps, noise_level=options.upscale_noise_level,
                               on_stage=keep if options.keep_stages is not None else None)
    with video_writer(out, fps=output_fps) as write:
        for piece in made:
            write(piece[0])
            if on_frames is not None:
                on_frames(piece.shape[1])


def inspect_upsampler(model: Optional[Path]) -> PipelineInfo:
    """The :class:`PipelineInfo` of an upsampler ``--model`` (default: the embedded model): a Video LDM pipeline
    with a video upsampler, or an upsampler pipeline of its own (``videoldm train digits_image_upsampler``)."""
    with reported_as("--model", PipelineDirectoryError, FileNotFoundError):
        model = resolve_model(model)
        info = inspect_pipeline_directory(model, required=())
    if not info.has_upsampler and not all(name in info.components for name in UPSAMPLER_COMPONENTS):
        raise UserError(f"--model {model}: it has no video upsampler (train one: videoldm train digits_upsampler)")
    return info


def load_upsampler(info: PipelineInfo) -> VideoUpsamplerPipeline:
    """The :class:`~videoldm.pipelines.upsample.VideoUpsamplerPipeline` of an (inspected) upsampler model, in float32."""
    import torch  # lazy: see check_device

    from .pipelines.upsample import VideoUpsamplerPipeline

    if info.has_upsampler:
        return load_pipeline(info, interpolation=False).upsampler_pipeline()
    return VideoUpsamplerPipeline.from_pretrained(info.path, dtype=torch.float32)


def upsampler_side_multiple(info: PipelineInfo) -> int:
    """What the low-resolution frames' sides must be multiples of for the upsampler of ``info`` (its UNet's downsamplings)."""
    upsampler = info.configs["upsampler"]
    return max(1, downsampling_factor(upsampler) * upsampler_latent_cell(info) // int(upsampler["scale_factor"]))


def upsampler_latent_cell(info: PipelineInfo) -> int:
    """Pixels per sample cell of the upsampler of ``info``: a Video LDM pipeline's upsampler works on pixels, a
    stand-alone latent upsampler (the x4 upscaler inflated) on its autoencoder's latents."""
    if "vae" not in info.components or info.has_upsampler:
        return 1
    return downsampling_factor(info.configs["vae"])


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
    if not image_model.is_dir():
        raise UserError(f"--image-model {image_model} is not a directory")
    if (image_model / "model_index.json").is_file():
        with reported_as("--image-model", PipelineDirectoryError):
            info = inspect_pipeline_directory(image_model)
        if info.is_video:
            raise UserError(f"--image-model {image_model} is already a video pipeline (its unet is a VideoUNet)")
        return "upscaler" if "low_res_scheduler" in info.components else "pipeline"
    if (image_model / "config.json").is_file():
        with reported_as("--image-model", PipelineDirectoryError):
            class_name = check_model_folder(image_model).get("_class_name")
        if class_name not in (None, "UNet2DConditionModel"):
            raise UserError(f"--image-model {image_model} holds a {class_name}; expected a UNet2DConditionModel")
        return "unet"
    raise UserError(f"--image-model {image_model} holds neither model_index.json (a pipeline) nor config.json (a UNet)")





def parse_buckets(text: str) -> list[list[int]]:
    """``"16x320x512,16x512x320"`` -> ``[[16, 320, 512], [16, 512, 320]]`` (``--buckets``: FRAMESxHEIGHTxWIDTH each)."""
    try:
        buckets = [[int(part) for part in bucket.lower().split("x")] for bucket in text.split(",")]
    except ValueError:
        buckets = []
    if not buckets or any(len(bucket) != 3 or min(bucket) < 1 for bucket in buckets):
        raise UserError(f"--buckets {text!r}: expected FRAMESxHEIGHTxWIDTH formats, comma-separated, like 16x320x512,16x512x320")
    return buckets


def parse_size(text: str) -> tuple[int, int]:
    """``"320x512"`` -> ``(320, 512)``; ``"256"`` -> ``(256, 256)``."""
    try:
        size = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        size = ()
    if len(size) not in (1, 2) or any(part < 1 for part in size):
        raise UserError(f"--size {text!r}: expected HEIGHTxWIDTH like 320x512, or one number")
    return (size[0], size[-1])




def check_listen_address(host: str, port: int) -> None:
    """``host`` must resolve and ``port`` be free on it (probed by binding, as the server will)."""
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


# ------------------------------------------------------------------------------------ interpolate
@dataclass(frozen=True)
class InterpolateOptions:
    """The options of ``videoldm interpolate`` but ``--video`` and ``--out`` (the command line's defaults)."""

    factor: int = 4
    model: Optional[Path] = None
    steps: Optional[int] = None  # the model's own
    seed: int = 0
    context_guidance: float = DEFAULT_INTERPOLATION_CONTEXT_GUIDANCE
    guidance: float = 1.0
    prompt: Optional[str] = None
    labels: tuple[int, ...] = ()  # (-1,): none
    regime: int = 0
    fps: Optional[float] = None  # the file's own
    resize: bool = False
    decoder: str = "video"


@dataclass(frozen=True)
class InterpolationRequest:
    """A checked ``interpolate`` request: its options (steps resolved), the model, the key frames
    ``(K, C, H, W)`` in [-1, 1] and their rate."""

    options: InterpolateOptions
    info: PipelineInfo
    keys: torch.Tensor
    input_fps: float

    @property
    def total_frames(self) -> int:
        """Frames written: ``factor * (K - 1) + 1``."""
        return self.options.factor * (len(self.keys) - 1) + 1

    @property
    def output_fps(self) -> float:
        """The written video's rate: ``factor`` times the input's."""
        return self.input_fps * self.options.factor


def plan_interpolation_request(video: Path, out: Path, options: InterpolateOptions) -> InterpolationRequest:
    """Check an ``interpolate`` request and read its key frames, without loading a network."""
    factor, regime = options.factor, options.regime
    if factor not in PASSES_PER_FACTOR:
        raise UserError(f"--factor {factor}: expected one of {', '.join(map(str, sorted(PASSES_PER_FACTOR)))}")
    if options.decoder not in DECODERS:
        raise UserError(f"--decoder {options.decoder!r}: expected one of {', '.join(DECODERS)}")
    with reported_as("--out"):
        check_video_output(out)
    info = inspect_model(options.model)
    if not info.frame_rate_regimes:
        raise UserError(f"--model {info.path}: it has no interpolation model (train one: videoldm train digits_interpolation)")
    passes = PASSES_PER_FACTOR[factor]
    if regime + passes > info.frame_rate_regimes:
        raise UserError(f"--regime {regime}: --factor {factor} needs {passes} regime(s) from it; the model has "
                        f"regimes 0..{info.frame_rate_regimes - 1}")
    labels = () if options.labels == (-1,) else options.labels
    check_conditioning(info, options.prompt, list(labels) or None)
    steps = resolve_steps(info, options.steps)
    keys, input_fps = read_given_frames(video, "--video", info.frame_shape, fps=options.fps, max_frames=MAX_FRAMES,
                                        resize=options.resize)
    if len(keys) < 2:
        raise UserError(f"--video {video}: {len(keys)} frame; interpolation needs at least 2")
    request = InterpolationRequest(replace(options, labels=labels, steps=steps), info, keys, input_fps)
    if request.output_fps > MAX_FPS:
        raise UserError(f"--fps {input_fps:g}: the output would run at {request.output_fps:g} fps; at most {MAX_FPS:g}")
    return request


def write_interpolation(request: InterpolationRequest, out: Path, *, progress_bar: Optional[dict[str, Any]] = None,
                        on_frames: Optional[Callable[[int], Any]] = None) -> None:
    """Interpolate ``request``'s key frames with its model's interpolation pipeline and write them to ``out``
    as they are decoded; ``progress_bar``: the denoising bar's settings, ``on_frames(k)`` after every
    ``k`` frames written."""
    import torch  # lazy: see check_device

    from .data.io import video_writer

    options = request.options
    pipe = load_pipeline(request.info, upsampling=False)
    pipe.set_progress_bar_config(**(progress_bar or {}))
    pipe = pipe.interpolation_pipeline()
    latents = pipe(
        request.keys, options.factor, prompt=options.prompt, labels=[list(options.labels)] if options.labels else None,
        num_inference_steps=options.steps, guidance_scale=options.guidance,
        context_guidance_scale=options.context_guidance, frame_rate_regime=options.regime,
        generator=torch.Generator().manual_seed(options.seed), decoder=options.decoder, output_type="latent",
    ).frames
    with video_writer(out, fps=request.output_fps) as write:
        for piece in pipe.decode_frames(latents, decoder=options.decoder):
            write(piece[0])
            if on_frames is not None:
                on_frames(piece.shape[1])


# ------------------------------------------------------------------------------------ upsample
@dataclass(frozen=True)
class UpsampleOptions:
    """The options of ``videoldm upsample`` but ``--video`` and ``--out`` (the command line's defaults)."""

    noise_level: int = DEFAULT_NOISE_LEVEL
    model: Optional[Path] = None
    steps: int = DEFAULT_UPSAMPLER_STEPS
    seed: int = 0
    image_only: bool = False
    window: int = DEFAULT_UPSAMPLER_WINDOW_FRAMES
    tile: str = "auto"
    fps: Optional[float] = None  # the file's own
    prompt: Optional[str] = None
    guidance: float = 1.0


@dataclass(frozen=True)
class UpsampleRequest:
    """A checked ``upsample`` request: its options, the upsampler's model, the frames ``(T, C, h, w)`` and their
    rate, how they are upsampled, and notes on that plan for the user (tiles, segments)."""

    options: UpsampleOptions
    info: PipelineInfo
    frames: torch.Tensor
    input_fps: float
    plan: UpsamplingPlan
    notes: tuple[str, ...]


def plan_upsample_request(video: Path, out: Path, options: UpsampleOptions) -> UpsampleRequest:
    """Check an ``upsample`` request, read its frames and plan its tiles, segments and memory, without loading a network."""
    requested_tile = parse_tile(options.tile)
    with reported_as("--out"):
        check_video_output(out)
    info = inspect_upsampler(options.model)
    upsampler = info.configs["upsampler"]
    check_noise_level(info, options.noise_level, "--noise-level")
    if "text_encoder" not in info.components:
        for option, value, default in (("--prompt", options.prompt, None), ("--guidance", options.guidance, 1.0)):
            if value != default:
                raise UserError(f"{option}: the upsampler of {info.path} has no text encoder; it takes no prompt")
    multiple = upsampler_side_multiple(info)
    frames, input_fps = read_given_frames(video, "--video", (int(upsampler["low_res_channels"]), None, None),
                                          fps=options.fps, max_frames=MAX_FRAMES)
    height, width = frames.shape[-2:]
    if height % multiple or width % multiple:
        raise UserError(f"--video {video}: frames are {width}x{height}; this upsampler needs sides that are multiples of {multiple}")
    if options.window <= DEFAULT_UPSAMPLER_WINDOW_OVERLAP:
        raise UserError(f"--window {options.window}: must be more than the windows' overlap ({DEFAULT_UPSAMPLER_WINDOW_OVERLAP})")
    plan = plan_upsampling(info, len(frames), (height, width), window=options.window, tile=requested_tile,
                           branches=guidance_branches("text_encoder" in info.components, options.guidance))
    notes = []
    if requested_tile == "auto" and plan.tile_size is not None:
        notes.append(f"frames of {plan.output_size[1]}x{plan.output_size[0]}: denoised in tiles of {plan.tile_size} "
                     f"(--tile auto: a whole frame would take more than {DEFAULT_MAX_PIECE_BYTES / 2**30:g} GB; --tile none "
                     "to turn off)")
    if len(plan.segments) > 1:
        notes.append(f"{len(frames)} frames: upsampled in {len(plan.segments)} segments of up to "
                     f"{plan.segment_frames} frames (the whole video's sampler state would pass "
                     f"{DEFAULT_MAX_STATE_BYTES / 2**30:g} GB)")
    check_upsampling_memory(plan, f"--video {video}: {len(frames)} frames of {plan.output_size[1]}x{plan.output_size[0]}")
    return UpsampleRequest(options, info, frames, input_fps, plan, tuple(notes))


def write_upsampled(request: UpsampleRequest, out: Path, *, progress_bar: Optional[dict[str, Any]] = None) -> None:
    """Upsample ``request``'s frames with its model's video upsampler and write them to ``out`` segment by
    segment; ``progress_bar``: the denoising bar's settings."""
    import torch  # lazy: see check_device

    from .data.io import video_writer

    options = request.options
    pipe = load_upsampler(request.info)
    pipe.set_progress_bar_config(**(progress_bar or {}))
    pieces = pipe.upsample_frames(request.frames[None], noise_level=options.noise_level, num_inference_steps=options.steps,
                                  image_only=options.image_only, window_frames=options.window,
                                  tile_size=request.plan.tile_size, segment_frames=request.plan.segment_frames,
                                  generator=torch.Generator().manual_seed(options.seed), prompt=options.prompt,
                                  guidance_scale=options.guidance)
    with video_writer(out, fps=request.input_fps) as write:
        for piece in pieces:
            write(piece[0])
