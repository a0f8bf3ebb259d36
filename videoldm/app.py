"""The web UI (``videoldm serve``): a local page to try a video model, built with gradio (the ``ui`` extra).

Pick one of the models the server was started with, a label or prompt, frames, seed, steps, guidance,
context guidance and an init image; press Generate, watch the progress, play and download the MP4, and
read the ``videoldm generate`` command that makes the same video. The form becomes a
:class:`~videoldm.cli.GenerateOptions`, checked by the command line's own
:func:`~videoldm.cli.plan_generation` and sampled by its :func:`~videoldm.cli.write_generation`: one code
path, so the command shown reproduces the video. On top, the server bounds what one request may ask
(:class:`ServerLimits`). Only :func:`build_page` and :func:`serve_page` import gradio.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from .defaults import MAX_SEED
from .generation import GenerateOptions, GenerationPlan, UserError, load_pipeline, plan_generation, write_generation

if TYPE_CHECKING:
    import gradio

    from .pipelines import VideoLDMPipeline
    from .pipelines.directory import PipelineInfo

EMBEDDED_MODEL_NAME = "embedded digits model"
RANDOM_SEED = -1  # the seed field's value for "draw one"; the page shows the seed drawn
_DEFAULTS = GenerateOptions()


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask of this server, on top of the command line's own limits
    (``videoldm serve --max-frames/--max-steps``)."""

    max_frames: int
    max_steps: int
    max_upload_mb: int = 10
    queue_size: int = 16


@dataclass(frozen=True)
class Form:
    """The page's inputs as gradio hands them over: numbers may be None (a cleared field) or floats."""

    model: str = EMBEDDED_MODEL_NAME
    labels: str = ""
    prompt: str = ""
    frames: Optional[float] = _DEFAULTS.frames
    seed: Optional[float] = _DEFAULTS.seed
    steps: Optional[float] = _DEFAULTS.steps
    guidance: Optional[float] = _DEFAULTS.guidance
    context_guidance: Optional[float] = _DEFAULTS.context_guidance
    fps: Optional[float] = _DEFAULTS.fps
    fps_multiplier: Optional[float] = _DEFAULTS.fps_multiplier
    upscale: Optional[float] = _DEFAULTS.upscale
    upscale_steps: Optional[float] = _DEFAULTS.upscale_steps
    upscale_noise_level: Optional[float] = _DEFAULTS.upscale_noise_level
    init_image: Optional[str] = None


@dataclass(frozen=True)
class Result:
    """A generated video: the MP4, the seed used and the command line that makes the same video."""

    video: Path
    seed: int
    command: str


def _whole_number(value: Optional[float], option: str) -> int:
    if value is None or not math.isfinite(value) or value != int(value):
        raise UserError(f"{option} {value}: expected a whole number")
    return int(value)


def _number(value: Optional[float], option: str) -> float:
    if value is None:
        raise UserError(f"{option}: expected a number")
    return float(value)


def parse_labels(text: str) -> tuple[int, ...]:
    """``"3 8"`` or ``"3, 8"`` -> ``(3, 8)``; empty -> ``()`` (the default label)."""
    parts = text.replace(",", " ").split()
    try:
        return tuple(int(part) for part in parts)
    except ValueError:
        raise UserError(f"--label {text.strip()!r}: expected class numbers like 3, or 3 8 for two digits") from None


def count_windows(plan: GenerationPlan) -> int:
    """How many windows the key-frame and interpolation stages of ``plan`` denoise (each ``plan.options.steps`` steps)."""
    steps = plan.cascade_steps()
    return (steps.key_frames + steps.interpolation) // plan.options.steps


class VideoService:
    """Turns the page's form into videos: one generation at a time, one loaded pipeline kept.

    ``models`` maps the names the page offers to their (inspected) pipeline directories; nothing
    else can be loaded. Videos are written under ``output_dir``.
    """

    def __init__(self, models: dict[str, PipelineInfo], limits: ServerLimits, output_dir: Path) -> None:
        self.models = models
        self.limits = limits
        self.output_dir = output_dir
        self._lock = threading.Lock()
        self._loaded: tuple[Path, VideoLDMPipeline] | None = None

    def options(self, form: Form) -> GenerateOptions:
        """The ``generate`` options of ``form``, within this server's limits (the rest is checked by
        :func:`~videoldm.cli.plan_generation`). A seed of -1 draws one."""
        if form.model not in self.models:
            raise UserError(f"model: not one this server offers; pick one of: {', '.join(self.models)}")
        frames = _whole_number(form.frames, "--frames")
        if frames > self.limits.max_frames:
            raise UserError(f"--frames {frames}: this server makes at most {self.limits.max_frames} frames "
                            f"(videoldm serve --max-frames)")
        # A cleared Steps field is the model's own number (the page shows it when a model is picked).
        steps = self.models[form.model].default_steps if form.steps is None else _whole_number(form.steps, "--steps")
        if steps > self.limits.max_steps:
            raise UserError(f"--steps {steps}: this server takes at most {self.limits.max_steps} steps "
                            f"(videoldm serve --max-steps)")
        seed = _whole_number(form.seed, "--seed")
        if seed == RANDOM_SEED:
            seed = secrets.randbelow(MAX_SEED + 1)
        elif seed < 0:
            raise UserError(f"--seed {seed}: expected 0..{MAX_SEED}, or {RANDOM_SEED} for a random seed")
        model = None if form.model == EMBEDDED_MODEL_NAME else self.models[form.model].path
        upscale = _whole_number(form.upscale, "--upscale")
        # The page keeps the upsampler's fields when Upscale is 1; the command line refuses them there.
        upscale_steps, upscale_noise_level = _DEFAULTS.upscale_steps, _DEFAULTS.upscale_noise_level
        if upscale != 1:
            upscale_steps = _whole_number(form.upscale_steps, "--upscale-steps")
            if upscale_steps > self.limits.max_steps:
                raise UserError(f"--upscale-steps {upscale_steps}: this server takes at most {self.limits.max_steps} "
                                f"steps (videoldm serve --max-steps)")
            upscale_noise_level = _whole_number(form.upscale_noise_level, "--upscale-noise-level")
        return GenerateOptions(
            model=model, frames=frames, steps=steps, seed=seed, guidance=_number(form.guidance, "--guidance"),
            prompt=form.prompt.strip() or None, labels=parse_labels(form.labels),
            fps=self.models[form.model].default_fps if form.fps is None else _number(form.fps, "--fps"), context_guidance=_number(form.context_guidance, "--context-guidance"),
            fps_multiplier=_whole_number(form.fps_multiplier, "--fps-multiplier"),
            upscale=upscale, upscale_steps=upscale_steps, upscale_noise_level=upscale_noise_level,
            init_image=Path(form.init_image) if form.init_image else None,
        )

    def generate(self, form: Form, report: Callable[[float, str], Any] = lambda fraction, text: None) -> Result:
        """Check ``form``, sample its video into a new MP4 and return it; ``report(fraction, text)``
        follows the sampling. Bad input is a :class:`~videoldm.cli.UserError` before any sampling."""
        options = self.options(form)
        out = self.output_dir / uuid.uuid4().hex / f"videoldm-seed{options.seed}.mp4"
        plan = plan_generation(options, out)
        with self._lock:
            # gradio copied the previous video into its cache when it was returned: keep one of ours
            shutil.rmtree(self.output_dir, ignore_errors=True)
            pipe = self._pipeline(plan.info)
            write_generation(pipe, plan, out, on_step=self._step_reporter(plan, pipe, report))
        # The upload's server-side copy is gone when the server stops: the command names the user's file.
        shown = replace(plan.options, init_image=Path(options.init_image.name) if options.init_image else None)
        return Result(video=out, seed=options.seed, command=shown.command_line(Path(out.name)))

    def _pipeline(self, info: PipelineInfo) -> VideoLDMPipeline:
        if self._loaded is None or self._loaded[0] != info.path:
            self._loaded = None  # free the previous model before loading the next
            pipe = load_pipeline(info)
            pipe.set_progress_bar_config(disable=True)
            self._loaded = (info.path, pipe)
        return self._loaded[1]

    @staticmethod
    def _step_reporter(plan: GenerationPlan, pipe: VideoLDMPipeline, report: Callable[[float, str], Any]):
        windows, upsampling, calls = count_windows(plan), plan.cascade_steps().upsampling, 0

        def on_step(step_index: int, timestep: Any, latents: Any) -> None:
            nonlocal calls
            calls += 1
            steps = len(pipe.scheduler.timesteps)
            if calls > windows * steps:  # the upsampler's steps come last
                text = f"upsampling, step {calls - windows * steps}/{upsampling}"  # across its segments
            else:
                window = min((calls - 1) // steps + 1, windows)
                text = f"window {window}/{windows}, step {step_index + 1}/{steps}" if windows > 1 else f"step {step_index + 1}/{steps}"
            report(min(calls / (windows * steps + upsampling), 1.0), text)

        return on_step


def visible_fields(info: PipelineInfo) -> dict[str, bool]:
    """Which conditioning fields the page shows for a model: labels, prompt, and the prediction model's
    context guidance and init image."""
    return {"labels": info.conditioning == "label", "prompt": info.conditioning == "text",
            "context_guidance": info.has_context_conditioning, "init_image": info.has_context_conditioning,
            "fps_multiplier": info.frame_rate_regimes > 0, "upscale": info.has_upsampler,
            "upscale_steps": info.has_upsampler, "upscale_noise_level": info.has_upsampler}


PAGE_CSS = "video { image-rendering: pixelated; }"  # small models make small videos: show big pixels


def build_page(service: VideoService) -> gradio.Blocks:
    """The gradio page of ``service``: the form, Generate, progress, the video, its MP4 and command line."""
    import gradio as gr

    limits, first = service.limits, next(iter(service.models))
    shown = visible_fields(service.models[first])
    # gradio keeps a copy of every video and upload: hourly, drop those older than a day
    with gr.Blocks(title="videoldm", analytics_enabled=False, delete_cache=(3600, 86400)) as page:
        gr.Markdown("## videoldm: generate a video")
        with gr.Row():
            with gr.Column():
                model = gr.Dropdown(list(service.models), value=first, label="Model", elem_id="model")
                labels = gr.Textbox(label="Label(s)", info="--label: a class, or two like 3 8; empty: seed mod the "
                                    "number of classes; -1: none", visible=shown["labels"], elem_id="labels")
                prompt = gr.Textbox(label="Prompt", info="--prompt", visible=shown["prompt"], elem_id="prompt")
                with gr.Row():
                    frames = gr.Number(_DEFAULTS.frames, precision=0, label="Frames",
                                       info=f"--frames, 1..{limits.max_frames}", elem_id="frames")
                    seed = gr.Number(_DEFAULTS.seed, precision=0, label="Seed", info=f"--seed; {RANDOM_SEED}: random",
                                     elem_id="seed")
                    steps = gr.Number(service.models[first].default_steps, precision=0, label="Steps",
                                      info=f"--steps, 1..{limits.max_steps}", elem_id="steps")
                with gr.Row():
                    guidance = gr.Number(_DEFAULTS.guidance, label="Guidance", info="--guidance; 1: none",
                                         elem_id="guidance")
                    context_guidance = gr.Number(_DEFAULTS.context_guidance, label="Context guidance",
                                                 info="--context-guidance; 1: none", elem_id="context_guidance",
                                                 visible=shown["context_guidance"])
                    fps = gr.Number(service.models[first].default_fps, label="Frame rate", info="--fps", elem_id="fps")
                    fps_multiplier = gr.Dropdown([1, 4, 16], value=_DEFAULTS.fps_multiplier, label="Frame-rate multiplier",
                                                 info="--fps-multiplier: interpolation x4 or x16", elem_id="fps_multiplier",
                                                 visible=shown["fps_multiplier"])
                    upscale = gr.Dropdown([1, 4], value=_DEFAULTS.upscale, label="Upscale",
                                          info="--upscale: the video upsampler, x4 the size", elem_id="upscale",
                                          visible=shown["upscale"])
                with gr.Row():
                    upscale_steps = gr.Number(_DEFAULTS.upscale_steps, precision=0, label="Upscale steps",
                                              info=f"--upscale-steps, 1..{limits.max_steps}; with Upscale 4",
                                              elem_id="upscale_steps", visible=shown["upscale_steps"])
                    upscale_noise_level = gr.Number(_DEFAULTS.upscale_noise_level, precision=0,
                                                    label="Upscale noise level", elem_id="upscale_noise_level",
                                                    info="--upscale-noise-level: higher repairs more artefacts, keeps "
                                                    "less detail; with Upscale 4", visible=shown["upscale_noise_level"])
                init_image = gr.File(label=f"Init image: frame 0 (--init-image; the model's size, at most "
                                     f"{limits.max_upload_mb} MB)", file_types=["image"], elem_id="init_image",
                                     visible=shown["init_image"], height=150)
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                video = gr.Video(label="Video", autoplay=True, loop=True, interactive=False, height=320,
                                 elem_id="video")
                download = gr.File(label="Download MP4", interactive=False, elem_id="download", height=110)
                seed_used = gr.Textbox(label="Seed used", interactive=False, elem_id="seed_used")
                command = gr.Textbox(label="The same video from the command line (run it where the init image is)",
                                     interactive=False, buttons=["copy"], elem_id="command")

        shown_by_model = {"labels": labels, "prompt": prompt, "context_guidance": context_guidance,
                          "init_image": init_image, "fps_multiplier": fps_multiplier, "upscale": upscale,
                          "upscale_steps": upscale_steps, "upscale_noise_level": upscale_noise_level}

        def on_model(name: str) -> list[Any]:
            if name not in service.models:
                raise gr.Error("model: not one this server offers", print_exception=False)
            visible = visible_fields(service.models[name])
            return [gr.update(visible=visible[field]) for field in shown_by_model] + [
                gr.update(value=service.models[name].default_steps), gr.update(value=service.models[name].default_fps)]

        def on_generate(model: str, labels: str, prompt: str, frames: Optional[float], seed: Optional[float],
                        steps: Optional[float], guidance: Optional[float], context_guidance: Optional[float],
                        fps: Optional[float], fps_multiplier: Optional[float], upscale: Optional[float],
                        upscale_steps: Optional[float], upscale_noise_level: Optional[float],
                        init_image: Optional[str], progress: gr.Progress = gr.Progress()) -> tuple[str, str, str, str]:
            form = Form(model=model, labels=labels or "", prompt=prompt or "", frames=frames, seed=seed, steps=steps,
                        guidance=guidance, context_guidance=context_guidance, fps=fps, fps_multiplier=fps_multiplier,
                        upscale=upscale, upscale_steps=upscale_steps, upscale_noise_level=upscale_noise_level,
                        init_image=init_image)
            try:
                result = service.generate(form, lambda fraction, text: progress(fraction, desc=text))
            except UserError as error:
                raise gr.Error(str(error), title="Cannot generate", duration=None, print_exception=False) from None
            return str(result.video), str(result.video), str(result.seed), result.command

        model.change(on_model, inputs=model, outputs=list(shown_by_model.values()) + [steps, fps], api_name=False)
        button.click(on_generate, inputs=[model, labels, prompt, frames, seed, steps, guidance, context_guidance, fps,
                                          fps_multiplier, upscale, upscale_steps, upscale_noise_level, init_image],
                     outputs=[video, download, seed_used, command], api_name="generate", concurrency_limit=1)
    return page


def serve_page(models: dict[str, PipelineInfo], *, host: str, port: int, limits: ServerLimits) -> None:
    """Serve the page on ``host:port`` until Ctrl-C (KeyboardInterrupt) or SIGTERM (exit 143).

    Every file the page makes or receives lives in a temporary directory of its own, removed on exit.
    """
    workdir = Path(tempfile.mkdtemp(prefix="videoldm-serve-"))
    # gradio reads these when imported: uploads and its cache go to our directory, and it sends
    # nothing anywhere (no analytics, no version check).
    os.environ["GRADIO_TEMP_DIR"] = str(workdir / "gradio")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    previous_sigterm = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    # A server started in the background of a non-interactive shell inherits SIGINT ignored; Ctrl-C
    # (or kill -INT) must still stop it and remove its files.
    previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    page = None
    try:
        service = VideoService(models, limits, workdir / "videos")
        page = build_page(service).queue(max_size=limits.queue_size, default_concurrency_limit=1)
        print(f"temporary files: {workdir} (removed on exit)", flush=True)
        page.launch(server_name=host, server_port=port, prevent_thread_lock=True, share=False, ssr_mode=False,
                    mcp_server=False, footer_links=[], max_file_size=f"{limits.max_upload_mb}mb", css=PAGE_CSS,
                    allowed_paths=[str(workdir)])
        while True:
            time.sleep(3600)
    finally:
        if page is not None:
            page.close()
        shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous_sigterm)
        signal.signal(signal.SIGINT, previous_sigint)
