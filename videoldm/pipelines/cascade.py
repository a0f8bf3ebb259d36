"""The full Video LDM stack in one call (Sec. 3): key frames -> prediction for length -> interpolation
x4 / x16 -> decoding with the temporal decoder -> video upsampling x4.

Each stage is a pipeline of its own (:class:`~videoldm.pipelines.video.VideoLDMPipeline`,
:class:`~videoldm.pipelines.interpolation.VideoInterpolationPipeline`,
:class:`~videoldm.pipelines.upsample.VideoUpsamplerPipeline`). :class:`CascadePipeline` holds every
stage's components, so one saved directory holds the whole stack; it makes the stage pipelines from
them (sharing every module, as diffusers' ``from_pipe`` shares them) and composes them: it chains
the stages, keeps intermediate results on request, and counts the denoising steps of every stage up
front so one progress display can span them all.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Iterator

import torch
from diffusers import DDPMScheduler, DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from ..defaults import (
    DEFAULT_FPS,
    DEFAULT_INTERPOLATION_CONTEXT_GUIDANCE,
    DEFAULT_NOISE_LEVEL,
    DEFAULT_NUM_INFERENCE_STEPS,
    DEFAULT_UPSAMPLER_STEPS,
    FPS_MULTIPLIERS,
    OUTPUT_TYPES,
    UPSCALE_FACTORS,
)
from ..models.conditioning import LabelEncoder
from ..models.unet import TemporalWeights, VideoUNet
from ..models.upsampler import VideoUpsampler
from .base import LatentVideoPipeline, SamplingOptions, check_output_type, check_pipeline_defaults
from .interpolation import VideoInterpolationPipeline
from .planning import INTERPOLATED, KEY_FRAMES
from .sampling import options_from
from .upsample import VideoUpsamplerPipeline
from .video import VideoLDMPipeline

StageCallback = Callable[[str, torch.Tensor], Any]


@dataclass
class CascadePipelineOutput(BaseOutput):
    """``frames`` as in :class:`~videoldm.pipelines.base.VideoLDMPipelineOutput`; ``stages``: the kept intermediate
    videos by stage name (pixels ``(B, T, C, H, W)`` in [-1, 1]), empty unless ``keep_stages``."""

    frames: Any
    stages: dict[str, torch.Tensor]


class CascadePipeline(DiffusionPipeline):
    """Every stage of a Video LDM in one pipeline directory, composed into one call.

    Components: the key-frame model's (``unet``, ``vae``, ``scheduler``, optional ``text_encoder`` +
    ``tokenizer`` or ``label_encoder``, as :class:`~videoldm.pipelines.video.VideoLDMPipeline`), the
    interpolation model's temporal weights ``interpolator``
    (:class:`~videoldm.models.unet.TemporalWeights`: they run on ``unet``'s spatial UNet), and the
    video upsampler: ``upsampler`` (:class:`~videoldm.models.upsampler.VideoUpsampler`, pixel space),
    ``upsampler_scheduler`` (its sampler) and ``low_res_scheduler`` (its noise augmentation).
    ``CascadePipeline.from_pretrained(directory)`` loads any Video LDM pipeline directory (one saved
    by the earlier all-in-one ``VideoLDMPipeline`` too); stages the options ask for need their
    components (``interpolator`` for ``fps_multiplier`` 4 / 16, ``upsampler`` for ``upscale`` 4).
    """

    model_cpu_offload_seq = "text_encoder->label_encoder->unet->vae->upsampler"
    _optional_components = ["text_encoder", "tokenizer", "label_encoder", "interpolator", "upsampler",
                            "upsampler_scheduler", "low_res_scheduler"]

    def __init__(
        self,
        unet: VideoUNet,
        vae: torch.nn.Module,
        scheduler: SchedulerMixin,
        text_encoder: torch.nn.Module | None = None,
        tokenizer: Any | None = None,
        label_encoder: LabelEncoder | None = None,
        interpolator: TemporalWeights | None = None,
        upsampler: VideoUpsampler | None = None,
        upsampler_scheduler: SchedulerMixin | None = None,
        low_res_scheduler: DDPMScheduler | None = None,
        default_num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
        default_fps: float = DEFAULT_FPS,
        default_noise_correlation: float = 0.0,
    ) -> None:
        super().__init__()
        check_pipeline_defaults(default_num_inference_steps, default_fps, default_noise_correlation)
        self.register_modules(unet=unet, vae=vae, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer,
                              label_encoder=label_encoder, interpolator=interpolator, upsampler=upsampler,
                              upsampler_scheduler=upsampler_scheduler, low_res_scheduler=low_res_scheduler)
        self.register_to_config(default_num_inference_steps=default_num_inference_steps, default_fps=default_fps,
                                default_noise_correlation=default_noise_correlation)

    # ------------------------------------------------------------------------- the stage pipelines
    def _stage(self, pipe: DiffusionPipeline) -> DiffusionPipeline:
        """``pipe`` with this pipeline's progress-bar settings."""
        pipe.set_progress_bar_config(**getattr(self, "_progress_bar_config", {}))
        return pipe

    def _latent_stage(self, pipeline_class: type[LatentVideoPipeline], unet: VideoUNet) -> LatentVideoPipeline:
        return self._stage(pipeline_class(
            unet=unet, vae=self.vae, scheduler=self.scheduler, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
            label_encoder=self.label_encoder, default_num_inference_steps=self.config.default_num_inference_steps,
            default_fps=self.config.default_fps, default_noise_correlation=self.config.default_noise_correlation))

    def video_pipeline(self) -> VideoLDMPipeline:
        """The key-frame / rollout stage: a :class:`VideoLDMPipeline` on this pipeline's modules."""
        return self._latent_stage(VideoLDMPipeline, self.unet)

    def interpolation_pipeline(self) -> VideoInterpolationPipeline:
        """The interpolation stage: ``unet``'s spatial UNet with the ``interpolator``'s temporal weights (shared tensors)."""
        if self.interpolator is None:
            raise ValueError("this pipeline has no interpolation model (component 'interpolator'); "
                             "train one with the 'interpolation' stage (configs/digits_interpolation.yaml)")
        return self._latent_stage(VideoInterpolationPipeline, self.unet.with_temporal_weights(self.interpolator))

    def upsampler_pipeline(self) -> VideoUpsamplerPipeline:
        """The video upsampler stage as a :class:`VideoUpsamplerPipeline` (same modules)."""
        if self.upsampler is None or self.upsampler_scheduler is None or self.low_res_scheduler is None:
            raise ValueError("this pipeline has no video upsampler (components 'upsampler', 'upsampler_scheduler', "
                             "'low_res_scheduler'); train one with the 'upsampler' stage (configs/digits_upsampler.yaml)")
        return self._stage(VideoUpsamplerPipeline(upsampler=self.upsampler, scheduler=self.upsampler_scheduler,
                                                  low_res_scheduler=self.low_res_scheduler))

    def check_cascade_options(self, fps_multiplier: int, upscale: int) -> None:
        """Raise ValueError if an option is unknown or its stage's model is missing."""
        if fps_multiplier not in FPS_MULTIPLIERS:
            raise ValueError(f"fps_multiplier must be one of {FPS_MULTIPLIERS}, got {fps_multiplier}")
        if upscale not in UPSCALE_FACTORS:
            raise ValueError(f"upscale must be one of {UPSCALE_FACTORS}, got {upscale}")
        if fps_multiplier > 1:
            self.interpolation_pipeline()  # raises a ValueError naming the missing component
        if upscale > 1:
            self.upsampler_pipeline()

    # ------------------------------------------------------------------------- the cascade
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

        ``key_frame_options`` go to :meth:`VideoLDMPipeline.generate_frames` (its keywords and
        :class:`~videoldm.pipelines.base.SamplingOptions`' fields); interpolation uses the same
        conditioning, steps, generator and callback, with its own context guidance default. Without
        interpolation and upsampling the frames stream as they are made. ``on_stage(name, pixels)``
        receives each intermediate video before the next stage runs: ``"key_frames"`` (when a later
        stage runs) and ``"interpolated"`` (when upsampling follows interpolation).
        """
        self.check_cascade_options(fps_multiplier, upscale)
        video = self.video_pipeline()
        if fps_multiplier == 1 and upscale == 1:
            yield from video.generate_frames(**key_frame_options, output_type="pt")
            return
        sampling_fields = {name: key_frame_options.pop(name) for name in SAMPLING_FIELDS if name in key_frame_options}
        sampling = options_from(SamplingOptions, key_frame_options.pop("sampling", None), sampling_fields)
        latents = torch.cat(list(video.generate_frames(**key_frame_options, sampling=sampling, output_type="latent")), dim=1)
        if on_stage is not None:
            on_stage(KEY_FRAMES, torch.cat(list(video.decode_frames(latents, decoder=sampling.decoder)), dim=1))
        if fps_multiplier > 1:
            interpolation = replace(sampling, context_guidance_scale=DEFAULT_INTERPOLATION_CONTEXT_GUIDANCE,
                                    image_only=False)
            latents = self.interpolation_pipeline()(latents=latents, factor=fps_multiplier, sampling=interpolation,
                                                    output_type="latent").frames
        pieces = video.decode_frames(latents, decoder=sampling.decoder)
        if upscale == 1:
            yield from pieces
            return
        pixels = torch.cat(list(pieces), dim=1)
        if on_stage is not None and fps_multiplier > 1:
            on_stage(INTERPOLATED, pixels)
        # a video whose sampler state would not fit is upsampled in segments, yielded as they are made
        yield from self.upsampler_pipeline().upsample_frames(
            pixels, noise_level=noise_level, num_inference_steps=upsampler_steps, generator=sampling.generator,
            callback_on_step_end=sampling.callback_on_step_end,
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

        Other keywords are :meth:`~videoldm.pipelines.video.VideoLDMPipeline.__call__`'s. ``keep_stages``
        returns the intermediate videos in ``stages`` (see :meth:`cascade_frames`).
        """
        check_output_type(output_type, OUTPUT_TYPES[:-1])
        if prompt is not None:
            key_frame_options["prompt"] = prompt
        stages: dict[str, torch.Tensor] = {}
        pieces = self.cascade_frames(
            fps_multiplier=fps_multiplier, upscale=upscale, upsampler_steps=upsampler_steps,
            noise_level=noise_level, on_stage=stages.__setitem__ if keep_stages else None, **key_frame_options,
        )
        frames = self.video_pipeline().output(torch.cat(list(pieces), dim=1), output_type, True).frames
        return CascadePipelineOutput(frames=frames, stages=stages) if return_dict else (frames, stages)


SAMPLING_FIELDS = tuple(field.name for field in fields(SamplingOptions))
