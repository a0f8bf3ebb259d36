"""Validation videos during training: a recipe's ``validation:`` section (or ``videoldm train --validate-every N``).

Every ``every`` steps and at the last step, the main process samples the stage's validation videos
with the EMA weights (the weights the export will hold), with fixed seeds so that runs and steps
compare, and writes them as ``OUTPUT_DIR/validation/step-XXXXXX/NN_<condition>.gif``; a tracker
(``train.log_with``) gets them too: TensorBoard as animated images (its video format), the others
as the validation's cost only. Sampling runs between a step and its checkpoint, so a run resumed
from its last checkpoint neither skips nor repeats a validation step (a run killed between the two
samples that step again, to the same files; TensorBoard's purge at the resumed step drops the
earlier events).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.io import write_video
from ..defaults import DEFAULT_FPS, DEFAULT_GUIDANCE_SCALE

VALIDATION_DIR = "validation"


@dataclass
class ValidationSettings:
    """A recipe's ``validation:`` section.

    One video per entry of ``prompts`` (text models) or ``labels`` (label models: the labels of each
    video, e.g. ``[[3], [7, 1]]``), or ``num_videos`` unconditional ones when neither is given;
    ``num_frames`` (default: the training clips' length), ``steps`` (default: the pipeline's),
    ``guidance_scale`` over the condition (as ``videoldm generate``'s), ``seed`` (video ``i`` uses
    ``seed + i``), ``fps`` of the written GIFs.
    """

    every: int = 500
    prompts: list[str] | None = None
    labels: list[list[int]] | None = None
    num_videos: int = 2
    num_frames: int | None = None
    steps: int | None = None
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    seed: int = 0
    fps: float = DEFAULT_FPS

    def __post_init__(self) -> None:
        for name in ("every", "num_videos", "num_frames", "steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.prompts is not None and self.labels is not None:
            raise ValueError("give prompts (a text model) or labels (a label model), not both")
        for name in ("prompts", "labels"):
            if getattr(self, name) == []:
                raise ValueError(f"{name} must list at least one video's condition")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be a positive number, got {self.fps}")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise ValueError(f"guidance_scale must be a number >= 0, got {self.guidance_scale}")

    def due(self, step: int, last_step: int) -> bool:
        """Whether step ``step`` (1-based, just trained) samples validation videos: every ``every`` steps and the last."""
        return step % self.every == 0 or step == last_step

    def conditions(self) -> list[dict[str, Any]]:
        """The keyword arguments of each validation video's condition: ``prompt``, ``labels`` or nothing."""
        if self.prompts is not None:
            return [{"prompt": prompt} for prompt in self.prompts]
        if self.labels is not None:
            return [{"labels": torch.tensor([labels])} for labels in self.labels]
        return [{} for _ in range(self.num_videos)]


def check_stage_validates(stage_class: type) -> None:
    """Raise ValueError unless the stage class makes validation videos (has ``validation_videos``)."""
    if getattr(stage_class, "validation_videos", None) is None:
        raise ValueError(f"validation: the {stage_class.__name__} makes no validation videos; remove the validation "
                         "section (the video, prediction and decoder stages make them)")


def video_names(validation: ValidationSettings) -> list[str]:
    """File stems of the validation videos, in order: ``NN`` and a slug of the condition (``00_a-red-car``)."""
    names = []
    for index, condition in enumerate(validation.conditions()):
        if "prompt" in condition:
            slug = re.sub(r"[^a-z0-9]+", "-", condition["prompt"].lower()).strip("-")[:40]
        elif "labels" in condition:
            slug = "labels-" + "-".join(str(label) for label in condition["labels"][0].tolist())
        else:
            slug = "unconditional"
        names.append(f"{index:02d}_{slug or 'empty'}")
    return names


def step_directory(output_dir: Path, step: int) -> Path:
    """Where the validation videos of ``step`` go: ``output_dir/validation/step-XXXXXX``."""
    return output_dir / VALIDATION_DIR / f"step-{step:06d}"


def write_validation_videos(videos: dict[str, torch.Tensor], directory: Path, fps: float) -> dict[str, Path]:
    """Write ``{name: (T, C, H, W) in [-1, 1]}`` as ``directory/name.gif`` (each atomically); returns name -> path."""
    return {name: write_video(frames, directory / f"{name}.gif", fps) for name, frames in videos.items()}


def log_validation_videos(writer: Any, files: dict[str, Path], videos: dict[str, torch.Tensor], step: int) -> None:
    """Add each written GIF to a TensorBoard ``SummaryWriter`` as an animated image (tag ``validation/NAME``).

    TensorBoard's own video summary is such a GIF; torch's ``add_video`` would encode it again through moviepy.
    """
    from tensorboard.compat.proto.summary_pb2 import Summary

    values = []
    for name, path in files.items():
        height, width = videos[name].shape[-2:]
        image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=path.read_bytes())
        values.append(Summary.Value(tag=f"validation/{name}", image=image))
    writer.file_writer.add_summary(Summary(value=values), step)
    writer.flush()
