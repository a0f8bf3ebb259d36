"""Long videos: the prediction model's autoregressive rollout (Video LDM, Sec. 3.1.1), decoded as it goes.

A rollout samples windows of ``window`` frames. The first window has no given frame (S = 0) unless
the video starts from given frames (an init image, or the video being continued); every later
window is conditioned on the last ``context_frames`` latents made so far (S = 2 in the paper), so
each window adds ``window - S`` new frames at the same cost and memory, whatever the length.
Latents are decoded as they are made by :class:`StreamingDecoder`, whose overlapping, cross-faded
decoder windows run across rollout windows: the stream decodes exactly what one
``TemporalDecoder.decode`` of the whole latent video would, so window boundaries leave no
decoder seam and nothing grows with the length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ..models.autoencoder import TemporalDecoder, frame_windows, window_weights


def decoder_overlap(chunk_size: int) -> int:
    """Frames shared by consecutive decoder windows of ``chunk_size`` frames (a quarter, at most ``chunk_size - 1``)."""
    return min(chunk_size // 4, max(chunk_size - 1, 0))


class StreamingDecoder:
    """Decode a latent video pushed in pieces, returning each pixel frame as soon as it is final.

    ``push(latents (B, n, c, h, w))`` returns the frames ``(B, k, C, H, W)`` in [-1, 1] completed by
    that piece (None if none); ``flush()`` returns the rest. For a :class:`TemporalDecoder` with
    ``decoder="video"`` the frames equal ``vae.decode(all_latents, chunk_size, overlap)`` (windows of
    ``chunk_size`` frames sharing ``decoder_overlap(chunk_size)`` cross-faded frames); other
    decoders are frame-wise and decode each piece directly. ``decode`` is the frame-wise decoding
    function ``(latents) -> pixels`` used for those.
    """

    def __init__(
        self,
        vae: torch.nn.Module,
        decode: Callable[[torch.Tensor], torch.Tensor],
        chunk_size: int = 8,
        decoder: str = "video",
    ) -> None:
        self.vae = vae
        self.decode = decode
        self.temporal = isinstance(vae, TemporalDecoder) and decoder == "video"
        self.chunk_size = chunk_size
        self.overlap = decoder_overlap(chunk_size)
        # the cross-fade of the frames shared by two windows, as TemporalDecoder.decode weights them
        shared_windows = frame_windows(2 * chunk_size - self.overlap, chunk_size, self.overlap)
        self.ramp = window_weights(shared_windows)[1][: self.overlap]
        self.pending: torch.Tensor | None = None  # latents whose frames are not final yet
        self.tail: torch.Tensor | None = None  # pixels of the last window's shared frames, unweighted

    def _decode_window(self, latents: torch.Tensor) -> torch.Tensor:
        pixels = self.vae.decode(latents, temporal=True)
        if self.tail is not None and self.overlap:
            ramp = self.ramp.to(pixels.device, pixels.dtype)[None, :, None, None, None]
            pixels = torch.cat(
                [(1 - ramp) * self.tail + ramp * pixels[:, : self.overlap], pixels[:, self.overlap :]], dim=1
            )
        return pixels

    def push(self, latents: torch.Tensor) -> torch.Tensor | None:
        """Add latent frames ``(B, n, c, h, w)``; return the pixel frames ``(B, k, C, H, W)`` now final (or None)."""
        if not self.temporal:
            return self.decode(latents)
        self.pending = latents if self.pending is None else torch.cat([self.pending, latents], dim=1)
        done = []
        while self.pending.shape[1] >= self.chunk_size:
            pixels = self._decode_window(self.pending[:, : self.chunk_size])
            keep = self.chunk_size - self.overlap
            done.append(pixels[:, :keep])
            self.tail = pixels[:, keep:] if self.overlap else None
            self.pending = self.pending[:, keep:]
        return torch.cat(done, dim=1).clamp(-1, 1) if done else None

    def flush(self) -> torch.Tensor | None:
        """The remaining frames ``(B, k, C, H, W)`` (None if there are none); the stream is then empty."""
        if not self.temporal or self.pending is None:
            return None
        if self.tail is not None and self.pending.shape[1] == self.overlap:
            pixels = self.tail  # the last window ended the video: its shared frames keep weight 1
        elif self.pending.shape[1]:
            pixels = self._decode_window(self.pending)
        else:
            pixels = None
        self.pending, self.tail = None, None
        return None if pixels is None else pixels.clamp(-1, 1)


@dataclass
class RolloutWindow:
    """One window of a rollout: ``num_context`` given frames followed by ``num_new`` new ones (of ``window``)."""

    num_context: int
    num_new: int


def plan_rollout(num_new_frames: int, window: int, context_frames: int, num_given: int = 0) -> list[RolloutWindow]:
    """The windows that make ``num_new_frames`` new frames after ``num_given`` given ones.

    Each window is ``window`` frames long; it is conditioned on the last ``min(context_frames,
    frames so far)`` frames and adds the rest (the last window may use fewer of them). With
    ``context_frames=0`` windows are independent samples.
    """
    if window < 1 or context_frames < 0:
        raise ValueError(f"need window >= 1 and context_frames >= 0, got {window} and {context_frames}")
    plan, made = [], 0
    while made < num_new_frames:
        num_context = min(context_frames, num_given + made)
        num_new = min(window - num_context, num_new_frames - made)
        if num_new < 1:
            raise ValueError(f"context_frames ({context_frames}) must be fewer than the window's {window} frames")
        plan.append(RolloutWindow(num_context, num_new))
        made += num_new
    return plan


# the fewest context frames a window's continuity can be scored on: a second difference spans three frames
MIN_SELECTION_CONTEXT = 2


def window_samples(window: RolloutWindow, window_candidates: int) -> int:
    """How many candidate samples of ``window`` a rollout with ``window_candidates`` draws: that many
    where :func:`select_continuation` can score them (S >= 2 context frames), else one."""
    return window_candidates if window.num_context >= MIN_SELECTION_CONTEXT else 1


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
