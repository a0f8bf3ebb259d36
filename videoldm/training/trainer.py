"""One accelerate-based trainer shared by every stage's recipe.

A *stage* (see :mod:`videoldm.training.stages`) says what is trained and how its loss is computed;
the trainer owns everything else: devices and mixed precision (accelerate), the optimiser, an EMA
of the trained weights, a progress bar with loss and speed, checkpoints and exact resumption.

Batches are drawn by index from a generator seeded with ``(seed, step)``, so a resumed run sees
exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol

import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..data.cache import FramesOfVideos, build_cache
from ..data.sources import draw_generator

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
MIXED_PRECISIONS = ("no", "fp16", "bf16")


@dataclass
class TrainSettings:
    """Optimisation settings of a recipe's ``train:`` section."""

    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    mixed_precision: str = "no"
    num_workers: int = 1
    cache_data: bool = False
    discriminator_learning_rate: float | None = None

    def __post_init__(self) -> None:
        at_least = {"steps": 1, "batch_size": 1, "checkpoint_every": 1, "keep_checkpoints": 1, "log_every": 1,
                    "warmup_steps": 0, "weight_decay": 0, "grad_clip": 0, "seed": 0, "num_workers": 0}
        for name, minimum in at_least.items():
            if not getattr(self, name) >= minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {getattr(self, name)}")
        for name in ("learning_rate", "discriminator_learning_rate"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISIONS}, got {self.mixed_precision!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainSettings":
        """Settings from a dict; unknown keys are an error naming them."""
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown train settings {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)


class Stage(Protocol):
    """What a recipe provides to the trainer."""

    def dataset(self) -> Dataset: ...

    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...

    def modules(self) -> dict[str, torch.nn.Module]: ...

    def loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]: ...

    def export(self, output_dir: Path) -> None: ...


@dataclass
class TrainResult:
    """Where a run ended: steps done, last logged losses, seconds spent in this process."""

    step: int
    logs: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Tensors stacked; strings (captions) as a list."""
    return {
        key: [sample[key] for sample in samples] if isinstance(samples[0][key], str) else torch.stack([sample[key] for sample in samples])
        for key in samples[0]
    }


def _latest_checkpoint(output_dir: Path) -> Path | None:
    checkpoints = sorted(output_dir.glob(f"{CHECKPOINT_PREFIX}*"), key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))
    complete = [path for path in checkpoints if (path / STATE_FILE).is_file()]
    return complete[-1] if complete else None


class Trainer:
    """Trains ``stage`` for ``settings.steps`` steps, checkpointing into ``output_dir``."""

    def __init__(self, stage: Stage, settings: TrainSettings, output_dir: str | Path) -> None:
        self.stage = stage
        self.settings = settings
        self.output_dir = Path(output_dir)
        self.accelerator = Accelerator(mixed_precision=settings.mixed_precision, cpu=not torch.cuda.is_available())
        self.device = self.accelerator.device
        for module in stage.modules().values():
            module.to(self.device)
        self.parameters = list(stage.trainable_parameters())
        if not self.parameters:
            raise ValueError("the stage has no trainable parameters")
        self.optimizer = torch.optim.AdamW(
            self.parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        warmup = max(settings.warmup_steps, 1)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warmup))
        self.optimizer, self.lr_scheduler = self.accelerator.prepare(self.optimizer, self.lr_scheduler)
        self.ema = EMAModel(self.parameters, decay=settings.ema_decay)
        self.ema.to(self.device)
        self.accelerator.register_for_checkpointing(self.ema)
        self.discriminator_optimizer = None
        discriminator_parameters = getattr(stage, "discriminator_parameters", None)
        if discriminator_parameters is not None:
            lr = settings.discriminator_learning_rate or settings.learning_rate
            self.discriminator_optimizer = self.accelerator.prepare(
                torch.optim.AdamW(list(discriminator_parameters()), lr=lr, betas=(0.5, 0.9))
            )
        self.dataset = stage.dataset()
        # Image stages train on single frames of the same videos: they need the cached video tensor.
        frames_only = getattr(stage, "frames_only", False)
        if settings.cache_data or frames_only:
            self.dataset = build_cache(self.dataset, workers=settings.num_workers).to(self.device)
        if frames_only:
            self.dataset = FramesOfVideos(self.dataset)
        self._stream, self._stream_step = None, None
        self.step = 0

    # ------------------------------------------------------------------------- batches
    def batch(self, step: int) -> dict[str, Any]:
        """The batch of ``step``: a function of ``(seed, step)`` only, so resumption is exact."""
        stream = getattr(self.dataset, "stream", None)
        if stream is not None:
            # A streaming source: the samples at stream positions [step * B, (step + 1) * B).
            if self._stream_step != step:
                self._stream = stream(self.settings.seed, step * self.settings.batch_size)
            batch = _collate([next(self._stream)[1] for _ in range(self.settings.batch_size)])
            self._stream_step = step + 1
        elif hasattr(self.dataset, "sample"):
            # Sources with random choices (clip start, crop): draw n = step * B + j takes its item
            # and every choice from the generator of (seed, n).
            draws = range(step * self.settings.batch_size, (step + 1) * self.settings.batch_size)
            generators = [draw_generator(self.settings.seed, n) for n in draws]
            batch = _collate([self.dataset.sample(int(torch.randint(0, len(self.dataset), (), generator=g)), g)
                              for g in generators])
        else:
            generator = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + step)
            indices = torch.randint(0, len(self.dataset), (self.settings.batch_size,), generator=generator)
            gather = getattr(self.dataset, "gather", None)
            batch = gather(indices) if gather is not None else _collate([self.dataset[int(i)] for i in indices])
        return {
            key: value.to(self.device, torch.float32 if value.is_floating_point() else value.dtype)
            if isinstance(value, torch.Tensor) else value
            for key, value in batch.items()
        }

    # ------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        """Write optimiser, model, EMA and RNG state for the current step."""
        path = self.output_dir / f"{CHECKPOINT_PREFIX}{self.step}"
        self.accelerator.save_state(str(path), safe_serialization=True)
        for name, module in self.stage.modules().items():
            save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, path / f"{name}.safetensors")
        (path / STATE_FILE).write_text(json.dumps({"step": self.step}))
        checkpoints = sorted(
            self.output_dir.glob(f"{CHECKPOINT_PREFIX}*"), key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :])
        )
        for old in checkpoints[: -self.settings.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def resume(self) -> bool:
        """Load the latest complete checkpoint in ``output_dir``, if any; returns whether one was found."""
        path = _latest_checkpoint(self.output_dir)
        if path is None:
            return False
        for name, module in self.stage.modules().items():
            module.load_state_dict(load_file(path / f"{name}.safetensors", device=str(self.device)))
        self.accelerator.load_state(str(path))
        self.step = json.loads((path / STATE_FILE).read_text())["step"]
        return True

    # ------------------------------------------------------------------------- loop
    def train(
        self, resume: bool = True, max_steps: int | None = None, max_seconds: float | None = None
    ) -> TrainResult:
        """Train until ``settings.steps`` (or ``max_steps`` steps / ``max_seconds`` in this call).

        Exports the EMA model when the run completes, or when it stops at the time limit (a
        time-boxed run still yields a usable model; its checkpoint lets a later call continue).
        """
        if resume and self.resume():
            self.accelerator.print(f"resumed from step {self.step}")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        end = self.settings.steps if max_steps is None else min(self.settings.steps, self.step + max_steps)
        logs: dict[str, float] = {}
        started = time.perf_counter()
        progress = tqdm(total=self.settings.steps, initial=self.step, desc="train", dynamic_ncols=True,
                        disable=not self.accelerator.is_local_main_process)
        for module in self.stage.modules().values():
            module.train()
        out_of_time = False
        while self.step < end and not out_of_time:
            batch = self.batch(self.step)
            loss, logs = self.stage.loss(batch, self.step)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss became {loss.item()} at step {self.step}; lower the learning rate")
            self.optimizer.zero_grad(set_to_none=True)
            self.accelerator.backward(loss)
            if self.settings.grad_clip:
                self.accelerator.clip_grad_norm_(self.parameters, self.settings.grad_clip)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.ema.step(self.parameters)
            if self.discriminator_optimizer is not None:
                d_loss, d_logs = self.stage.discriminator_loss(batch, self.step)
                self.discriminator_optimizer.zero_grad(set_to_none=True)
                self.accelerator.backward(d_loss)
                self.discriminator_optimizer.step()
                logs.update(d_logs)
            self.step += 1
            progress.update(1)
            if self.step % self.settings.log_every == 0 or self.step == end:
                progress.set_postfix({key: f"{value:.4f}" for key, value in logs.items()})
            out_of_time = max_seconds is not None and time.perf_counter() - started > max_seconds
            if self.step % self.settings.checkpoint_every == 0 or self.step == end or out_of_time:
                self.save_checkpoint()
        progress.close()
        if self.step >= self.settings.steps or out_of_time:
            self.export()
        return TrainResult(step=self.step, logs=logs, seconds=time.perf_counter() - started)

    def export(self) -> Path:
        """Write the stage's final model (EMA weights) to ``output_dir/final``."""
        final = self.output_dir / "final"
        backup = [parameter.detach().clone() for parameter in self.parameters]
        self.ema.copy_to(self.parameters)
        for module in self.stage.modules().values():
            module.eval()
        self.stage.export(final)
        with torch.no_grad():
            for parameter, saved in zip(self.parameters, backup):
                parameter.copy_(saved)
        return final


def parameters_of(modules: Iterable[torch.nn.Module]) -> list[torch.nn.Parameter]:
    """Parameters of ``modules`` that require gradients."""
    return [p for module in modules for p in module.parameters() if p.requires_grad]
