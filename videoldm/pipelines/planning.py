"""Planning a request before any network runs: pure arithmetic on sizes and counts, no torch.

The pipelines run these plans, and the command line and web UI (:mod:`videoldm.generation`) read
them to check a request and size its progress display and memory from a pipeline directory's
configs alone: the rollout's windows (prediction), the interpolation windows, the video upsampler's
segments, tiles and memory, and the denoising steps of a whole cascade.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..defaults import (
    DEFAULT_CONTEXT_FRAMES,
    DEFAULT_NUM_INFERENCE_STEPS,
    DEFAULT_UPSAMPLER_STEPS,
    DEFAULT_UPSAMPLER_WINDOW_OVERLAP,
    DEFAULT_WINDOW_KEY_FRAMES,
    INTERPOLATION_FACTOR,
    PASSES_PER_FACTOR,
)


# ------------------------------------------------------------------------------------ rollouts
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


# ------------------------------------------------------------------------------------ interpolation
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


# ------------------------------------------------------------------------------------ upsampling
# A piece's peak memory (the UNet's activations) grows with its cells (videos x frames x height x
# width) times the width of the UNet's first level. Measured for the embedded upsampler (16
# channels; `videoldm upsample`, peak RSS less the 0.7 GB of a small run): 4 frames of 704x576 in
# one piece 2.4 GB, 95 bytes a cell and channel; 8 frames in 256-pixel tiles 1.0 GB, 120 bytes.
PIECE_BYTES_PER_CELL_AND_CHANNEL = 128
DEFAULT_MAX_PIECE_BYTES = 2 * 1024**3
MIN_AUTO_TILE = 32
TileSize = int | Literal["auto"] | None
# The whole-video sampler state above which "auto" cuts a video into segments. Deliberately not the
# machine's free memory: the same command gives the same video everywhere.
DEFAULT_MAX_STATE_BYTES = 4 * 1024**3
SegmentFrames = int | Literal["auto"] | None
# The whole video's share, beside the piece: the sample, its noise, the scheduler's history, the
# blended prediction and the low-resolution video at the sample's size, then the RGB output frames.
# Measured with the embedded (one-channel) upsampler: 20 more frames of 704x576 (24 against 4, in
# 128-pixel tiles) took 0.78 GB more, 24 floats a pixel: 12 of the sample's size, 4 RGB output copies.
SAMPLER_STATE_COPIES = 12
OUTPUT_COPIES = 4


def sampler_state_bytes(
    num_videos: int, num_frames: int, sample_channels: int, sample_size: tuple[int, int], output_size: tuple[int, int]
) -> int:
    """Estimated bytes of what upsampling holds for the whole video beside one piece: float32 copies of
    the sample ``(B, T, sample_channels, *sample_size)`` and of the RGB output ``(B, T, 3, *output_size)``."""
    sample = sample_channels * sample_size[0] * sample_size[1]
    output = 3 * output_size[0] * output_size[1]
    return 4 * num_videos * num_frames * (SAMPLER_STATE_COPIES * sample + OUTPUT_COPIES * output)


def piece_bytes(first_level_channels: int, piece_videos: int, piece_frames: int, piece_cells: tuple[int, int]) -> int:
    """Estimated peak bytes of one upsampler call on a piece of ``piece_videos x piece_frames`` frames of
    ``piece_cells`` (height, width) sample cells: :data:`PIECE_BYTES_PER_CELL_AND_CHANNEL` a cell and
    channel of the UNet's first level (``first_level_channels``)."""
    cells = piece_videos * piece_frames * piece_cells[0] * piece_cells[1]
    return PIECE_BYTES_PER_CELL_AND_CHANNEL * first_level_channels * cells


def guidance_branches(has_negative_prompt: bool, guidance_scale: float) -> int:
    """Upsampler calls batched in one piece: 2 with prompt guidance (a negative prompt and a scale other than 1), else 1."""
    return 2 if has_negative_prompt and guidance_scale != 1.0 else 1


def auto_tile_size(
    first_level_channels: int, piece_videos: int, piece_frames: int, sample_size: tuple[int, int],
    max_piece_bytes: int | None = None,
) -> int | None:
    """The square tile side (sample cells, a multiple of 8) that keeps a piece of ``piece_videos x
    piece_frames`` frames under ``max_piece_bytes`` (default :data:`DEFAULT_MAX_PIECE_BYTES`); None
    when whole frames of ``sample_size`` fit.

    Memory is estimated at :data:`PIECE_BYTES_PER_CELL_AND_CHANNEL` times ``first_level_channels``
    per cell; tiles are never smaller than :data:`MIN_AUTO_TILE`.
    """
    max_piece_bytes = DEFAULT_MAX_PIECE_BYTES if max_piece_bytes is None else max_piece_bytes
    if piece_bytes(first_level_channels, piece_videos, piece_frames, sample_size) <= max_piece_bytes:
        return None
    bytes_per_cell = piece_bytes(first_level_channels, piece_videos, piece_frames, (1, 1))
    side = int(math.sqrt(max_piece_bytes / bytes_per_cell)) // 8 * 8
    return max(side, MIN_AUTO_TILE)


def resolve_tile_size(
    tile_size: TileSize, first_level_channels: int, piece_videos: int, num_frames: int, window_frames: int | None,
    sample_size: tuple[int, int],
) -> int | None:
    """``tile_size`` as given (cells, or None for whole frames), or for ``"auto"`` the :func:`auto_tile_size`
    of one window of ``window_frames`` (all ``num_frames`` for None) of ``piece_videos`` videos."""
    if tile_size == "auto":
        window = num_frames if window_frames is None else min(window_frames, num_frames)
        return auto_tile_size(first_level_channels, piece_videos, window, sample_size)
    if tile_size is not None and (isinstance(tile_size, str) or tile_size < 1):
        raise ValueError(f"tile_size must be a positive number of cells, 'auto' or None, got {tile_size!r}")
    return tile_size


def resolve_segment_frames(
    segment_frames: SegmentFrames, num_videos: int, num_frames: int, sample_channels: int, sample_size: tuple[int, int],
    output_size: tuple[int, int], window_frames: int | None, window_overlap: int = DEFAULT_UPSAMPLER_WINDOW_OVERLAP,
    max_state_bytes: int | None = None,
) -> int | None:
    """Frames per sampler run: None for the whole video in one run; ``segment_frames`` as given (more than
    ``window_overlap``); for ``"auto"``, None when :func:`sampler_state_bytes` of the whole video is at most
    ``max_state_bytes`` (default :data:`DEFAULT_MAX_STATE_BYTES`), else as many frames as fit, never
    fewer than one window of ``window_frames``."""
    if segment_frames == "auto":
        budget = DEFAULT_MAX_STATE_BYTES if max_state_bytes is None else max_state_bytes
        per_frame = sampler_state_bytes(num_videos, 1, sample_channels, sample_size, output_size)
        if per_frame * num_frames <= budget:
            return None
        return max(budget // per_frame, window_frames or 1, window_overlap + 1)
    if segment_frames is not None and (isinstance(segment_frames, str) or segment_frames <= window_overlap):
        raise ValueError(f"segment_frames must be more than the windows' overlap ({window_overlap}), 'auto' or None, "
                         f"got {segment_frames!r}")
    return segment_frames


def plan_segments(num_frames: int, segment_frames: int | None, overlap: int) -> list[slice]:
    """The sampler runs of a video of ``num_frames``: slices of ``segment_frames`` (the last one may be shorter),
    each after the first starting ``overlap`` frames before the previous one ends; one slice for None."""
    if segment_frames is None or segment_frames >= num_frames:
        return [slice(0, num_frames)]
    if not 0 <= overlap < segment_frames:
        raise ValueError(f"overlap ({overlap}) must be in 0..{segment_frames - 1} for segments of {segment_frames}")
    return [slice(start, min(start + segment_frames, num_frames))
            for start in range(0, num_frames - overlap, segment_frames - overlap)]


def plan_pieces(length: int, size: int | None, overlap: int) -> list[slice]:
    """Overlapping slices of ``size`` covering ``0..length`` (one slice when ``size`` is None or >= ``length``).

    Consecutive slices overlap by at least ``overlap``; the last one ends at ``length``.
    """
    if size is None or size >= length:
        return [slice(0, length)]
    if not 0 <= overlap < size:
        raise ValueError(f"overlap ({overlap}) must be in 0..{size - 1} for pieces of {size}")
    stride = size - overlap
    starts = list(range(0, length - size, stride)) + [length - size]
    return [slice(start, start + size) for start in starts]


# ------------------------------------------------------------------------------------ the cascade
# The intermediate stages CascadePipeline(keep_stages=True) reports, in cascade order.
KEY_FRAMES, INTERPOLATED = "key_frames", "interpolated"


@dataclass(frozen=True)
class CascadeSteps:
    """Denoising steps (scheduler steps, as counted by ``callback_on_step_end``) each stage will run."""

    key_frames: int
    interpolation: int
    upsampling: int

    @property
    def total(self) -> int:
        """All stages together."""
        return self.key_frames + self.interpolation + self.upsampling


def count_cascade_steps(
    num_frames: int,
    *,
    fps_multiplier: int = 1,
    upscale: int = 1,
    num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    upsampler_steps: int = DEFAULT_UPSAMPLER_STEPS,
    upsampling_segments: int = 1,
    window_frames: int | None = None,
    context_frames: int = DEFAULT_CONTEXT_FRAMES,
    num_given: int = 0,
    window_candidates: int = 1,
) -> CascadeSteps:
    """The :class:`CascadeSteps` of one cascade run: ``num_frames`` new key frames in windows of ``window_frames``
    (None: one window) after ``num_given`` given frames, each window with >= 2 context frames sampled
    ``window_candidates`` times (:func:`~videoldm.pipelines.prediction.select_continuation`), then the
    interpolation windows and the upsampler's steps in each of its ``upsampling_segments`` sampler runs
    (:meth:`~videoldm.pipelines.VideoUpsamplerPipeline.plan_segments`).

    Counts one scheduler step per requested step (multistep and DDIM schedulers; Heun-type ones take more).
    """
    if window_frames is None:
        key_windows = 1
    else:
        plan = plan_rollout(num_frames, window_frames, context_frames, num_given)
        key_windows = sum(window_samples(window, window_candidates) for window in plan)
    interpolation_windows, keys = 0, num_frames + num_given
    for _ in range(PASSES_PER_FACTOR.get(fps_multiplier, 0)):
        interpolation_windows += len(plan_interpolation(keys, DEFAULT_WINDOW_KEY_FRAMES))
        keys = INTERPOLATION_FACTOR * (keys - 1) + 1
    return CascadeSteps(
        key_frames=key_windows * num_inference_steps,
        interpolation=interpolation_windows * num_inference_steps,
        upsampling=upsampler_steps * upsampling_segments if upscale > 1 else 0,
    )
