"""Optical flow from OpenCV (DIS, Kroeger et al. 2016) for the warping error on real footage, where the true motion
is unknown (Lai et al. 2018: flow of the reference video, occlusions found by forward-backward consistency).

Needs ``opencv-python-headless`` (``pip install -e '.[bench]'``); frames are ``(T, C, H, W)`` in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch

from .consistency import backward_warp, warping_error


def _opencv():
    try:
        import cv2
    except ImportError:
        raise ImportError("optical flow needs OpenCV: pip install opencv-python-headless (or the bench extra)") from None
    return cv2


def _grey_uint8(frame: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` in [0, 1] -> ``(H, W)`` uint8 luma (BT.601), what DIS flow reads."""
    if frame.shape[0] == 3:
        frame = (frame * torch.tensor([0.299, 0.587, 0.114], dtype=frame.dtype)[:, None, None]).sum(0, keepdim=True)
    return (frame[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def dis_flow(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Flow ``(2, H, W)`` (pixels; channel 0 horizontal) with ``source(x) ~ target(x + flow(x))``, by OpenCV's DIS
    (medium preset) on the luma of frames ``(C, H, W)`` in [0, 1]."""
    cv2 = _opencv()
    estimator = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flow = estimator.calc(_grey_uint8(source), _grey_uint8(target), None)
    return torch.from_numpy(flow).permute(2, 0, 1).float()


def video_flow(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(backward_flow (T-1, 2, H, W), valid (T-1, H, W))`` of a video ``(T, C, H, W)`` in [0, 1].

    ``backward_flow[t]`` maps frame ``t+1`` to frame ``t`` (:func:`~videoldm.metrics.consistency.backward_warp`'s
    convention). ``valid`` drops occluded pixels by the forward-backward check of Sundaram et al. 2010
    (``|b + f(x + b)|^2 < 0.01 (|b|^2 + |f(x + b)|^2) + 0.5``) and pixels whose source leaves the frame.
    """
    backward = torch.stack([dis_flow(frames[t + 1], frames[t]) for t in range(len(frames) - 1)])
    forward = torch.stack([dis_flow(frames[t], frames[t + 1]) for t in range(len(frames) - 1)])
    forward_at_source = backward_warp(forward, backward)  # the forward flow where each backward vector lands
    height, width = frames.shape[-2:]
    rows = torch.arange(height, dtype=backward.dtype)[:, None]
    columns = torch.arange(width, dtype=backward.dtype)[None, :]
    source_x, source_y = columns + backward[:, 0], rows + backward[:, 1]
    inside = (source_x >= 0) & (source_x <= width - 1) & (source_y >= 0) & (source_y <= height - 1)
    round_trip = (backward + forward_at_source).pow(2).sum(1)
    consistent = round_trip < 0.01 * (backward.pow(2).sum(1) + forward_at_source.pow(2).sum(1)) + 0.5
    return backward, inside & consistent


def flow_warping_error(videos: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """The warping error (:func:`~videoldm.metrics.consistency.warping_error`) of videos ``(B, T, C, H, W)`` in
    [0, 1] along the DIS flow of ``reference`` (the real frames they reconstruct, same shape) or, without
    one, of each video itself -> ``(B,)``."""
    source = videos if reference is None else reference
    flows, valid = zip(*(video_flow(video) for video in source))
    return warping_error(videos, torch.stack(flows), torch.stack(valid))
