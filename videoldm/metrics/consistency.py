"""Reconstruction and temporal-consistency measures against real frames (interpolation, decoding, upsampling).

Frames are ``(..., C, H, W)`` in ``[0, 1]``; each measure is computed per frame and averaged over
frames, so a few perfect frames (e.g. given key frames) cannot hide bad ones when they are
excluded by the caller.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(prediction: torch.Tensor, target: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per frame: ``(..., C, H, W)`` pairs -> ``(...)``, ``10 log10(peak^2 / MSE)``.

    MSE is floored at 1e-12 so identical frames give a finite 120 dB (for ``peak`` 1).
    """
    mse = (prediction - target).double().pow(2).flatten(-3).mean(-1).clamp_min(1e-12)
    return (10 * torch.log10(peak**2 / mse)).float()


def _gaussian_window(size: int, sigma: float, channels: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    profile = torch.exp(-(coords**2) / (2 * sigma**2))
    profile = profile / profile.sum()
    return (profile[:, None] * profile[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(prediction: torch.Tensor, target: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per frame (Wang et al. 2004): ``(..., C, H, W)`` pairs in [0, 1] -> ``(...)``.

    The standard form: an 11x11 Gaussian window of sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03`` for a
    data range of 1, valid positions only (no padding), averaged over channels and positions.
    Frames smaller than the window use a window of their size.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction and target shapes differ: {tuple(prediction.shape)} vs {tuple(target.shape)}")
    batch_shape, (channels, height, width) = prediction.shape[:-3], prediction.shape[-3:]
    size = min(window_size, height, width)
    x = prediction.reshape(-1, channels, height, width).double()
    y = target.reshape(-1, channels, height, width).double()
    window = _gaussian_window(size, sigma, channels, x.dtype, x.device)

    def local_mean(values: torch.Tensor) -> torch.Tensor:
        return F.conv2d(values, window, groups=channels)

    mean_x, mean_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mean_x**2
    var_y = local_mean(y * y) - mean_y**2
    covariance = local_mean(x * y) - mean_x * mean_y
    c1, c2 = 0.01**2, 0.03**2
    score = ((2 * mean_x * mean_y + c1) * (2 * covariance + c2)) / ((mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2))
    return score.flatten(1).mean(1).float().reshape(batch_shape)


def flicker_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Temporal consistency per video: mean ``|(x^[t+1] - x^[t]) - (x[t+1] - x[t])|`` of ``(B, T, C, H, W)`` pairs -> ``(B,)``.

    0 when the frame-to-frame changes equal the real ones; an error constant over time (a blur, a
    shift) does not count, a frame that differs from its neighbours does.
    """
    return (prediction.diff(dim=1) - target.diff(dim=1)).abs().flatten(1).mean(1)


def backward_warp(frames: torch.Tensor, backward_flow: torch.Tensor) -> torch.Tensor:
    """Frames ``(N, C, H, W)`` resampled along ``backward_flow`` ``(N, 2, H, W)`` -> ``(N, C, H, W)``.

    ``backward_flow[:, :, i, j] = (dx, dy)`` in pixels (channel 0 horizontal, the RAFT / torchvision
    convention): output pixel ``(i, j)`` takes the input at ``(i + dy, j + dx)``, bilinearly; sources
    outside the frame give 0.
    """
    height, width = frames.shape[-2:]
    rows = torch.arange(height, dtype=frames.dtype, device=frames.device)
    cols = torch.arange(width, dtype=frames.dtype, device=frames.device)
    source_x = cols[None, None, :] + backward_flow[:, 0]
    source_y = rows[None, :, None] + backward_flow[:, 1]
    # align_corners=True: -1 and +1 are the centres of the first and last pixels.
    grid = torch.stack([2 * source_x / max(width - 1, 1) - 1, 2 * source_y / max(height - 1, 1) - 1], dim=-1)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def warping_error(prediction: torch.Tensor, backward_flow: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Temporal consistency along the motion per video (Lai et al. 2018): ``(B, T, C, H, W)`` -> ``(B,)``.

    Mean over the ``valid`` pixels ``(B, T-1, H, W)`` (bool: no occlusion, source inside the frame) of
    ``|x^[t+1] - warp(x^[t], flow[t])|``, with ``backward_flow`` ``(B, T-1, 2, H, W)`` from frame t+1
    to frame t (see :func:`backward_warp`). Unlike :func:`flicker_error` it needs no real frames, only
    the true motion: a video that is wrong but moves consistently scores 0; real frames score the
    floor of bilinear resampling.
    """
    batch, num_frames = prediction.shape[:2]
    if backward_flow.shape != (batch, num_frames - 1, 2, *prediction.shape[-2:]):
        raise ValueError(f"backward_flow must be {(batch, num_frames - 1, 2, *prediction.shape[-2:])}, "
                         f"got {tuple(backward_flow.shape)}")
    warped = backward_warp(prediction[:, :-1].flatten(0, 1), backward_flow.flatten(0, 1).to(prediction.dtype))
    difference = (prediction[:, 1:] - warped.unflatten(0, (batch, num_frames - 1))).abs().mean(2)
    weight = valid.to(difference.dtype)
    return (difference * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1)
