"""Measurement tools for the moving-digits benchmarks: identity classifier, centroids, exact flow.

Used by the benchmark scripts in this folder and by the tests (``tests/conftest.py`` puts this
folder on ``sys.path``).
"""

import torch
import torch.nn.functional as F
from torch import nn

from videoldm.data.moving_digits import (
    MovingDigitsConfig,
    MovingDigitsSample,
    _place,
    _upscaled_split,
)


def digit_coverage(positions: torch.Tensor, config: MovingDigitsConfig) -> torch.Tensor:
    """Where each digit can put ink: positions ``(T, D, 2)`` (NaN: absent) -> ``(T, D, H, W)``.

    Bilinear placement reaches the pixels within one pixel of the box
    ``[pos, pos + digit_size - 1]`` (its outer ring is a partial sample), so the coverage is that
    open interval on each axis.
    """
    pixels = torch.arange(config.canvas_size, dtype=positions.dtype)
    start = positions[..., None]
    inside = (pixels > start - 1) & (pixels < start + config.digit_size)
    return inside[..., 0, :, None] & inside[..., 1, None, :]


def true_backward_flow(
    sample: MovingDigitsSample, config: MovingDigitsConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact motion of a video: flow ``(T-1, 2, H, W)`` as (dx, dy), valid ``(T-1, H, W)`` bool.

    ``flow[t]`` maps frame t+1 back to frame t (the convention of
    :func:`videoldm.metrics.consistency.backward_warp`): minus the displacement of the digit
    covering a pixel, 0 on the background. ``valid`` drops what one flow cannot explain: pixels two
    digits cover, pixels whose source in frame t is near another digit (or, for the background,
    any digit: disocclusion) and sources outside the canvas. Digits translate rigidly, bounces
    included, so the flow is exact.
    """
    positions, size = sample.positions, config.canvas_size
    num_pairs = positions.shape[0] - 1
    coverage = digit_coverage(positions, config)  # absent digits (NaN) cover nothing
    later, earlier = coverage[1:], coverage[:-1]  # (T-1, D, H, W)
    # Bilinear warping reads the 2x2 pixels around a source; one pixel of margin covers them.
    near_earlier = F.max_pool2d(earlier.float(), kernel_size=3, stride=1, padding=1).bool()
    background = ~later.any(1)
    valid = (later.sum(1) <= 1) & (~background | ~near_earlier.any(1))
    flow = torch.zeros(num_pairs, 2, size, size)
    pixels = torch.arange(size, dtype=positions.dtype)
    pair = torch.arange(num_pairs)[:, None, None]
    for digit in range(positions.shape[1]):
        if positions[0, digit, 0].isnan():
            continue
        dy, dx = (positions[1:, digit] - positions[:-1, digit]).unbind(-1)
        dy, dx = dy[:, None, None], dx[:, None, None]
        mine = later[:, digit]
        flow[:, 0] = torch.where(mine, -dx, flow[:, 0])
        flow[:, 1] = torch.where(mine, -dy, flow[:, 1])
        source_y = (pixels[None, :, None] - dy).expand(-1, size, size)
        source_x = (pixels[None, None, :] - dx).expand(-1, size, size)
        inside = (source_y >= 0) & (source_y <= size - 1)
        inside &= (source_x >= 0) & (source_x <= size - 1)
        others = torch.cat([near_earlier[:, :digit], near_earlier[:, digit + 1 :]], dim=1).any(1)
        row = source_y.round().long().clamp(0, size - 1)
        col = source_x.round().long().clamp(0, size - 1)
        valid &= ~mine | (inside & ~others[pair, row, col])
    return flow, valid


def centroid_of_mass(frames: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Intensity-weighted centroid (y, x) in pixel coordinates: frames (..., 1, H, W) in [-1, 1]
    -> (..., 2). NaN for frames with no pixel above background.

    Weights are intensities in [0, 1] (background -1 -> 0); those at or below ``threshold`` count as
    background, which keeps a generated video's faint background noise from pulling the centroid
    towards the canvas centre (0 is exact for rendered data).
    """
    intensity = ((frames[..., 0, :, :] + 1.0) / 2.0).clamp(0.0, 1.0)
    weights = torch.where(intensity > threshold, intensity, torch.zeros_like(intensity))
    height, width = weights.shape[-2:]
    ys = torch.arange(height, dtype=weights.dtype, device=weights.device)
    xs = torch.arange(width, dtype=weights.dtype, device=weights.device)
    mass = weights.sum(dim=(-2, -1))
    centroid_y = (weights.sum(dim=-1) * ys).sum(dim=-1) / mass
    centroid_x = (weights.sum(dim=-2) * xs).sum(dim=-1) / mass
    return torch.stack([centroid_y, centroid_x], dim=-1)


class DigitClassifier(nn.Module):
    """Small CNN: frames (N, 1, H, W) in [-1, 1] holding one digit -> logits (N, 10).

    Global max pooling at the end makes it indifferent to where the digit is and to the canvas size,
    and learns that invariance much faster than average pooling. Kept narrow so that training takes
    seconds on two CPU cores.
    """

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * width, num_classes),
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (N, 1, H, W) -> logits (N, num_classes)."""
        return self.net(frames)


def _random_single_digit_frames(
    split: str, config: MovingDigitsConfig, count: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` frames (count, 1, H, W) in [-1, 1], each one random digit of ``split`` at a
    uniformly random position, and their labels (count,)."""
    images, labels, _ = _upscaled_split(split, config.held_out_fraction, config.digit_size)
    chosen = torch.randint(len(images), (count,), generator=generator)
    limit = config.canvas_size - config.digit_size
    positions = torch.rand(count, 2, generator=generator) * limit
    placed = _place(images[chosen], positions, config.canvas_size)
    return placed[:, None] * 2.0 - 1.0, labels[chosen]


@torch.no_grad()
def classify_frames(model: nn.Module, frames: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Digit class probabilities: frames (N, 1, H, W) in [-1, 1] -> (N, 10), rows sum to 1.

    Runs in eval mode and restores the model's previous mode afterwards.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probabilities = torch.cat(
        [model(chunk.to(device)).softmax(dim=-1).cpu() for chunk in frames.split(batch_size)]
    )
    model.train(was_training)
    return probabilities


def train_digit_classifier(
    config: MovingDigitsConfig | None = None,
    steps: int = 600,
    seed: int = 0,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    num_eval_frames: int = 2000,
) -> tuple[DigitClassifier, float]:
    """Train a ``DigitClassifier`` on single-digit frames of train-split digit images (fresh random
    placements every batch) and measure it on single-digit frames of the held-out test images.

    Uses ``config``'s canvas/digit sizes and held-out fraction (its ``split`` is ignored). The
    global torch RNG is left untouched. Returns the model (eval mode) and the held-out accuracy in
    [0, 1].
    """
    config = config or MovingDigitsConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitClassifier()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    # Cosine decay to zero: a short run still ends with small, stable steps.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    for _ in range(steps):
        frames, labels = _random_single_digit_frames("train", config, batch_size, generator)
        loss = F.cross_entropy(model(frames), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()

    eval_generator = torch.Generator().manual_seed(seed + 1)
    frames, labels = _random_single_digit_frames("test", config, num_eval_frames, eval_generator)
    accuracy = (classify_frames(model, frames).argmax(dim=-1) == labels).float().mean().item()
    model.eval()
    return model, accuracy
