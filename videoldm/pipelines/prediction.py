"""Long videos: the plan of the prediction model's autoregressive rollout (Video LDM, Sec. 3.2).

A rollout samples windows of ``window`` frames. The first window has no given frame (S = 0) unless
the video starts from given frames (an init image, or the video being continued); every later
window is conditioned on the last ``context_frames`` latents made so far (S = 2 in the paper), so
each window adds ``window - S`` new frames at the same cost and memory, whatever the length.
:class:`~videoldm.pipelines.video.VideoLDMPipeline` samples the windows and decodes their latents
as they are made (:func:`~videoldm.pipelines.decoding.stream_decode`), so window boundaries leave
no decoder seam.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from .planning import MIN_SELECTION_CONTEXT, RolloutWindow


def select_continuation(candidates: torch.Tensor, num_context: int) -> torch.Tensor:
    """Per video, the candidate window that continues its context most steadily.

    ``candidates`` ``(K, B, W, c, h, w)`` are K samples of one rollout window whose first
    ``num_context`` (>= 2) latents are the given context. Each is scored by the second difference
    ``|z[S] - 2 z[S-1] + z[S-2]|`` (L2 over the latent) from the last two context latents into the
    first new one: the change of velocity at the window's entry, where a rollout's seam lies.
    Returns ``(B, W, c, h, w)``, each video's lowest-scoring candidate (the first on ties).
    """
    if num_context < MIN_SELECTION_CONTEXT:
        raise ValueError(f"scoring a continuation needs >= {MIN_SELECTION_CONTEXT} context frames, got {num_context}")
    entry = candidates[:, :, num_context] - 2 * candidates[:, :, num_context - 1] + candidates[:, :, num_context - 2]
    best = entry.flatten(2).norm(dim=-1).argmin(dim=0)
    return candidates[best, torch.arange(candidates.shape[1], device=candidates.device)]


SampleWindow = Callable[[RolloutWindow, torch.Tensor | None], torch.Tensor]


def rollout_latents(
    plan: list[RolloutWindow], sample_window: SampleWindow, given_latents: torch.Tensor | None = None
) -> Iterator[torch.Tensor]:
    """Run ``plan``, yielding each window's new latents ``(B, num_new, c, h, w)`` as it is made.

    ``sample_window(window, context)`` samples one full window whose first ``window.num_context``
    frames are ``context`` ``(B, S, c, h, w)`` (None for S = 0) and returns its latents
    ``(B, window, c, h, w)``. ``given_latents`` ``(B, K, c, h, w)`` are the frames before the
    rollout. Only the last ``max S`` latents are kept between windows: memory is flat in length.
    """
    keep = max((window.num_context for window in plan), default=0)
    history = None if given_latents is None or keep == 0 else given_latents[:, -keep:]
    for window in plan:
        context = None if window.num_context == 0 else history[:, -window.num_context :]
        latents = sample_window(window, context)
        new = latents[:, window.num_context : window.num_context + window.num_new]
        yield new
        if keep:
            history = new[:, -keep:] if history is None else torch.cat([history, new], dim=1)[:, -keep:]
