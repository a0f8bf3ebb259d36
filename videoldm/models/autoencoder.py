"""TemporalDecoder: an image ``AutoencoderKL`` whose decoder is inflated with temporal layers (Sec. 3.2).

The paper fine-tunes only the decoder on video so that decoding latents frame by frame does not
flicker; the encoder stays the image encoder, so latents of the image LDM remain valid. The whole
``AutoencoderKL`` is kept as ``self.vae`` with its module tree and state-dict keys untouched
(``vae.<AutoencoderKL key>``); the temporal layers live in ``self.temporal`` and run through
forward hooks on the decoder's modules (:class:`~videoldm.models.temporal.TemporalHook` objects
that follow deep copies and pickle with the model; the frame context is set only while a window
is decoded, and gradient checkpointing recomputes with the context of its own forward):

* after every decoder ResNet block (mid block and up blocks): a :class:`TemporalConvBlock`;
* after the mid-block attention (``mid_attention``): a :class:`TemporalAttention`;
* after ``conv_out``: a residual :class:`TemporalOutputConv` on the pixels.

Each is blended with its spatial output by its own :class:`AlphaBlender`. Every temporal layer is
residual with a zero-initialised last convolution, so a fresh model decodes exactly like the image
decoder. Long videos are decoded in overlapping windows of frames (:meth:`TemporalDecoder.decode`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from diffusers import AutoencoderKL, ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from einops import rearrange
from torch import nn

from .configs import downsampling_factor
from .temporal import (
    BlendedTemporalLayer,
    FrameContext,
    InflatedModelMixin,
    TemporalAttention,
    TemporalConvBlock,
    TemporalInflation,
    conv_video,
    same_padding,
    temporal_key,
)

OUTPUT_LAYER_PATH = "decoder.conv_out"


def _public_config(config: dict) -> dict:
    return {key: value for key, value in dict(config).items() if not key.startswith("_")}


def _move(model: ModelMixin, device: torch.device, dtype: torch.dtype) -> ModelMixin:
    # diffusers warns on every ``to(dtype=...)``, even a no-op one
    model = model.to(device=device)
    return model if model.dtype == dtype else model.to(dtype=dtype)


class TemporalOutputConv(nn.Module):
    """Residual 3D convolution on decoded pixels ``(B*T, C, H, W)``; zero-initialised (identity)."""

    def __init__(self, channels: int, kernel_size: Sequence[int] = (3, 3, 3)) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, tuple(kernel_size), padding=same_padding(kernel_size))
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(
        self, hidden_states: torch.Tensor, context: FrameContext, temb: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B*T, C, H, W)`` -> same shape. ``temb`` is unused (uniform temporal-layer signature)."""
        x = rearrange(hidden_states, "(b t) c h w -> b c t h w", t=context.num_frames)
        return rearrange(x + conv_video(self.conv, x), "b c t h w -> (b t) c h w")


def frame_windows(num_frames: int, chunk_size: int | None, overlap: int = 0) -> list[tuple[int, int]]:
    """Half-open frame ranges ``[(start, end), ...]`` covering ``0..num_frames`` with ``overlap`` shared frames.

    All windows have ``chunk_size`` frames except possibly the last, which is shorter (never
    shorter than ``overlap + 1``); ``chunk_size=None`` or ``>= num_frames`` gives one window.
    ``2 * overlap <= chunk_size`` so that no frame lies in more than two windows.
    """
    if chunk_size is None or chunk_size >= num_frames:
        return [(0, num_frames)]
    if chunk_size < 1 or overlap < 0 or 2 * overlap > chunk_size:
        raise ValueError(f"need chunk_size >= 1 and 0 <= 2 * overlap <= chunk_size, got {chunk_size}, {overlap}")
    windows, start = [], 0
    while True:
        end = min(start + chunk_size, num_frames)
        windows.append((start, end))
        if end == num_frames:
            return windows
        start = end - overlap


def window_weights(windows: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Per-frame blending weight of each window of :func:`frame_windows`, ``(end - start,)`` each.

    Where two windows share frames, the later one ramps in with ``sin^2`` and the earlier one ramps
    out with ``cos^2`` of the same argument: the weights of every frame sum to 1 and change
    smoothly across the shared frames.
    """
    weights = [torch.ones(end - start, dtype=torch.float64) for start, end in windows]
    for index in range(1, len(windows)):
        start, previous_end = windows[index][0], windows[index - 1][1]
        shared = previous_end - start
        if shared <= 0:
            continue
        ramp = torch.sin(0.5 * math.pi * torch.arange(1, shared + 1, dtype=torch.float64) / (shared + 1)) ** 2
        weights[index][:shared] *= ramp
        weights[index - 1][-shared:] *= 1.0 - ramp
    return weights


class TemporalDecoder(InflatedModelMixin, ModelMixin, ConfigMixin):
    """Image ``AutoencoderKL`` with a video decoder. Public tensors are ``(B, T, C, H, W)``.

    Latents are scaled like the image LDM's: ``(z - shift_factor) * scaling_factor`` (shift 0 when
    the VAE config has none); :meth:`encode` returns and :meth:`decode` expects scaled latents.
    ``autoencoder_config`` is the image ``AutoencoderKL``'s config; ``kernel_size`` is the 3D kernel
    of every temporal convolution; ``mid_attention`` adds temporal attention after the mid-block
    attention; ``alpha_init`` is the initial ``alpha = sigmoid(m)`` of every blender.

    ``self.vae``'s decoder has temporal hooks and runs only inside :meth:`decode`; use
    :meth:`image_autoencoder` for a standalone image VAE. :meth:`enable_gradient_checkpointing`
    checkpoints the encoder's and decoder's blocks.
    """

    _supports_gradient_checkpointing = True

    spatial_attribute = "vae"

    @register_to_config
    def __init__(
        self,
        autoencoder_config: dict,
        kernel_size: Sequence[int] = (3, 3, 3),
        mid_attention: bool = True,
        alpha_init: float = 0.5,
    ) -> None:
        super().__init__()
        self.vae = AutoencoderKL.from_config(_public_config(autoencoder_config))
        self.temporal = TemporalInflation(self._plan_temporal_layers())
        self.temporal.attach(self.vae)

    def _plan_temporal_layers(self) -> dict[str, list[BlendedTemporalLayer]]:
        kernel_size, alpha_init = tuple(self.config.kernel_size), self.config.alpha_init
        plan: dict[str, list[BlendedTemporalLayer]] = {}
        for name, module in self.vae.decoder.named_modules(prefix="decoder"):
            if isinstance(module, ResnetBlock2D):
                layer = TemporalConvBlock(module.out_channels, kernel_size=kernel_size)
            elif isinstance(module, Attention) and self.config.mid_attention and name.startswith("decoder.mid_block"):
                layer = TemporalAttention(module.query_dim)
            elif name == OUTPUT_LAYER_PATH:
                layer = TemporalOutputConv(module.out_channels, kernel_size)
            else:
                continue
            plan[temporal_key(name)] = [BlendedTemporalLayer(layer, alpha_init)]
        return plan

    @classmethod
    def from_autoencoder(
        cls,
        vae: AutoencoderKL,
        *,
        kernel_size: Sequence[int] = (3, 3, 3),
        mid_attention: bool = True,
        alpha_init: float = 0.5,
    ) -> "TemporalDecoder":
        """Inflate a copy of ``vae`` (``vae`` itself is left untouched): spatial weights are bit-exact copies."""
        model = cls(
            autoencoder_config=_public_config(vae.config),
            kernel_size=tuple(kernel_size),
            mid_attention=mid_attention,
            alpha_init=alpha_init,
        )
        model.vae.load_state_dict(vae.state_dict())
        return _move(model, vae.device, vae.dtype)

    def image_autoencoder(self) -> AutoencoderKL:
        """A standalone hook-free ``AutoencoderKL`` with a copy of the spatial weights (same device, dtype, mode)."""
        vae = AutoencoderKL.from_config(self.vae.config)
        vae.load_state_dict(self.vae.state_dict())
        return _move(vae, self.device, self.dtype).train(self.training)

    # ----------------------------------------------------------------------------- parameters
    def last_layer_weight(self) -> nn.Parameter:
        """Weight of the last trainable layer (the output 3D conv), for the GAN's adaptive weight."""
        return self.temporal[temporal_key(OUTPUT_LAYER_PATH)][0].layer.conv.weight

    # ----------------------------------------------------------------------------- encode
    def encode(
        self,
        video: torch.Tensor,
        *,
        sample_posterior: bool = False,
        generator: torch.Generator | None = None,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Pixels ``(B, T, C, H, W)`` in [-1, 1] -> scaled latents ``(B, T, c, h, w)``.

        Frame-wise image encoder: the posterior mode (or a sample with ``sample_posterior``), then
        ``(z - shift_factor) * scaling_factor``. ``chunk_size`` bounds how many frames go through
        the encoder at once (identical maths; bounded memory).
        """
        if video.ndim != 5:
            raise ValueError(f"video must be (B, T, C, H, W), got shape {tuple(video.shape)}")
        return encode_video(self.vae, video, generator, sample=sample_posterior, chunk_size=chunk_size)

    # ----------------------------------------------------------------------------- decode
    def _decode_window(
        self, latents: torch.Tensor, temporal: bool, image_only_indicator: torch.Tensor | None
    ) -> torch.Tensor:
        batch, num_frames = latents.shape[:2]
        if not temporal:
            # alpha == 1 exactly makes every blend return the spatial path bit for bit
            image_only_indicator = torch.ones(batch, num_frames, dtype=torch.bool, device=latents.device)
        # channels-last strides (e.g. straight from the encoder) reach the temporal GroupNorms as odd 5-D
        # strides, whose backward segfaults in torch 2.13 on CPU when the input needs no gradient
        z = rearrange(latents, "b t c h w -> (b t) c h w").to(self.dtype).contiguous()
        z = unscale_latents(self.vae, z)
        if self.vae.post_quant_conv is not None:
            z = self.vae.post_quant_conv(z)
        context = FrameContext(num_frames=num_frames, image_only_indicator=image_only_indicator)
        # the decoder is called directly: AutoencoderKL.decode's slicing would split the video
        pixels = self.temporal.run_in_context(context, self.vae.decoder, z)
        return rearrange(pixels, "(b t) c h w -> b t c h w", t=num_frames)

    def decode(
        self,
        latents: torch.Tensor,
        chunk_size: int | None = None,
        overlap: int = 0,
        temporal: bool = True,
        image_only_indicator: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scaled latents ``(B, T, c, h, w)`` -> pixels ``(B, T, C, H, W)``.

        ``chunk_size`` decodes windows of at most that many frames, consecutive windows sharing
        ``overlap`` frames that are cross-faded (:func:`window_weights`), so activation memory is
        bounded in T; with ``chunk_size >= T`` (or None) it is one full decode. ``temporal=False``
        is the image decoder frame by frame. ``image_only_indicator`` ``(B, T)`` bool forces alpha
        to 1 at the frames where it is true. Any T >= 1.
        """
        if latents.ndim != 5:
            raise ValueError(f"latents must be (B, T, c, h, w), got shape {tuple(latents.shape)}")
        batch, num_frames = latents.shape[:2]
        if image_only_indicator is not None and image_only_indicator.shape != (batch, num_frames):
            raise ValueError(
                f"image_only_indicator must be ({batch}, {num_frames}), got {tuple(image_only_indicator.shape)}"
            )
        windows = frame_windows(num_frames, chunk_size, overlap)
        if len(windows) == 1:
            return self._decode_window(latents, temporal, image_only_indicator)

        output, weights = None, window_weights(windows)
        for (start, end), weight in zip(windows, weights):
            indicator = None if image_only_indicator is None else image_only_indicator[:, start:end]
            frames = self._decode_window(latents[:, start:end], temporal, indicator)
            if output is None:
                output = frames.new_zeros(batch, num_frames, *frames.shape[2:])
            weight = weight.to(device=frames.device, dtype=frames.dtype)
            output[:, start:end] += weight[None, :, None, None, None] * frames
        return output


def image_vae_of(vae: AutoencoderKL | TemporalDecoder) -> AutoencoderKL:
    """The image autoencoder of ``vae``: itself, or a :class:`TemporalDecoder`'s (shared, not a copy)."""
    return vae.vae if isinstance(vae, TemporalDecoder) else vae


def vae_scale_factor(vae: AutoencoderKL | TemporalDecoder) -> int:
    """Pixels per latent cell of an autoencoder or a :class:`TemporalDecoder` (:func:`~videoldm.models.configs.downsampling_factor`)."""
    return downsampling_factor(vae.config)


def scale_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Posterior latents -> the diffusion model's latents ``(z - shift_factor) * scaling_factor`` (any shape)."""
    return (latents - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor


def unscale_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`scale_latents`: ``z / scaling_factor + shift_factor``."""
    return latents / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)


def encode_video(
    vae: AutoencoderKL | TemporalDecoder,
    video: torch.Tensor,
    generator: torch.Generator | None = None,
    sample: bool = True,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Pixels ``(B, T, C, H, W)`` in [-1, 1] -> scaled latents ``(B, T, c, h, w)`` with the image encoder.

    ``vae`` is an ``AutoencoderKL`` or a :class:`TemporalDecoder` (whose encoder is its image
    autoencoder's); ``sample`` draws from the posterior with ``generator`` (the LDM training
    convention), otherwise its mode is taken (:func:`scale_latents`). ``chunk_size`` bounds how many
    frames go through the encoder at once (identical maths; bounded memory).
    """
    image_vae = image_vae_of(vae)
    frames = rearrange(video, "b t c h w -> (b t) c h w").to(image_vae.dtype)
    step = chunk_size or frames.shape[0]
    latents = []
    for start in range(0, frames.shape[0], step):
        posterior = image_vae.encode(frames[start : start + step]).latent_dist
        latents.append(posterior.sample(generator) if sample else posterior.mode())
    latents = scale_latents(image_vae, torch.cat(latents))
    return rearrange(latents, "(b t) c h w -> b t c h w", t=video.shape[1]).contiguous()
