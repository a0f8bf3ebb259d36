"""What the latent video pipelines share: components, sampling options, encoding, conditioning, decoding, output.

:class:`~videoldm.pipelines.video.VideoLDMPipeline` (key frames and rollouts) and
:class:`~videoldm.pipelines.interpolation.VideoInterpolationPipeline` are both a VideoUNet on an
autoencoder's latents with a scheduler and optional text or label conditioning;
:class:`LatentVideoPipeline` holds those components and everything but the task itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from diffusers import DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.video_processor import VideoProcessor
from einops import rearrange
from PIL import Image

from ..data.io import frames_from_images
from ..defaults import DECODERS, DEFAULT_FPS, DEFAULT_NUM_INFERENCE_STEPS, OUTPUT_TYPES
from ..models.autoencoder import encode_video, image_vae_of, vae_scale_factor
from ..models.conditioning import LabelEncoder
from ..models.lora import load_temporal_lora
from ..models.unet import VideoUNet
from .conditioning import encode_conditions, encode_prompts
from .decoding import stream_decode
from .sampling import Generator, StepCallback, WindowSampler, initial_noise


@dataclass
class VideoLDMPipelineOutput(BaseOutput):
    """``frames``: PIL lists per video, ``np`` ``(B, T, H, W, C)`` / ``pt`` ``(B, T, C, H, W)`` in [0, 1], or latents."""

    frames: Any


@dataclass(frozen=True)
class SamplingOptions:
    """How a latent video pipeline samples, whatever its task: conditioning, guidance, sampler, decoding.

    ``prompt`` / ``negative_prompt`` (text models) or ``labels`` (label models: ``(B,)`` or ``(B, n)``,
    -1 the null label); ``guidance_scale`` over them, ``context_guidance_scale`` over the given
    frames (``f(no context) + s * (f(context) - f(no context))``); combined, a step costs up to three
    UNet evaluations (:mod:`videoldm.pipelines.sampling`). ``num_inference_steps`` None is the
    pipeline's ``default_num_inference_steps``. ``image_only=True`` forces every alpha to 1: the image
    LDM sampled frame by frame, the paper's baseline. ``decoder`` ``"video"`` (the temporal decoder,
    where the pipeline has one) or ``"image"``, ``decode_chunk_size`` frames at a time.
    ``noise_correlation`` in [0, 1): the share of each window's initial noise its frames have in common
    (:func:`~videoldm.pipelines.sampling.initial_noise`); None is the pipeline's
    ``default_noise_correlation`` (0, independent frames, unless its model_index.json names one).
    ``callback_on_step_end(step_index, timestep, latents)`` runs after every scheduler step
    (``len(scheduler.timesteps)`` times: more than ``num_inference_steps`` for Heun, KDPM2 and PNDM).
    """

    prompt: str | list[str] | None = None
    labels: torch.Tensor | list | None = None
    negative_prompt: str | list[str] | None = None
    num_inference_steps: int | None = None
    guidance_scale: float = 1.0
    context_guidance_scale: float = 1.0
    generator: Generator = None
    image_only: bool = False
    decode_chunk_size: int = 8
    decoder: str = "video"
    noise_correlation: float | None = None
    callback_on_step_end: StepCallback | None = None


def check_noise_correlation(correlation: float) -> None:
    """Raise ValueError unless ``correlation`` lies in [0, 1) (1 would give every frame the same noise)."""
    if not 0.0 <= correlation < 1.0:
        raise ValueError(f"noise_correlation must be in [0, 1), got {correlation}")


def check_sampling_options(options: SamplingOptions, num_inference_steps: int) -> None:
    """Raise ValueError for a non-finite guidance scale, an unknown decoder, fewer than one step or a noise
    correlation outside [0, 1)."""
    for name in ("guidance_scale", "context_guidance_scale"):
        value = getattr(options, name)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
    if options.decoder not in DECODERS:
        raise ValueError(f"decoder must be 'video' or 'image', got {options.decoder!r}")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    if options.noise_correlation is not None:
        check_noise_correlation(options.noise_correlation)


def check_pipeline_defaults(default_num_inference_steps: int, default_fps: float, default_noise_correlation: float) -> None:
    """Raise ValueError unless a pipeline's default step count is >= 1, its default frame rate a positive number
    and its default noise correlation in [0, 1)."""
    check_noise_correlation(default_noise_correlation)
    if default_num_inference_steps < 1:
        raise ValueError(f"default_num_inference_steps must be >= 1, got {default_num_inference_steps}")
    if not (math.isfinite(default_fps) and default_fps > 0):
        raise ValueError(f"default_fps must be a positive number, got {default_fps}")


class LatentVideoPipeline(DiffusionPipeline):
    """A :class:`VideoUNet` on an autoencoder's latents: the components and helpers its tasks share.

    Components: ``unet`` (VideoUNet), ``vae`` (AutoencoderKL or TemporalDecoder), ``scheduler`` (any
    diffusers scheduler), and optionally ``text_encoder`` + ``tokenizer`` (prompts) or
    ``label_encoder`` (class labels). ``default_num_inference_steps``, ``default_fps`` (the frame
    rate of its videos) and ``default_noise_correlation`` are saved in ``model_index.json``.
    """

    model_cpu_offload_seq = "text_encoder->label_encoder->unet->vae"
    _optional_components = ["text_encoder", "tokenizer", "label_encoder"]

    def __init__(
        self,
        unet: VideoUNet,
        vae: torch.nn.Module,
        scheduler: SchedulerMixin,
        text_encoder: torch.nn.Module | None = None,
        tokenizer: Any | None = None,
        label_encoder: LabelEncoder | None = None,
        default_num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
        default_fps: float = DEFAULT_FPS,
        default_noise_correlation: float = 0.0,
    ) -> None:
        super().__init__()
        check_pipeline_defaults(default_num_inference_steps, default_fps, default_noise_correlation)
        self.register_modules(unet=unet, vae=vae, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer,
                              label_encoder=label_encoder)
        # Saved in model_index.json, so a directory carries the step count its makers measured as enough
        # and the frame rate its frames were trained at.
        self.register_to_config(default_num_inference_steps=default_num_inference_steps, default_fps=default_fps,
                                default_noise_correlation=default_noise_correlation)
        self.video_processor = VideoProcessor(do_resize=False, vae_scale_factor=self.vae_scale_factor)

    def inference_steps(self, num_inference_steps: int | None) -> int:
        """``num_inference_steps``, or the pipeline's own ``default_num_inference_steps`` for None."""
        return self.config.default_num_inference_steps if num_inference_steps is None else num_inference_steps

    def initial_noise(self, shape: tuple[int, ...], options: SamplingOptions) -> torch.Tensor:
        """A window's initial noise ``shape`` ``(B, T, c, h, w)`` with ``options``' noise correlation (None: the
        pipeline's ``default_noise_correlation``), drawn from ``options.generator``."""
        correlation = options.noise_correlation
        if correlation is None:
            correlation = self.config.default_noise_correlation
        return initial_noise(shape, correlation, options.generator, self._execution_device, self.unet.dtype)

    @property
    def vae_scale_factor(self) -> int:
        """Pixel size of one latent cell."""
        return vae_scale_factor(self.vae)

    # ------------------------------------------------------------------------- conditioning
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> text-encoder hidden states ``(B, L, D)``."""
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("this pipeline has no text encoder; pass class labels or nothing instead of a prompt")
        return encode_prompts(self.text_encoder, self.tokenizer, prompts, self._execution_device)

    def encode_conditions(
        self,
        batch: int,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None,
        labels: torch.Tensor | list | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(conditional, unconditional) ``encoder_hidden_states`` ``(B, L, D)`` or None
        (:func:`~videoldm.pipelines.conditioning.encode_conditions` with this pipeline's encoders)."""
        return encode_conditions(batch, prompt, negative_prompt, labels, text_encoder=self.text_encoder,
                                 tokenizer=self.tokenizer, label_encoder=self.label_encoder,
                                 device=self._execution_device)

    def window_sampler(self, unet: VideoUNet, batch: int, options: SamplingOptions, num_inference_steps: int) -> WindowSampler:
        """The :class:`~videoldm.pipelines.sampling.WindowSampler` of ``options`` for ``batch`` videos with ``unet``."""
        conditional, unconditional = self.encode_conditions(batch, options.prompt, options.negative_prompt, options.labels)
        denoise_options = dict(num_inference_steps=num_inference_steps, generator=options.generator,
                               progress_bar=self.progress_bar, callback_on_step_end=options.callback_on_step_end)
        return WindowSampler(unet, self.scheduler, conditional, unconditional, options.image_only, options.guidance_scale,
                             options.context_guidance_scale, denoise_options)

    def load_temporal_lora(self, directory: str | Path, merge: bool = False) -> None:
        """Add the temporal-layer LoRA saved in ``directory`` (by a ``lora`` training run, or
        :func:`~videoldm.models.lora.save_temporal_lora`) to this pipeline's UNet, in place; ``merge`` folds it
        into the weights. The UNet is shared with the pipelines made from the same modules."""
        load_temporal_lora(self.unet, directory, merge=merge)

    # ------------------------------------------------------------------------- pixels <-> latents
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Pixels ``(B, T, C, H, W)`` in [-1, 1] -> scaled latents ``(B, T, c, h, w)`` (posterior mode)."""
        channels = image_vae_of(self.vae).config.in_channels
        if frames.ndim != 5 or frames.shape[2] != channels:
            raise ValueError(f"frames must be (B, T, {channels}, H, W) for this model, got shape {tuple(frames.shape)}")
        return encode_video(self.vae, frames.to(self._execution_device), sample=False)

    def as_pixel_frames(self, frames: Any) -> Any:
        """PIL image(s) -> pixel tensors in [-1, 1] with the model's channel count (:func:`frames_from_images`); tensors pass."""
        is_image = isinstance(frames, Image.Image)
        if is_image or (isinstance(frames, (list, tuple)) and frames and all(isinstance(f, Image.Image) for f in frames)):
            return frames_from_images(frames if is_image else list(frames), image_vae_of(self.vae).config.in_channels)
        return frames

    def decode_frames(self, latents: torch.Tensor, chunk_size: int = 8, decoder: str = "video") -> Iterator[torch.Tensor]:
        """Decode latents ``(B, T, c, h, w)`` piece by piece: yields pixels ``(B, k, C, H, W)`` in [-1, 1], memory bounded in ``T``.

        The pieces together equal :func:`~videoldm.pipelines.decoding.decode_latents` of the whole video
        (:func:`~videoldm.pipelines.decoding.stream_decode`).
        """
        return stream_decode(self.vae, latents.split(chunk_size, dim=1), chunk_size, decoder, device=self._execution_device)

    def output(self, frames: torch.Tensor, output_type: str, return_dict: bool) -> VideoLDMPipelineOutput | tuple:
        """Pixels ``(B, T, C, H, W)`` in [-1, 1] (or latents for ``"latent"``) in diffusers' ``output_type`` form."""
        if output_type != "latent":
            frames = self.video_processor.postprocess_video(rearrange(frames, "b t c h w -> b c t h w"), output_type)
        return VideoLDMPipelineOutput(frames=frames) if return_dict else (frames,)


def check_output_type(output_type: str, allowed: tuple[str, ...] = OUTPUT_TYPES) -> None:
    """Raise ValueError unless ``output_type`` is one of ``allowed``."""
    if output_type not in allowed:
        raise ValueError(f"output_type must be one of {allowed}, got {output_type!r}")
