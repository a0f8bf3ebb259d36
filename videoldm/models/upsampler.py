"""VideoUpsampler: the Video LDM's diffusion upsampler (Sec. 3.4), made video-aware with temporal layers.

A diffusion model whose UNet input is the noisy high-resolution sample concatenated, channel-wise,
with the low-resolution video resized to the sample's size. During training and sampling the
low-resolution video is *noise-augmented*: noised to a level ``noise_level`` of the
``low_res_scheduler`` (a :class:`~diffusers.DDPMScheduler`), and that level is given to the UNet
as its class label (``num_class_embeds > max_noise_level``), exactly as Stable Diffusion's x4
upscaler does; the augmentation makes the upsampler robust to the artefacts of the stages before
it. The UNet is a :class:`~videoldm.models.unet.VideoUNet` (temporal layers after the spatial
ones, ``alpha`` blending, frozen spatial weights when fine-tuned on video), so with every frame
image-only it *is* the per-frame image upsampler.

Two spaces, one model: in pixel space (the embedded digits model: 32x32 -> 128x128 grey frames)
the sample is pixels and the low-resolution video is resized ``scale_factor`` times with bicubic
interpolation inside :meth:`VideoUpsampler.forward`; in latent space (Stable Diffusion's x4
upscaler, :meth:`VideoUpsampler.from_image_unet` on its UNet) the sample is an autoencoder latent
with the low-resolution pixels' own size, so nothing is resized.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# ModelMixin is looked up in this module by name when a pipeline loads a VideoUpsampler component
# (diffusers checks `getattr(<the component's module>, "ModelMixin")`), so it must be importable here.
from diffusers import DDPMScheduler, ModelMixin  # noqa: F401
from diffusers.configuration_utils import register_to_config
from einops import rearrange

from ..defaults import DEFAULT_MAX_NOISE_LEVEL
from .unet import VideoUNet, VideoUNetOutput, takes_temporal_options


def resize_frames(video: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of ``(B, T, C, h, w)`` to ``(B, T, C, *size)`` (unchanged when already that size)."""
    if tuple(video.shape[-2:]) == tuple(size):
        return video
    frames = rearrange(video, "b t c h w -> (b t) c h w")
    resized = F.interpolate(frames, size=size, mode="bicubic", align_corners=False)
    return rearrange(resized, "(b t) c h w -> b t c h w", b=video.shape[0])


def downsample_frames(video: torch.Tensor, factor: int) -> torch.Tensor:
    """Area (box-filter) downsampling of ``(B, T, C, H, W)`` by ``factor``: how a low-resolution camera sees
    the frame, and how the embedded upsampler's training pairs are made from high-resolution videos."""
    frames = rearrange(video, "b t c h w -> (b t) c h w")
    return rearrange(F.avg_pool2d(frames, factor), "(b t) c h w -> b t c h w", b=video.shape[0])


def noise_augment(
    low_res_scheduler: DDPMScheduler, low_res_video: torch.Tensor, noise_level: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Noise ``low_res_video`` ``(B, T, C, h, w)`` to each video's ``noise_level`` ``(B,)`` of ``low_res_scheduler``.

    ``x_l = sqrt(abar_l) x + sqrt(1 - abar_l) noise``; level 0 is (almost) the clean video. ``noise``
    has the video's shape.
    """
    levels = noise_level.to(low_res_video.device).long()
    # DDPMScheduler.add_noise broadcasts one level per leading index; frames share their video's level.
    per_frame = levels.repeat_interleave(low_res_video.shape[1])
    noised = low_res_scheduler.add_noise(low_res_video.flatten(0, 1), noise.flatten(0, 1), per_frame)
    return noised.unflatten(0, low_res_video.shape[:2])


class VideoUpsampler(VideoUNet):
    """A :class:`VideoUNet` whose input is ``[noisy sample, low-resolution video]`` and whose class label is ``noise_level``.

    ``unet_config`` is the image UNet's: its ``in_channels`` is the sample's channels plus
    ``low_res_channels``, and it needs ``num_class_embeds > max_noise_level`` (the noise-level
    embedding). ``scale_factor`` is the upsampling factor in pixels (4); the pipeline reads it.
    Temporal options as in :class:`VideoUNet` (no context conditioning).

    ``bicubic_residual_scale`` (pixel space only): when set, the diffused sample is not the
    high-resolution video but ``scale * (video - bicubic(low-res video))``, the detail bicubic
    interpolation misses (as SRDiff does); :meth:`sample_from_video` and :meth:`video_from_sample`
    convert. Where bicubic is already close (smooth content), the model then only has to add
    detail, and an untrained or unsure model falls back to bicubic instead of to noise.
    """

    # VideoUNet.__init__ registers its own options too; an upsampler has no context conditioning.
    ignore_for_config = ["context_channels", "frame_rate_regimes"]

    @register_to_config
    @takes_temporal_options
    def __init__(
        self,
        unet_config: dict,
        low_res_channels: int = 3,
        max_noise_level: int = DEFAULT_MAX_NOISE_LEVEL,
        scale_factor: int = 4,
        bicubic_residual_scale: float | None = None,
        **temporal_options: Any,
    ) -> None:
        in_channels, num_levels = unet_config["in_channels"], unet_config.get("num_class_embeds")
        if not 0 < low_res_channels < in_channels:
            raise ValueError(f"low_res_channels ({low_res_channels}) must be fewer than the UNet's in_channels ({in_channels})")
        if num_levels is None or num_levels <= max_noise_level:
            raise ValueError(f"the UNet needs num_class_embeds > max_noise_level ({max_noise_level}) to embed the "
                             f"noise level; it has {num_levels}")
        if scale_factor < 1:
            raise ValueError(f"scale_factor must be >= 1, got {scale_factor}")
        if bicubic_residual_scale is not None and (bicubic_residual_scale <= 0 or 2 * low_res_channels != in_channels):
            raise ValueError("bicubic_residual_scale must be positive and needs a pixel-space upsampler (as many sample "
                             f"as low-resolution channels); got {bicubic_residual_scale} with {in_channels} UNet input "
                             f"channels, {low_res_channels} low-resolution")
        context = sorted(name for name in self.ignore_for_config if temporal_options.get(name))
        if context:
            raise ValueError(f"an upsampler has no context conditioning; got {context}")
        super().__init__(unet_config, **temporal_options)

    @property
    def sample_channels(self) -> int:
        """Channels of the high-resolution sample (pixels or latents) the model denoises."""
        return self.unet.config.in_channels - self.config.low_res_channels

    def sample_from_video(self, high_res_video: torch.Tensor, low_res_video: torch.Tensor) -> torch.Tensor:
        """The diffused sample ``(B, T, C, H, W)`` of a high-resolution video given its clean low-resolution one
        ``(B, T, C, h, w)``: the video itself, or its scaled bicubic residual (``bicubic_residual_scale``)."""
        scale = self.config.bicubic_residual_scale
        if scale is None:
            return high_res_video
        return scale * (high_res_video - resize_frames(low_res_video.to(high_res_video.dtype), tuple(high_res_video.shape[-2:])))

    def video_from_sample(self, sample: torch.Tensor, low_res_video: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`sample_from_video`: the high-resolution video of a denoised ``sample``."""
        scale = self.config.bicubic_residual_scale
        if scale is None:
            return sample
        return sample / scale + resize_frames(low_res_video.to(sample.dtype), tuple(sample.shape[-2:]))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor | None = None,
        *,
        low_res_video: torch.Tensor,
        noise_level: torch.Tensor,
        image_only_indicator: torch.Tensor | None = None,
        frame_positions: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> VideoUNetOutput | tuple[torch.Tensor]:
        """Predict the noise (or v) of a noisy high-resolution video.

        Args:
            sample: ``(B, T, C, H, W)`` noisy high-resolution sample.
            timestep: scalar, ``(B,)`` or ``(B, T)``.
            encoder_hidden_states: per-video text conditioning ``(B, L, D)`` (latent upsamplers with
                cross-attention; ``None`` for the digits upsampler).
            low_res_video: ``(B, T, low_res_channels, h, w)``, already noise-augmented to
                ``noise_level`` (:func:`noise_augment`); resized to ``H x W`` here (bicubic).
            noise_level: ``(B,)`` long in ``0..max_noise_level``.
            image_only_indicator: ``(B, T)`` bool; all true is the per-frame image upsampler.
        """
        channels = self.config.low_res_channels
        if low_res_video.ndim != 5 or low_res_video.shape[:3] != (*sample.shape[:2], channels):
            raise ValueError(f"low_res_video must be ({sample.shape[0]}, {sample.shape[1]}, {channels}, h, w), "
                             f"got shape {tuple(low_res_video.shape)}")
        if sample.shape[2] != self.sample_channels:
            raise ValueError(f"sample must have {self.sample_channels} channels, got shape {tuple(sample.shape)}")
        levels = torch.as_tensor(noise_level, device=sample.device).long().reshape(-1).expand(sample.shape[0])
        if bool((levels < 0).any() or (levels > self.config.max_noise_level).any()):
            raise ValueError(f"noise_level must be in 0..{self.config.max_noise_level}, got {levels.tolist()}")
        low_res = resize_frames(low_res_video.to(sample.dtype), tuple(sample.shape[-2:]))
        return super().forward(
            torch.cat([sample, low_res], dim=2), timestep, encoder_hidden_states, class_labels=levels,
            image_only_indicator=image_only_indicator, frame_positions=frame_positions, return_dict=return_dict,
        )
