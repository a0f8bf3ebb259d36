"""Context conditioning of the prediction (and interpolation) models (Video LDM, Sec. 3.1.1).

A prediction model generates a clip whose first ``S`` frames are given (``S`` in {0, 1, 2}). The
given frames enter as a binary ``context_mask`` ``m_S`` ``(B, T, 1, h, w)`` and the masked latents
``m_S * z`` ``(B, T, c, h, w)``; their channel-wise concatenation goes through a learned
downsampling (:class:`ContextEncoder`) to every resolution of the UNet, and each temporal layer
adds its resolution's features, through its own zero-initialised 1x1 projection
(:class:`ContextProjection`), to its input. Zero initialisation keeps a freshly
context-conditioned model equal to the model it was made from; only the temporal path sees the
context, so alpha = 1 (image-only frames) still gives the pure image model.

The interpolation model (Sec. 3.1.2) uses the same path with the key frames as context; one model
serves several frame-rate regimes (e.g. key rate -> x4, and x4 -> x16), told apart by a
``frame_rate_regime`` flag whose learned, zero-initialised embedding the encoder adds to its
features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

ContextFeatures = dict[tuple[int, int], torch.Tensor]


def masked_context(
    context_mask: torch.Tensor | None, context_latents: torch.Tensor | None, sample: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise the context inputs of a latent video ``sample`` ``(B, T, c, h, w)``.

    ``context_mask``: ``(B, T)``, ``(B, T, 1, 1, 1)`` or ``(B, T, 1, h, w)``, nonzero where a frame
    is given; ``None`` means no given frame (S = 0, the unconditional branch). ``context_latents``:
    ``(B, T, c, h, w)`` clean latents (values at non-context frames are ignored). Returns
    ``(mask (B, T, 1, h, w), m * z (B, T, c, h, w))`` with exact zeros at non-context frames.
    """
    latent_shape = tuple(sample.shape)
    batch, frames, channels, height, width = latent_shape
    if context_mask is None:
        if context_latents is not None:
            raise ValueError("context_latents need a context_mask saying which frames are given")
        return sample.new_zeros(batch, frames, 1, height, width), sample.new_zeros(latent_shape)
    if context_mask.shape[:2] != (batch, frames):
        raise ValueError(f"context_mask must start with ({batch}, {frames}), got {tuple(context_mask.shape)}")
    if context_mask.ndim == 2:
        context_mask = context_mask[:, :, None, None, None]
    given = (context_mask != 0).to(sample.device).expand(batch, frames, 1, height, width)
    if context_latents is None:
        if bool(given.any()):
            raise ValueError("context_mask marks given frames but no context_latents were passed")
        return given.to(sample.dtype), sample.new_zeros(latent_shape)
    if tuple(context_latents.shape) != latent_shape:
        raise ValueError(f"context_latents must have shape {latent_shape}, got {tuple(context_latents.shape)}")
    # where() rather than a product: non-context frames are exact zeros even if their latents are inf/NaN
    masked = torch.where(given, context_latents.to(sample.device, sample.dtype), sample.new_zeros(()))
    return given.to(sample.dtype), masked


class ContextEncoder(nn.Module):
    """Learned downsampling of ``[m_S, m_S * z]`` to every UNet resolution.

    ``(B*T, c + 1, h, w)`` -> one feature map ``(B*T, channels, h_k, w_k)`` per level ``k`` (level 0
    at the latent size, each next level a stride-2 convolution, like diffusers' ``Downsample2D``, so
    sizes match the UNet's at every level), keyed by ``(h_k, w_k)``. With ``frame_rate_regimes``
    > 0, a per-video ``frame_rate_regime`` ``(B,)`` selects an embedding added to every frame's
    level-0 features (zero-initialised: a new flag changes nothing until trained).
    """

    def __init__(self, latent_channels: int, num_levels: int, channels: int = 64, frame_rate_regimes: int = 0) -> None:
        super().__init__()
        self.frame_rate_regime_embedding = None
        if frame_rate_regimes:
            self.frame_rate_regime_embedding = nn.Embedding(frame_rate_regimes, channels)
            nn.init.zeros_(self.frame_rate_regime_embedding.weight)
        self.stem = nn.Sequential(
            nn.Conv2d(latent_channels + 1, channels, 3, padding=1), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1)
        )
        self.downsamplers = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, stride=2, padding=1) for _ in range(num_levels - 1)
        )

    def forward(
        self, context_mask: torch.Tensor, masked_latents: torch.Tensor, frame_rate_regime: torch.Tensor | None = None
    ) -> ContextFeatures:
        """``(B, T, 1, h, w)`` mask and ``(B, T, c, h, w)`` masked latents -> features per ``(h_k, w_k)``.

        ``frame_rate_regime`` ``(B,)`` long in ``[0, frame_rate_regimes)``: required by an encoder with
        regimes, refused by one without.
        """
        batch, num_frames = context_mask.shape[:2]
        x = rearrange(torch.cat([context_mask, masked_latents], dim=2), "b t c h w -> (b t) c h w")
        x = self.stem(x.to(self.stem[0].weight.dtype))
        if self.frame_rate_regime_embedding is not None:
            regimes = self.frame_rate_regime_embedding.num_embeddings
            if frame_rate_regime is None:
                raise ValueError(f"this model serves {regimes} frame-rate regimes: pass frame_rate_regime (B,)")
            frame_rate_regime = torch.as_tensor(frame_rate_regime, device=x.device).long().reshape(-1)
            if frame_rate_regime.shape != (batch,) or bool(((frame_rate_regime < 0) | (frame_rate_regime >= regimes)).any()):
                raise ValueError(f"frame_rate_regime must be ({batch},) integers in [0, {regimes}), got {frame_rate_regime.tolist()}")
            embedding = self.frame_rate_regime_embedding(frame_rate_regime).to(x.dtype)
            x = x + embedding.repeat_interleave(num_frames, dim=0)[:, :, None, None]
        elif frame_rate_regime is not None:
            raise ValueError("this model has no frame-rate regimes; frame_rate_regime is for interpolation models")
        features = {tuple(x.shape[-2:]): x}
        for downsample in self.downsamplers:
            x = downsample(F.silu(x))
            features.setdefault(tuple(x.shape[-2:]), x)
        return features


class ContextProjection(nn.Module):
    """Zero-initialised 1x1 projection of context features onto one temporal layer's channels."""

    def __init__(self, context_channels: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(context_channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden_states: torch.Tensor, features: ContextFeatures) -> torch.Tensor:
        """``(B*T, C, H, W)`` -> same shape: ``hidden_states`` plus the projected features of size ``(H, W)``."""
        size = tuple(hidden_states.shape[-2:])
        if size not in features:
            raise ValueError(f"no context features at resolution {size}; have {sorted(features)}")
        return hidden_states + self.proj(features[size].to(hidden_states.dtype))


def key_frame_mask(num_frames: int, factor: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The interpolation model's ``context_mask`` ``(T,)``: true at the key frames ``0, factor, 2*factor, ...``."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    return torch.arange(num_frames, device=device) % factor == 0
