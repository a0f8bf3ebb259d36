"""The full Video LDM stack in one call (Sec. 3): key frames -> prediction for length -> interpolation
x4 / x16 -> decoding with the temporal decoder -> video upsampling x4.

Every stage after the key frames is optional and is the pipeline's own method
(:meth:`~videoldm.pipelines.VideoLDMPipeline.generate_frames`, ``interpolate``, ``decode_frames``,
``upsample``); :class:`CascadePipeline` only chains them, keeps intermediate results on request,
and counts the denoising steps of every stage up front so one progress display can span them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from diffusers.utils import BaseOutput

from .directory import DEFAULT_NUM_INFERENCE_STEPS
from .interpolation import DEFAULT_WINDOW_KEY_FRAMES, INTERPOLATION_FACTOR, PASSES_PER_FACTOR, plan_interpolation
from .prediction import plan_rollout, window_samples
from .text_to_video import OUTPUT_TYPES, VideoLDMPipeline
from .upsample import DEFAULT_NOISE_LEVEL, DEFAULT_UPSAMPLER_STEPS

UPSCALE_FACTORS = (1, 4)
FPS_MULTIPLIERS = (1, *sorted(PASSES_PER_FACTOR))
# The intermediate stages keep_stages reports, in cascade order.
KEY_FRAMES, INTERPOLATED = "key_frames", "interpolated"

StageCallback = Callable[[str, torch.Tensor], Any]


@dataclass(frozen=True)
class CascadeSteps:
    """Denoising steps (scheduler steps, as counted by ``callback_on_step_end``) each stage will run."""

    key_frames: int
    interpolation: int
    upsampling: int

    @property
    def total(self) -> int:
        """All stages together."""
        return self.key_frames + self.interpolation + self.upsampling


def count_cascade_steps(
    num_frames: int,
    *,
    fps_multiplier: int = 1,
    upscale: int = 1,
    num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    upsampler_steps: int = DEFAULT_UPSAMPLER_STEPS,
    upsampling_segments: int = 1,
    window_frames: int | None = None,
    context_frames: int = 2,
    num_given: int = 0,
    window_candidates: int = 1,
) -> CascadeSteps:
    """The :class:`CascadeSteps` of one cascade run: ``num_frames`` new key frames in windows of ``window_frames``
    (None: one window) after ``num_given`` given frames, each window with >= 2 context frames sampled
    ``window_candidates`` times (:func:`~videoldm.pipelines.prediction.select_continuation`), then the
    interpolation windows and the upsampler's steps in each of its ``upsampling_segments`` sampler runs
    (:meth:`~videoldm.pipelines.VideoUpsamplerPipeline.plan_segments`).

    Counts one scheduler step per requested step (multistep and DDIM schedulers; Heun-type ones take more).
    """
    if window_frames is None:
        key_windows = 1
    else:
        plan = plan_rollout(num_frames, window_frames, context_frames, num_given)
        key_windows = sum(window_samples(window, window_candidates) for window in plan)
    interpolation_windows, keys = 0, num_frames + num_given
    for _ in range(PASSES_PER_FACTOR.get(fps_multiplier, 0)):
        interpolation_windows += len(plan_interpolation(keys, DEFAULT_WINDOW_KEY_FRAMES))
        keys = INTERPOLATION_FACTOR * (keys - 1) + 1
    return CascadeSteps(
        key_frames=key_windows * num_inference_steps,
        interpolation=interpolation_windows * num_inference_steps,
        upsampling=upsampler_steps * upsampling_segments if upscale > 1 else 0,
    )


@dataclass
class CascadePipelineOutput(BaseOutput):
    """``frames`` as in :class:`~videoldm.pipelines.VideoLDMPipelineOutput`; ``stages``: the kept intermediate
    videos by stage name (pixels ``(B, T, C, H, W)`` in [-1, 1]), empty unless ``keep_stages``."""

    frames: Any
    stages: dict[str, torch.Tensor]


class CascadePipeline(VideoLDMPipeline):
    """A :class:`VideoLDMPipeline` whose call runs the whole cascade; same components, same directory format.

    ``CascadePipeline.from_pretrained(directory)`` loads any Video LDM pipeline directory (the embedded
    model holds every stage); stages the options ask for need their components (``interpolator`` for
    ``fps_multiplier`` 4 / 16, ``upsampler`` for ``upscale`` 4).
    """

    def check_cascade_options(self, fps_multiplier: int, upscale: int) -> None:
        """Raise ValueError if an option is unknown or its stage's model is missing."""
        if fps_multiplier not in FPS_MULTIPLIERS:
            raise ValueError(f"fps_multiplier must be one of {FPS_MULTIPLIERS}, got {fps_multiplier}")
        if upscale not in UPSCALE_FACTORS:
            raise ValueError(f"upscale must be one of {UPSCALE_FACTORS}, got {upscale}")
        if fps_multiplier > 1:
            self.interpolation_unet()  # raises a ValueError naming the missing component
        if upscale > 1:
            self.upsampler_pipeline()

    @torch.no_grad()
    def cascade_frames(
        self,
        *,
        fps_multiplier: int = 1,
        upscale: int = 1,
        upsampler_steps: int = DEFAULT_UPSAMPLER_STEPS,
        noise_level: int = DEFAULT_NOISE_LEVEL,
        on_stage: StageCallback | None = None,
        **key_frame_options: Any,
    ) -> Iterator[torch.Tensor]:
        """Yield the cascade's final frames ``(B, k, C, H, W)`` in [-1, 1] piece by piece.

        ``key_frame_options`` go to :meth:`generate_frames` (prompt, labels, num_frames, steps,
        guidance, generator, decoder, ...); interpolation uses the same conditioning, steps,
        generator and callback, with its own context guidance default. Without interpolation and
        upsampling the frames stream as they are made. ``on_stage(name, pixels)`` receives each
        intermediate video before the next stage runs: ``"key_frames"`` (when a later stage runs)
        and ``"interpolated"`` (when upsampling follows interpolation).
        """
        self.check_cascade_options(fps_multiplier, upscale)
        decoder = key_frame_options.get("decoder", "video")
        if fps_multiplier == 1 and upscale == 1:
            yield from self.generate_frames(**key_frame_options, output_type="pt")
            return
        latents = torch.cat(list(self.generate_frames(**key_frame_options, output_type="latent")), dim=1)
        if on_stage is not None:
            on_stage(KEY_FRAMES, torch.cat(list(self.decode_frames(latents, decoder=decoder)), dim=1))
        if fps_multiplier > 1:
            options = key_frame_options
            latents = self.interpolate(
                latents=latents, factor=fps_multiplier, prompt=options.get("prompt"), labels=options.get("labels"),
                negative_prompt=options.get("negative_prompt"),
                num_inference_steps=options.get("num_inference_steps"),
                guidance_scale=options.get("guidance_scale", 1.0), generator=options.get("generator"),
                callback_on_step_end=options.get("callback_on_step_end"), output_type="latent",
            ).frames
        pieces = self.decode_frames(latents, decoder=decoder)
        if upscale == 1:
            yield from pieces
            return
        pixels = torch.cat(list(pieces), dim=1)
        if on_stage is not None and fps_multiplier > 1:
            on_stage(INTERPOLATED, pixels)
        # a video whose sampler state would not fit is upsampled in segments, yielded as they are made
        yield from self.upsampler_pipeline().upsample_frames(
            pixels, noise_level=noise_level, num_inference_steps=upsampler_steps,
            generator=key_frame_options.get("generator"),
            callback_on_step_end=key_frame_options.get("callback_on_step_end"),
        )

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *,
        fps_multiplier: int = 1,
        upscale: int = 1,
        upsampler_steps: int = DEFAULT_UPSAMPLER_STEPS,
        noise_level: int = DEFAULT_NOISE_LEVEL,
        keep_stages: bool = False,
        output_type: str = "pil",
        return_dict: bool = True,
        **key_frame_options: Any,
    ) -> CascadePipelineOutput | tuple:
        """Run the cascade: ``num_frames`` key frames (a prediction model makes long videos window by
        window), ``fps_multiplier`` 1 / 4 / 16 (``fps_multiplier * (num_frames - 1) + 1`` frames), decoding,
        ``upscale`` 1 / 4 (frames ``upscale`` times larger, ``upsampler_steps`` steps, ``noise_level``).

        Other keywords are :meth:`~videoldm.pipelines.VideoLDMPipeline.__call__`'s. ``keep_stages``
        returns the intermediate videos in ``stages`` (see :meth:`cascade_frames`).
        """
        if output_type not in OUTPUT_TYPES or output_type == "latent":
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES[:-1]}, got {output_type!r}")
        stages: dict[str, torch.Tensor] = {}
        pieces = self.cascade_frames(
            prompt=prompt, fps_multiplier=fps_multiplier, upscale=upscale, upsampler_steps=upsampler_steps,
            noise_level=noise_level, on_stage=stages.__setitem__ if keep_stages else None, **key_frame_options,
        )
        frames = self._output(torch.cat(list(pieces), dim=1), output_type, True).frames
        return CascadePipelineOutput(frames=frames, stages=stages) if return_dict else (frames, stages)
