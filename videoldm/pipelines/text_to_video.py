"""VideoLDMPipeline: sample (key-frame) videos from an inflated image LDM."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from einops import rearrange

from ..models.autoencoder import TemporalDecoder
from ..models.conditioning import LabelEncoder
from ..models.unet import VideoUNet
from .sampling import denoise

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class VideoLDMPipelineOutput(BaseOutput):
    """``frames``: PIL lists per video, ``np`` ``(B, T, H, W, C)`` / ``pt`` ``(B, T, C, H, W)`` in [0, 1], or latents."""

    frames: Any


def decode_latents(vae: torch.nn.Module, latents: torch.Tensor, chunk_size: int = 8, decoder: str = "video") -> torch.Tensor:
    """Decode scaled latents ``(B, T, c, h, w)`` to pixels ``(B, T, C, H, W)`` in [-1, 1], ``chunk_size`` frames at a time.

    A :class:`~videoldm.models.autoencoder.TemporalDecoder` decodes with its temporal layers
    (``decoder="video"``) or as the image decoder (``decoder="image"``); a plain ``AutoencoderKL``
    always decodes frame by frame, unscaling with ``z / scaling_factor + shift_factor`` and, like
    diffusers' Stable Diffusion pipelines, in float32 when it is float16 with ``force_upcast``
    (its weights are float16 again afterwards; pixels come back in the VAE's dtype).
    """
    if decoder not in ("video", "image"):
        raise ValueError(f"decoder must be 'video' or 'image', got {decoder!r}")
    if isinstance(vae, AutoencoderKL):
        return _decode_image_vae(vae, latents, chunk_size)
    overlap = min(chunk_size // 4, max(chunk_size - 1, 0))
    return vae.decode(latents, chunk_size=chunk_size, overlap=overlap, temporal=decoder == "video").clamp(-1, 1)


def _decode_image_vae(vae: AutoencoderKL, latents: torch.Tensor, chunk_size: int) -> torch.Tensor:
    dtype = vae.dtype
    # float16 AutoencoderKL decoders can overflow to NaN; force_upcast marks those diffusers upcasts.
    upcast = dtype == torch.float16 and vae.config.force_upcast
    decode_dtype = torch.float32 if upcast else dtype
    frames = rearrange(latents.to(decode_dtype), "b t c h w -> (b t) c h w")
    frames = frames / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
    if upcast:
        # nn.Module.to: ModelMixin.to logs a float32-modules warning on every dtype cast.
        torch.nn.Module.to(vae, decode_dtype)
    try:
        decoded = torch.cat([vae.decode(chunk).sample for chunk in frames.split(chunk_size)])
    finally:
        if upcast:
            torch.nn.Module.to(vae, dtype)
    return rearrange(decoded.to(dtype), "(b t) c h w -> b t c h w", b=latents.shape[0]).clamp(-1, 1)


def encode_prompts(text_encoder: torch.nn.Module, tokenizer: Any, prompts: list[str], device: torch.device | str) -> torch.Tensor:
    """Prompts -> the text encoder's last hidden states ``(B, L, D)``, padded to the tokenizer's maximum length
    (as Stable Diffusion's pipelines do, so training and sampling see the same sequence)."""
    tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    return text_encoder(tokens.input_ids.to(device))[0]


class VideoLDMPipeline(DiffusionPipeline):
    """Text-, label- or unconditional video generation with a :class:`VideoUNet`.

    Components: ``unet`` (VideoUNet), ``vae`` (AutoencoderKL or TemporalDecoder), ``scheduler`` (any
    diffusers scheduler), and optionally ``text_encoder`` + ``tokenizer`` (prompts) or
    ``label_encoder`` (class labels).
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
    ) -> None:
        super().__init__()
        self.register_modules(
            unet=unet,
            vae=vae,
            scheduler=scheduler,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            label_encoder=label_encoder,
        )
        self.video_processor = VideoProcessor(do_resize=False, vae_scale_factor=self.vae_scale_factor)

    @property
    def vae_scale_factor(self) -> int:
        """Pixel size of one latent cell."""
        image_vae = self.vae.vae if isinstance(self.vae, TemporalDecoder) else self.vae
        return 2 ** (len(image_vae.config.block_out_channels) - 1)

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
        """Return (conditional, unconditional) ``encoder_hidden_states`` ``(B, L, D)`` (or ``None``).

        The unconditional states are ``None`` when both guidance branches would be the same (no
        labels, all-null labels, or each prompt equal to its negative prompt), so sampling runs one
        UNet pass per step instead of two. Conditioning the model cannot use is a ``ValueError``.
        """
        if prompt is not None and labels is not None:
            raise ValueError("give a prompt or labels, not both")
        kind = "text-conditional" if self.text_encoder is not None else (
            "label-conditional" if self.label_encoder is not None else "unconditional")
        if self.text_encoder is None and (prompt is not None or negative_prompt is not None):
            if prompt is None:
                advice = "it takes no negative prompt"
            else:
                advice = "pass labels instead of a prompt" if self.label_encoder is not None else "it takes no prompt"
            raise ValueError(f"this pipeline is {kind}: it has no text encoder; {advice}")
        if self.label_encoder is None and labels is not None:
            advice = "pass a prompt instead of labels" if self.text_encoder is not None else "it takes no labels"
            raise ValueError(f"this pipeline is {kind}: it has no label encoder; {advice}")
        if self.text_encoder is not None and labels is None:
            prompts = [prompt or ""] * batch if not isinstance(prompt, list) else prompt
            negatives = [negative_prompt or ""] * batch if not isinstance(negative_prompt, list) else negative_prompt
            if len(prompts) != batch or len(negatives) != batch:
                raise ValueError(f"expected {batch} prompts, got {len(prompts)} and {len(negatives)} negative")
            conditional = self.encode_prompt(prompts)
            return conditional, None if negatives == prompts else self.encode_prompt(negatives)
        if self.label_encoder is not None:
            device = self._execution_device
            null = self.label_encoder.null_labels(batch, device)
            if labels is None:
                labels = null
            labels = torch.as_tensor(labels, device=device).long()
            labels = labels.reshape(batch, -1) if labels.numel() == batch or labels.ndim == 2 else labels
            if labels.shape[0] != batch:
                raise ValueError(f"expected labels for {batch} videos, got shape {tuple(labels.shape)}")
            conditional = self.label_encoder(labels)
            # -1 is the null label: all-null labels are the unconditional branch itself.
            return conditional, None if bool((labels < 0).all()) else self.label_encoder(null)
        return None, None

    # ------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *,
        labels: torch.Tensor | list | None = None,
        negative_prompt: str | list[str] | None = None,
        num_videos: int = 1,
        num_frames: int = 16,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        image_only: bool = False,
        decode_chunk_size: int = 8,
        decoder: str = "video",
        output_type: str = "pil",
        callback_on_step_end: Callable[[int, torch.Tensor, torch.Tensor], Any] | None = None,
        return_dict: bool = True,
    ) -> VideoLDMPipelineOutput | tuple:
        """Generate ``num_videos`` videos of ``num_frames`` frames.

        ``image_only=True`` forces every alpha to 1: the image LDM sampled frame by frame, the
        paper's baseline. ``latents`` (optional) is the initial unit-variance noise ``(B, T, c, h, w)``
        (the scheduler's ``init_noise_sigma`` is applied after its timesteps are set).
        ``frames`` follows diffusers' ``output_type`` conventions. ``callback_on_step_end`` runs
        after every scheduler step (``len(scheduler.timesteps)`` times: more than
        ``num_inference_steps`` for Heun, KDPM2 and PNDM). Non-finite sampled latents are a
        ``ValueError``.
        """
        if not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if num_frames < 1 or num_inference_steps < 1:
            raise ValueError(f"num_frames and num_inference_steps must be >= 1, got {num_frames}, {num_inference_steps}")
        batch = len(prompt) if isinstance(prompt, list) else num_videos
        spatial = self.unet.spatial_config
        height = height or spatial.sample_size * self.vae_scale_factor
        width = width or spatial.sample_size * self.vae_scale_factor
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ValueError(f"height and width must be multiples of {self.vae_scale_factor}, got {height}x{width}")
        device = self._execution_device

        conditional_states, unconditional_states = self.encode_conditions(batch, prompt, negative_prompt, labels)
        indicator = torch.full((batch, num_frames), image_only, dtype=torch.bool, device=device)
        conditional = {"encoder_hidden_states": conditional_states, "image_only_indicator": indicator}
        unconditional = None
        if unconditional_states is not None:
            unconditional = {"encoder_hidden_states": unconditional_states, "image_only_indicator": indicator}

        shape = (
            batch,
            num_frames,
            spatial.in_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")

        latents = denoise(
            self.unet,
            self.scheduler,
            latents.to(device),
            conditional,
            unconditional,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            generator=generator,
            progress_bar=self.progress_bar,
            callback_on_step_end=callback_on_step_end,
        )
        if output_type == "latent":
            frames = latents
        else:
            pixels = decode_latents(self.vae, latents, decode_chunk_size, decoder)
            frames = self.video_processor.postprocess_video(rearrange(pixels, "b t c h w -> b c t h w"), output_type)
        self.maybe_free_model_hooks()
        return VideoLDMPipelineOutput(frames=frames) if return_dict else (frames,)
