"""Moving digits: the embedded video data set, built from scikit-learn's bundled 8x8 digits.

Every video is generated on the fly from ``(config, index)``: one or more digits (the 1797 images
of ``sklearn.datasets.load_digits``, no download) move with constant velocity on a dark canvas and
bounce off its edges. Because identities and trajectories are known exactly, the set doubles as a
quality benchmark (digit-identity consistency, motion against the true trajectory, interpolation
against real in-between frames, the warping error along the true flow). The measurement tools
(digit classifier, centroids, exact flow) live with the benchmarks, in
``benchmarks/digits_measures.py``.

Size: the default canvas is 32x32 pixels, 1 channel, with digits upscaled to 12x12. A
4x-downsampling autoencoder turns a 32x32 frame into an 8x8x4 latent, so the whole Video LDM stack
trains on two CPU cores in minutes, while 12 px digits in a 32 px canvas leave room for visible
motion (a free range of 20 px per axis) and for two digits to pass each other.

Coordinates: pixel ``(i, j)`` of the canvas (row, column) has its centre at ``(y, x) = (i, j)``.
A digit's ``position`` is the ``(y, x)`` of the centre of its top-left pixel and is a float:
digits are placed with exact sub-pixel bilinear sampling (``grid_sample``), so motion is smooth
and the rendered intensity centroid moves exactly with the recorded position. Positions stay in
``[0, canvas_size - digit_size]``, so a digit is always fully inside the canvas.

Split: held out by digit *image* (a fixed permutation of the 1797 images, the last
``held_out_fraction`` of it is "test"), so test videos only show handwriting never seen in
training.
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

_SPLITS = ("train", "test")
# Fixed, and independent of ``MovingDigitsConfig.seed``: changing the video seed must never move a
# digit image across the train/test boundary.
_SPLIT_PERMUTATION_SEED = 0


@dataclass(frozen=True)
class MovingDigitsConfig:
    """How moving-digits videos are generated. Sizes in pixels, speeds in pixels per frame.

    ``two_digit_prob``: each digit beyond the first is present with this probability, so with
    ``max_digits=2`` it is the probability that a video shows two digits.
    """

    canvas_size: int = 32
    digit_size: int = 12
    num_frames: int = 16
    max_digits: int = 2
    two_digit_prob: float = 0.5
    min_speed: float = 1.0
    max_speed: float = 2.5
    split: str = "train"
    held_out_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {self.split!r}")
        # A digit needs room to move, otherwise edge reflections never terminate.
        if not 0 < self.digit_size < self.canvas_size:
            raise ValueError("need 0 < digit_size < canvas_size")
        if self.num_frames < 1 or self.max_digits < 1:
            raise ValueError("num_frames and max_digits must be >= 1")
        if not 0.0 <= self.two_digit_prob <= 1.0:
            raise ValueError("two_digit_prob must be in [0, 1]")
        if not 0.0 <= self.min_speed <= self.max_speed:
            raise ValueError("need 0 <= min_speed <= max_speed")
        if not 0.0 < self.held_out_fraction < 1.0:
            raise ValueError("held_out_fraction must be in (0, 1)")


@dataclass
class MovingDigitsSample:
    """One video and its ground truth. ``D = max_digits``; absent digits are padded.

    frames:     (T, 1, H, W) float in [-1, 1], background -1.
    labels:     (D,) long, digit classes in the order the digits were drawn, -1 for absent digits.
    positions:  (T, D, 2) float, (y, x) of each digit's top-left pixel centre; NaN if absent.
    centroids:  (T, D, 2) float, (y, x) intensity centroid of each placed digit (what
                ``centroid_of_mass`` in ``benchmarks/digits_measures.py`` measures on a
                single-digit frame); NaN if absent.
                The box centre is ``positions + (digit_size - 1) / 2``.
    velocities: (T, D, 2) float, velocity at frame t after any bounce into it:
                ``positions[t + 1] = positions[t] + velocities[t]`` unless ``bounced[t + 1]``.
                NaN if absent.
    bounced:    (T, D) bool, true where the digit hit an edge between frames t-1 and t.
    """

    frames: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor
    centroids: torch.Tensor
    velocities: torch.Tensor
    bounced: torch.Tensor


@lru_cache(maxsize=1)
def _all_digit_images() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # deferred: importing scikit-learn takes ~1 s

    digits = load_digits()
    images = torch.from_numpy(digits.images / 16.0).float()
    return images, torch.from_numpy(digits.target).long()


def _split_indices(split: str, held_out_fraction: float) -> np.ndarray:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    num_images = len(_all_digit_images()[0])
    permutation = np.random.default_rng(_SPLIT_PERMUTATION_SEED).permutation(num_images)
    num_train = num_images - round(held_out_fraction * num_images)
    return permutation[:num_train] if split == "train" else permutation[num_train:]


def digit_images(split: str, held_out_fraction: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """The sklearn digit images of one split.

    Returns images (N, 8, 8) float in [0, 1] and labels (N,) long; train and test are disjoint.
    """
    images, labels = _all_digit_images()
    indices = torch.from_numpy(_split_indices(split, held_out_fraction))
    return images[indices].clone(), labels[indices].clone()


@lru_cache(maxsize=8)
def _upscaled_split(
    split: str, held_out_fraction: float, digit_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split images upscaled to (N, S, S) in [0, 1], their labels (N,), and their intensity
    centroids (N, 2) in digit-pixel coordinates (the offset from a digit's position to its
    centroid)."""
    images, labels = digit_images(split, held_out_fraction)
    upscaled = F.interpolate(
        images[:, None], size=(digit_size, digit_size), mode="bilinear", antialias=True
    )[:, 0].clamp(0.0, 1.0)
    coords = torch.arange(digit_size, dtype=torch.float32)
    mass = upscaled.sum(dim=(1, 2))
    centroid_y = (upscaled.sum(dim=2) * coords).sum(dim=1) / mass
    centroid_x = (upscaled.sum(dim=1) * coords).sum(dim=1) / mass
    return upscaled, labels, torch.stack([centroid_y, centroid_x], dim=1)


def _place(digits: torch.Tensor, positions: torch.Tensor, canvas_size: int) -> torch.Tensor:
    """Bilinear sub-pixel placement: digits (B, S, S) in [0, 1] at float top-left positions
    (B, 2) -> canvases (B, H, W) in [0, 1]. Outside the digit box the sample is zero."""
    digit_size = digits.shape[-1]
    pixels = torch.arange(canvas_size, dtype=torch.float32)
    # Canvas pixel i samples digit coordinate i - y; align_corners=True maps -1/+1 to the centres
    # of the first/last digit pixels, so that coordinate normalises to 2 (i - y) / (S - 1) - 1.
    grid_y = 2.0 * (pixels[None, :] - positions[:, :1]) / (digit_size - 1) - 1.0
    grid_x = 2.0 * (pixels[None, :] - positions[:, 1:]) / (digit_size - 1) - 1.0
    grid = torch.stack(
        [
            grid_x[:, None, :].expand(-1, canvas_size, -1),
            grid_y[:, :, None].expand(-1, -1, canvas_size),
        ],
        dim=-1,
    )
    placed = F.grid_sample(
        digits[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return placed[:, 0]


@dataclass
class _Trajectory:
    """Unpadded ground truth of one video with n digits (n <= max_digits)."""

    digits: torch.Tensor  # (n, S, S) in [0, 1]
    labels: torch.Tensor  # (n,)
    centroid_offsets: torch.Tensor  # (n, 2)
    positions: torch.Tensor  # (T, n, 2)
    velocities: torch.Tensor  # (T, n, 2)
    bounced: torch.Tensor  # (T, n)


def _simulate(index: int, config: MovingDigitsConfig) -> _Trajectory:
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    images, labels, centroid_offsets = _upscaled_split(
        config.split, config.held_out_fraction, config.digit_size
    )
    # One independent stream per video, so a video never depends on which others were generated.
    rng = np.random.default_rng([config.seed, _SPLITS.index(config.split), index])
    num_digits = 1 + rng.binomial(config.max_digits - 1, config.two_digit_prob)
    chosen = rng.choice(len(images), size=num_digits, replace=False)
    limit = float(config.canvas_size - config.digit_size)
    position = rng.uniform(0.0, limit, size=(num_digits, 2))
    angle = rng.uniform(0.0, 2.0 * np.pi, size=num_digits)
    speed = rng.uniform(config.min_speed, config.max_speed, size=num_digits)
    velocity = speed[:, None] * np.stack([np.sin(angle), np.cos(angle)], axis=1)

    positions = np.empty((config.num_frames, num_digits, 2))
    velocities = np.empty((config.num_frames, num_digits, 2))
    bounced = np.zeros((config.num_frames, num_digits), dtype=bool)
    for t in range(config.num_frames):
        if t > 0:
            position = position + velocity
            # Several reflections per step only happen when speed exceeds the free range.
            while True:
                below, above = position < 0.0, position > limit
                out = below | above
                if not out.any():
                    break
                position = np.where(below, -position, position)
                position = np.where(above, 2.0 * limit - position, position)
                velocity = np.where(out, -velocity, velocity)
                bounced[t] |= out.any(axis=1)
        positions[t], velocities[t] = position, velocity

    chosen_t = torch.from_numpy(chosen)
    return _Trajectory(
        digits=images[chosen_t],
        labels=labels[chosen_t],
        centroid_offsets=centroid_offsets[chosen_t],
        positions=torch.from_numpy(positions).float(),
        velocities=torch.from_numpy(velocities).float(),
        bounced=torch.from_numpy(bounced),
    )


def _render(trajectory: _Trajectory, frame_indices: slice, canvas_size: int) -> torch.Tensor:
    """Selected frames (T', 1, H, W) in [-1, 1]; overlapping digits composite by max."""
    positions = trajectory.positions[frame_indices]
    num_frames, num_digits = positions.shape[:2]
    digits = trajectory.digits[None].expand(num_frames, -1, -1, -1).flatten(0, 1)
    placed = _place(digits, positions.reshape(-1, 2), canvas_size)
    intensity = placed.view(num_frames, num_digits, canvas_size, canvas_size).amax(dim=1)
    return intensity[:, None] * 2.0 - 1.0


def _pad_digits(values: torch.Tensor, max_digits: int, fill: float | int | bool) -> torch.Tensor:
    """Pad the digit axis (dim 1 of (T, n, ...), or dim 0 of (n,)) up to max_digits with fill."""
    dim = 0 if values.dim() == 1 else 1
    shape = list(values.shape)
    shape[dim] = max_digits - values.shape[dim]
    return torch.cat([values, values.new_full(shape, fill)], dim=dim)


def generate_video(index: int, config: MovingDigitsConfig) -> MovingDigitsSample:
    """Video number ``index`` (>= 0) of ``config``; deterministic in (config, index) alone.

    Returns a ``MovingDigitsSample`` with frames (T, 1, H, W) and padded ground truth over
    D = max_digits digits (see its docstring).
    """
    trajectory = _simulate(index, config)
    centroids = trajectory.positions + trajectory.centroid_offsets
    pad = config.max_digits
    return MovingDigitsSample(
        frames=_render(trajectory, slice(None), config.canvas_size),
        labels=_pad_digits(trajectory.labels, pad, -1),
        positions=_pad_digits(trajectory.positions, pad, float("nan")),
        centroids=_pad_digits(centroids, pad, float("nan")),
        velocities=_pad_digits(trajectory.velocities, pad, float("nan")),
        bounced=_pad_digits(trajectory.bounced, pad, False),
    )


class MovingDigitsVideos(Dataset):
    """``length`` videos, item i = ``generate_video(i, config)``.

    Items are dicts: ``video`` (T, 1, H, W) float in [-1, 1], ``labels`` (max_digits,) long with -1
    padding. ``cache=True`` keeps generated items in memory (per process: each DataLoader worker
    holds its own cache).
    """

    def __init__(self, config: MovingDigitsConfig, length: int, cache: bool = False) -> None:
        self.config = config
        self.length = length
        self._cache: dict[int, dict[str, torch.Tensor]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        sample = generate_video(index, self.config)
        item = {"video": sample.frames, "labels": sample.labels}
        if self._cache is not None:
            self._cache[index] = item
        return item


class MovingDigitsFrames(Dataset):
    """Single frames for image training: item i is frame ``i % T`` of video ``i // T`` of
    ``MovingDigitsVideos(config, num_videos)`` (bit-identical to it; only that frame is rendered).

    Taking frames of the videos, rather than fresh random placements, keeps the image stage on
    exactly the distribution of frames the video stages see. Items are dicts: ``image``
    (1, H, W) float in [-1, 1], ``labels`` (max_digits,) long (the video's digits, -1 padded).
    """

    def __init__(self, config: MovingDigitsConfig, num_videos: int) -> None:
        self.config = config
        self.num_videos = num_videos

    def __len__(self) -> int:
        return self.num_videos * self.config.num_frames

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        video_index, frame_index = divmod(index, self.config.num_frames)
        trajectory = _simulate(video_index, self.config)
        frame = _render(trajectory, slice(frame_index, frame_index + 1), self.config.canvas_size)
        return {
            "image": frame[0],
            "labels": _pad_digits(trajectory.labels, self.config.max_digits, -1),
        }
