"""High frame rates: the interpolation model's passes (Video LDM, Sec. 3.1.2).

One pass multiplies the frame rate by ``factor`` (4 in the paper): ``K`` key latents become
``factor * (K - 1) + 1``, key ``k`` at position ``factor * k``, and the model fills the
``factor - 1`` frames between each pair, conditioned on the key frames through the same context
path as the prediction model (:func:`~videoldm.models.context.key_frame_mask`). Any ``K`` works:
windows of ``window_keys`` key frames run along the video, and consecutive windows share one gap
between key frames: a later window is given both keys of its first gap *and* the frames the
previous window made in it, so the motion runs on across window boundaries instead of restarting
at each one. Two passes (frame-rate regimes ``r`` and ``r + 1`` of one model) make x16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..models.context import key_frame_mask

INTERPOLATION_FACTOR = 4  # frames per key-frame gap after one pass (the paper's T -> 4T)
PASSES_PER_FACTOR = {4: 1, 16: 2}
DEFAULT_WINDOW_KEY_FRAMES = 5  # key frames per window: 17 frames, the shipped model's training windows
# Guidance over the key frames: on held-out digits 2 beat 1 by 1.2 - 2.0 dB (64 videos) and 4 by 1.4 dB (8 videos,
# an earlier checkpoint); benchmarks/interpolation.py
DEFAULT_INTERPOLATION_CONTEXT_GUIDANCE = 2.0


@dataclass
class InterpolationWindow:
    """Key frames ``first_key .. first_key + num_keys - 1``; ``continues``: its first gap was made by the previous window."""

    first_key: int
    num_keys: int
    continues: bool


def plan_interpolation(num_keys: int, window_keys: int) -> list[InterpolationWindow]:
    """The windows that interpolate ``num_keys`` key frames, ``window_keys`` keys per window, one gap shared."""
    if num_keys < 2:
        raise ValueError(f"interpolation needs at least 2 key frames, got {num_keys}")
    if window_keys < 3:
        raise ValueError(f"window_keys must be >= 3 (windows share one gap and must still advance), got {window_keys}")
    plan, first = [], 0
    while True:
        num = min(window_keys, num_keys - first)
        plan.append(InterpolationWindow(first, num, continues=first > 0))
        if first + num >= num_keys:
            return plan
        first += num - 2


SampleInterpolationWindow = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def interpolate_latents(
    key_latents: torch.Tensor, window_keys: int, sample_window: SampleInterpolationWindow, factor: int = INTERPOLATION_FACTOR
) -> torch.Tensor:
    """One pass: key latents ``(B, K, c, h, w)`` -> ``(B, factor * (K - 1) + 1, c, h, w)``, key ``k`` at ``factor * k``.

    ``sample_window(latents (B, W, c, h, w), mask (W,) bool)`` samples a window whose frames marked in
    ``mask`` are given (the others in ``latents`` are placeholders) and returns its latents with
    the given frames put back exactly.
    """
    batch, num_keys = key_latents.shape[:2]
    video = key_latents.new_zeros(batch, factor * (num_keys - 1) + 1, *key_latents.shape[2:])
    video[:, ::factor] = key_latents
    for window in plan_interpolation(num_keys, window_keys):
        start, length = factor * window.first_key, factor * (window.num_keys - 1) + 1
        mask = key_frame_mask(length, factor, key_latents.device)
        if window.continues:
            mask[: factor + 1] = True
        video[:, start : start + length] = sample_window(video[:, start : start + length], mask)
    return video
