"""VideoDiscriminator: a 3D-convolutional PatchGAN that scores space-time patches (decoder fine-tuning).

The paper fine-tunes the video decoder against a patch-wise temporal discriminator built from 3D
convolutions, so that it is penalised for flicker and not only for blurry frames. This follows
the 2D PatchGAN of the LDM autoencoders, with ``Conv3d`` layers: a stack of strided layers
(spatial stride 2; temporal stride 1 or 2 per layer), one stride-1 layer and a 1-channel output
convolution. Scores are raw logits, one per receptive-field patch of the video.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from einops import rearrange
from torch import nn

SPATIAL_KERNEL = 4
TEMPORAL_KERNEL = 3


def _conv(in_channels: int, out_channels: int, temporal_stride: int, spatial_stride: int, bias: bool) -> nn.Conv3d:
    # a temporal kernel of 3 with padding 1 keeps T (stride 1) or gives ceil(T/2) (stride 2) for any T >= 1
    return nn.Conv3d(
        in_channels,
        out_channels,
        (TEMPORAL_KERNEL, SPATIAL_KERNEL, SPATIAL_KERNEL),
        stride=(temporal_stride, spatial_stride, spatial_stride),
        padding=(TEMPORAL_KERNEL // 2, 1, 1),
        bias=bias,
    )


class VideoDiscriminator(ModelMixin, ConfigMixin):
    """Patch discriminator over videos: ``(B, T, C, H, W)`` -> scores ``(B, 1, T', H', W')``.

    ``temporal_strides`` gives the temporal stride of each spatially-strided layer (its length is
    the number of such layers); ``base_channels`` doubles per layer up to ``8 * base_channels``;
    ``use_norm`` puts a GroupNorm after every hidden convolution but the first (batch-size
    independent, unlike the original BatchNorm). See :meth:`score_shape` for ``T', H', W'``.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 64,
        temporal_strides: Sequence[int] = (1, 2, 2),
        use_norm: bool = True,
        norm_num_groups: int = 32,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        strides = [(t, 2) for t in temporal_strides] + [(1, 1)]
        for index, (temporal_stride, spatial_stride) in enumerate(strides):
            out_channels = base_channels * min(2**index, 8)
            with_norm = use_norm and index > 0
            layers.append(_conv(channels, out_channels, temporal_stride, spatial_stride, bias=not with_norm))
            if with_norm:
                layers.append(nn.GroupNorm(math.gcd(out_channels, norm_num_groups), out_channels))
            layers.append(nn.LeakyReLU(0.2))
            channels = out_channels
        layers.append(_conv(channels, 1, 1, 1, bias=True))
        self.layers = nn.Sequential(*layers)

    def score_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """``(T', H', W')`` of the score map for a video of ``num_frames`` frames of ``height x width``."""
        for module in self.layers:
            if isinstance(module, nn.Conv3d):
                sizes = (num_frames, height, width)
                num_frames, height, width = (
                    (size + 2 * pad - kernel) // stride + 1
                    for size, pad, kernel, stride in zip(sizes, module.padding, module.kernel_size, module.stride)
                )
        return num_frames, height, width

    def forward(self, video: torch.Tensor, layout: Literal["btchw", "bcthw"] = "btchw") -> torch.Tensor:
        """Logits ``(B, 1, T', H', W')`` of ``video`` ``(B, T, C, H, W)``, or ``(B, C, T, H, W)`` if ``layout``
        is ``"bcthw"``."""
        if video.ndim != 5:
            raise ValueError(f"video must be 5-D, got shape {tuple(video.shape)}")
        if layout == "btchw":
            video = rearrange(video, "b t c h w -> b c t h w")
        elif layout != "bcthw":
            raise ValueError(f"layout must be 'btchw' or 'bcthw', got {layout!r}")
        return self.layers(video.to(self.dtype))


def hinge_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss ``0.5 * (mean relu(1 - real) + mean relu(1 + fake))`` on score maps of any shape."""
    return 0.5 * (F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean())


def hinge_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss ``-mean(fake)`` on a score map of any shape."""
    return -fake_scores.mean()
