"""One accelerate-based trainer shared by every stage's recipe.

A *stage* (see :mod:`videoldm.training.stages`) says what is trained and how its loss is computed;
the trainer owns everything else: processes, devices and mixed precision (accelerate), the data
(global draws, :mod:`videoldm.training.draws`), the optimiser, gradient accumulation, an EMA of the
trained weights, a progress bar and a loss log, checkpoints, interruption and exact resumption.

How a stage's modules meet accelerate (the one mechanism): the trainer wraps the stage's loss in a
:class:`StageLoss` module that holds the stage's *trained* modules (those with trainable
parameters) and whose ``forward(batch, step)`` is ``stage.loss``. That module is what
``accelerator.prepare`` wraps (DistributedDataParallel across processes, autocast for mixed
precision), so stages keep calling their own modules directly and stay free of accelerate; a
stage with a discriminator gets a second one around ``discriminator_loss``.

One process, one GPU or many machines: ``videoldm train RECIPE`` or
``accelerate launch [--multi_gpu --num_processes N --num_machines M ...] -m videoldm train RECIPE``.
``settings.batch_size`` is the *global* batch: a run on N processes trains on exactly the samples,
noise and averaged gradients of a 1-process run with the same batch size.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Protocol

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedType, tracking
from accelerate.utils import LoggerType, gather_object, send_to_device
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data.cache import FramesOfVideos, build_cache
from .draws import (SKIPPED_FILES, DrawDataset, GlobalDrawBatches, RankStream, collate, init_data_worker,
                    micro_batch_size, rank_draws)
from .validation import (ValidationSettings, check_stage_validates, log_validation_videos, step_directory,
                         write_validation_videos)

CHECKPOINT_PREFIX = "checkpoint-"
PARTIAL_SUFFIX = ".partial"
STATE_FILE = "trainer_state.json"
TRAINABLE_FILE = "trainable.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.safetensors"
LOG_FILE = "train_log.jsonl"
TRACKER_PROJECT = "videoldm"  # the trackers' run name: tensorboard writes under OUTPUT_DIR/videoldm/
MIXED_PRECISIONS = ("no", "fp16", "bf16")


@dataclass
class TrainSettings:
    """Optimisation settings of a recipe's ``train:`` section.

    ``batch_size`` is the global batch (all processes, all accumulation steps together); it must
    divide by ``processes x gradient_accumulation_steps``. ``mixed_precision`` (fp16/bf16) applies
    on GPUs; a CPU run computes in float32. ``log_with`` names an accelerate tracker (``tensorboard``,
    ``wandb``, ...): every ``log_every`` steps it gets the losses, learning rate, step time, samples per
    second and peak memory, beside ``train_log.jsonl``.
    """

    steps: int = 1000
    batch_size: int = 32
    gradient_accumulation_steps: int = 1
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
    gradient_checkpointing: bool = False
    num_workers: int = 1
    cache_data: bool = False
    discriminator_learning_rate: float | None = None
    log_with: str | None = None

    def __post_init__(self) -> None:
        at_least = {"steps": 1, "batch_size": 1, "gradient_accumulation_steps": 1, "checkpoint_every": 1,
                    "keep_checkpoints": 1, "log_every": 1, "warmup_steps": 0, "weight_decay": 0, "grad_clip": 0,
                    "seed": 0, "num_workers": 0}
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
        trackers = [tracker.value for tracker in LoggerType if tracker != LoggerType.ALL]
        if self.log_with is not None and self.log_with not in trackers:
            raise ValueError(f"log_with must be one of {trackers}, got {self.log_with!r}")
        if self.batch_size % self.gradient_accumulation_steps:
            raise ValueError(
                f"batch_size {self.batch_size} must divide by gradient_accumulation_steps {self.gradient_accumulation_steps}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainSettings":
        """Settings from a dict; unknown keys are an error naming them."""
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown train settings {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)


class Stage(Protocol):
    """What a recipe provides to the trainer.

    ``loss(batch, step)``: the batch holds the source's entries stacked (``"video"`` ``(B, T, C, H, W)``,
    ``"labels"`` ``(B, K)``, captions as a list of str, ...) plus ``"draw_seed"`` ``(B,)`` int64, from
    which every per-sample random choice must come (:mod:`videoldm.training.draws`), so the
    result does not depend on how the global batch is split over processes. Optional:
    ``discriminator_parameters()`` / ``discriminator_loss(batch, step)`` (a second optimiser, run
    after the generator's step), ``frames_only = True`` (train on single frames of the videos) and
    ``check_validation(validation)`` / ``validation_videos(validation) -> {name: (T, C, H, W)}`` (a
    recipe's ``validation:`` section, :mod:`videoldm.training.validation`).
    """

    def dataset(self) -> Dataset: ...

    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...

    def modules(self) -> dict[str, torch.nn.Module]: ...

    def loss(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]: ...

    def export(self, output_dir: Path) -> None: ...


@dataclass
class TrainResult:
    """Where a run ended: steps done, last logged losses, seconds spent in this process."""

    step: int
    logs: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training after a checkpoint was written; exit status ``128 + signum``."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}; saved {checkpoint}; "
                         "rerun the same command to resume")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; nothing of that step was applied or saved."""


class SetupError(ValueError):
    """The launch or the recipe's settings do not fit the trainer (a user error, found before training)."""


class CheckpointMismatch(ValueError):
    """The latest checkpoint does not fit the recipe's models or optimiser."""


class StageLoss(torch.nn.Module):
    """The module accelerate prepares: ``trained`` modules as children, ``forward`` = ``compute(batch, step)``.

    DDP synchronises the gradients of every trainable parameter under it in the backward pass of
    ``forward``'s result; autocast covers the whole loss.
    """

    def __init__(self, trained: dict[str, torch.nn.Module], compute: Callable[[dict[str, Any], int], Any]) -> None:
        super().__init__()
        self.trained = torch.nn.ModuleDict(trained)
        self.compute = compute

    def forward(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return self.compute(batch, step)


def _checkpoint_step(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX) :])


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """``checkpoint-N`` directories of ``output_dir`` that were completely written, oldest first."""
    found = [path for path in output_dir.glob(f"{CHECKPOINT_PREFIX}*")
             if path.name[len(CHECKPOINT_PREFIX) :].isdigit() and (path / STATE_FILE).is_file()]
    return sorted(found, key=_checkpoint_step)


class _StopSignals:
    """Records the first SIGINT/SIGTERM (training stops after the current step); another one at least
    ``patience`` seconds later stops at once (Ctrl-C twice). Launchers such as torchrun forward the
    signal they got to processes that got it too: such an echo comes within milliseconds."""

    def __init__(self, patience: float = 1.0) -> None:
        self.signum = 0
        self.patience = patience
        self._first = 0.0

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.signum:
            self.signum, self._first = signum, time.monotonic()
        elif time.monotonic() - self._first > self.patience:
            raise KeyboardInterrupt

    @contextmanager
    def installed(self) -> Iterator["_StopSignals"]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return
        previous = {signum: signal.signal(signum, self._handle) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


class Trainer:
    """Trains ``stage`` for ``settings.steps`` steps, checkpointing into ``output_dir``."""

    def __init__(self, stage: Stage, settings: TrainSettings, output_dir: str | Path,
                 validation: ValidationSettings | None = None) -> None:
        self.stage = stage
        self.settings = settings
        self.output_dir = Path(output_dir)
        self.validation = validation
        if validation is not None:
            try:
                check_stage_validates(type(stage))
                stage.check_validation(validation)
            except ValueError as error:
                raise SetupError(str(error)) from None
        on_cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        # accelerate refuses fp16 on CPUs and bf16 there is emulated on most; CPUs compute in float32
        self.mixed_precision = "no" if on_cpu else settings.mixed_precision
        if settings.log_with is not None and not getattr(tracking, f"is_{settings.log_with}_available")():
            raise SetupError(f"train.log_with {settings.log_with}: its package is not installed "
                             f"(pip install {settings.log_with.replace('_', '-')})")
        self.accelerator = Accelerator(
            mixed_precision=self.mixed_precision,
            cpu=on_cpu,
            log_with=settings.log_with,
            project_dir=self.output_dir,
            # each yielded batch is the micro-batch of all processes; accelerate gives each its block
            dataloader_config=DataLoaderConfiguration(split_batches=True, dispatch_batches=False),
        )
        if self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            # their sharded parameters and optimiser states do not fit this trainer's checkpoints and EMA
            raise SetupError(f"the accelerate config asks for {self.accelerator.distributed_type.value}; this trainer "
                             "runs data-parallel (DDP): launch with --multi_gpu instead")
        self.device = self.accelerator.device
        self.world_size = self.accelerator.num_processes
        try:
            self.micro_batch = micro_batch_size(settings.batch_size, self.world_size, settings.gradient_accumulation_steps)
        except ValueError as error:
            raise SetupError(str(error)) from None

        modules = stage.modules()
        for module in modules.values():
            module.to(self.device)
        self.parameters = list(stage.trainable_parameters())
        if not self.parameters:
            raise ValueError("the stage has no trainable parameters")
        discriminator_parameters = getattr(stage, "discriminator_parameters", None)
        self.discriminator_parameters = list(discriminator_parameters()) if discriminator_parameters else []
        self.parameter_names = _parameter_names(modules, self.parameters + self.discriminator_parameters)
        if settings.gradient_checkpointing:
            _enable_gradient_checkpointing(modules, self.parameters)

        self.loss_module = StageLoss(_modules_holding(modules, self.parameters), stage.loss)
        self.optimizer = torch.optim.AdamW(self.parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
        warmup = max(settings.warmup_steps, 1)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, partial(_warmup_factor, warmup=warmup))
        self.loss_module, self.optimizer, self.lr_scheduler = self.accelerator.prepare(
            self.loss_module, self.optimizer, self.lr_scheduler
        )
        self.discriminator_module = self.discriminator_optimizer = None
        if self.discriminator_parameters:
            lr = settings.discriminator_learning_rate or settings.learning_rate
            self.discriminator_module, self.discriminator_optimizer = self.accelerator.prepare(
                StageLoss(_modules_holding(modules, self.discriminator_parameters), stage.discriminator_loss),
                torch.optim.AdamW(self.discriminator_parameters, lr=lr, betas=(0.5, 0.9)),
            )
        self.ema = EMAModel(self.parameters, decay=settings.ema_decay)
        self.ema.to(self.device)

        self.source = dataset = stage.dataset()
        # Image stages train on single frames of the same videos: they need the cached video tensor.
        frames_only = getattr(stage, "frames_only", False)
        self.streaming = hasattr(dataset, "stream")
        if self.streaming and (settings.cache_data or frames_only):
            raise SetupError("cache_data and image stages need a map-style source (with a length), not a stream")
        if getattr(dataset, "buckets", None) is not None and settings.cache_data:
            raise SetupError("cache_data keeps one clip per video, which buckets of several formats cannot stack; "
                             "remove cache_data or buckets")
        if settings.cache_data or frames_only:
            dataset = build_cache(dataset, workers=settings.num_workers)
        if frames_only:
            dataset = FramesOfVideos(dataset)
        self.dataset = dataset
        if not self.streaming:
            self.draws = DrawDataset(dataset, settings.seed, settings.batch_size)
        self.step = 0
        # skips reported by data-loader workers (with each batch) and by the other processes (at the end)
        self._reported_skipped_files: dict[str, str] = {}

    @property
    def skipped_files(self) -> dict[str, str]:
        """The files the data source skipped so far (name -> reason): in this process and its data-loader
        workers, and after :meth:`train` in every process."""
        return {**getattr(self.source, "skipped_files", {}), **self._reported_skipped_files}

    @property
    def skipped(self) -> Counter:
        """:attr:`skipped_files` counted by reason (what :func:`~videoldm.data.sources.skipped_summary` reads)."""
        return Counter(self.skipped_files.values())

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    # ------------------------------------------------------------------------- data
    def batches(self, start_step: int, end_step: int) -> DataLoader:
        """This process's micro-batches of steps ``start_step .. end_step - 1`` (``accumulation`` per step)."""
        settings = self.settings
        if self.streaming:
            # accelerate would have every process read (and decode) the whole stream; each takes its own draws instead
            keep = partial(rank_draws, global_batch=settings.batch_size, world_size=self.world_size,
                           rank=self.accelerator.process_index)
            stream = RankStream(self.dataset, settings.seed, start_step * settings.batch_size, keep)
            workers = min(settings.num_workers, 1)  # one stream, read in order
            return DataLoader(stream, batch_size=self.micro_batch, collate_fn=collate, num_workers=workers,
                              worker_init_fn=init_data_worker if workers else None)
        sampler = GlobalDrawBatches(settings.batch_size, self.world_size, settings.gradient_accumulation_steps,
                                    start_step, end_step)
        loader = DataLoader(self.draws, batch_sampler=sampler, collate_fn=collate, num_workers=settings.num_workers,
                            worker_init_fn=init_data_worker if settings.num_workers else None)
        return self.accelerator.prepare(loader)

    # ------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        """Write trainable weights, EMA, optimiser, LR scheduler, RNG and data position (the step).

        The frozen networks are not saved: they are rebuilt from the recipe. The main process
        writes into ``.checkpoint-N.partial`` and renames it when complete; then only the newest
        ``keep_checkpoints`` complete checkpoints are kept.
        """
        path = self.output_dir / f"{CHECKPOINT_PREFIX}{self.step}"
        if self.is_main and not (path / STATE_FILE).is_file():
            partial_path = self.output_dir / f".{path.name}{PARTIAL_SUFFIX}"
            shutil.rmtree(partial_path, ignore_errors=True)
            partial_path.mkdir(parents=True)
            save_file(self._named(self.parameters + self.discriminator_parameters), partial_path / TRAINABLE_FILE)
            save_file(self._named(self.parameters, self.ema.shadow_params), partial_path / EMA_FILE)
            optimizers = [self.optimizer] + ([self.discriminator_optimizer] if self.discriminator_optimizer else [])
            torch.save(
                {"optimizers": [o.state_dict() for o in optimizers], "lr_scheduler": self.lr_scheduler.state_dict(),
                 "grad_scaler": self.accelerator.scaler.state_dict() if self.accelerator.scaler else None},
                partial_path / OPTIMIZER_FILE,
            )
            rng = {"cpu": torch.get_rng_state()}
            if self.device.type == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state(self.device)
            save_file(rng, partial_path / RNG_FILE)
            state = {"step": self.step, "global_batch": self.settings.batch_size, "processes": self.world_size,
                     "ema_optimization_step": self.ema.optimization_step}
            (partial_path / STATE_FILE).write_text(json.dumps(state))
            partial_path.rename(path)
            for old in complete_checkpoints(self.output_dir)[: -self.settings.keep_checkpoints]:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return path

    def _named(self, parameters: list[torch.nn.Parameter], values: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        values = parameters if values is None else values
        return {self.parameter_names[id(p)]: v.detach().cpu().contiguous() for p, v in zip(parameters, values)}

    def resume(self) -> bool:
        """Load the latest complete checkpoint in ``output_dir``, if any; returns whether one was found.

        Raises :class:`CheckpointMismatch` when its weights or optimiser do not fit this recipe.
        """
        checkpoints = complete_checkpoints(self.output_dir)
        if not checkpoints:
            return False
        path = checkpoints[-1]

        def mismatch(detail: str) -> CheckpointMismatch:
            return CheckpointMismatch(f"{path} does not fit this recipe ({detail}); rerun with --fresh to start over "
                                      "(the old run is set aside, not deleted)")

        if not (path / TRAINABLE_FILE).is_file():
            raise mismatch(f"no {TRAINABLE_FILE}: written by an earlier videoldm")
        trainable = load_file(path / TRAINABLE_FILE)
        expected = {self.parameter_names[id(p)]: p for p in self.parameters + self.discriminator_parameters}
        if trainable.keys() != expected.keys():
            differ = sorted(trainable.keys() ^ expected.keys())
            raise mismatch(f"{len(differ)} trained tensors differ in name, e.g. {differ[0]}")
        for name, parameter in expected.items():
            if trainable[name].shape != parameter.shape:
                raise mismatch(f"{name} has shape {tuple(trainable[name].shape)}, the recipe's {tuple(parameter.shape)}")
        ema = load_file(path / EMA_FILE)
        training = torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        optimizers = [self.optimizer] + ([self.discriminator_optimizer] if self.discriminator_optimizer else [])
        if len(training["optimizers"]) != len(optimizers):
            raise mismatch(f"{len(training['optimizers'])} optimisers, the recipe has {len(optimizers)}")
        with torch.no_grad():
            for name, parameter in expected.items():
                parameter.copy_(trainable[name])
            for parameter, shadow in zip(self.parameters, self.ema.shadow_params):
                shadow.copy_(ema[self.parameter_names[id(parameter)]])
        for optimizer, state in zip(optimizers, training["optimizers"]):
            try:
                optimizer.load_state_dict(state)
            except ValueError as error:
                raise mismatch(f"optimiser: {error}") from None
        self.lr_scheduler.load_state_dict(training["lr_scheduler"])
        if self.accelerator.scaler is not None and training["grad_scaler"] is not None:
            self.accelerator.scaler.load_state_dict(training["grad_scaler"])
        rng = load_file(path / RNG_FILE)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        state = json.loads((path / STATE_FILE).read_text())
        self.ema.optimization_step = state["ema_optimization_step"]
        self.step = state["step"]
        if state["global_batch"] != self.settings.batch_size:
            self.accelerator.print(f"note: {path.name} was trained with global batch {state['global_batch']}, this run "
                                   f"uses {self.settings.batch_size}: from here on it sees other samples than that run would")
        return True

    def _set_aside_previous_run(self) -> None:
        """``--fresh``: move earlier checkpoints, log and export into ``previous-<UTC time>/`` (nothing is deleted)."""
        earlier = [path for path in self.output_dir.iterdir()
                   if path.name.startswith((CHECKPOINT_PREFIX, f".{CHECKPOINT_PREFIX}")) or path.name in (LOG_FILE, "final")]
        if not earlier:
            return
        aside = self.output_dir / f"previous-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"
        aside.mkdir()
        for path in earlier:
            path.rename(aside / path.name)
        self.accelerator.print(f"--fresh: moved the earlier run's checkpoints and log to {aside}")

    def _truncate_log(self) -> None:
        # entries after the resumed step belong to steps that are about to be trained again
        log = self.output_dir / LOG_FILE
        if log.is_file():
            lines = [line for line in log.read_text().splitlines() if json.loads(line)["step"] <= self.step]
            log.write_text("".join(f"{line}\n" for line in lines))

    # ------------------------------------------------------------------------- loop
    def train(
        self, resume: bool = True, max_steps: int | None = None, max_seconds: float | None = None
    ) -> TrainResult:
        """Train until ``settings.steps`` (or ``max_steps`` steps / ``max_seconds`` in this call).

        Exports the EMA model when the run completes, or when it stops at the time limit (a
        time-boxed run still yields a usable model; its checkpoint lets a later call continue).
        SIGINT/SIGTERM finish the current step, write a checkpoint and raise
        :class:`TrainingInterrupted`; a non-finite loss raises :class:`TrainingDiverged` before
        that step changes anything.
        """
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if not resume:
                self._set_aside_previous_run()
        self.accelerator.wait_for_everyone()
        if resume and self.resume():
            self.accelerator.print(f"resumed from step {self.step}")
        if self.is_main:
            self._truncate_log()
        settings = self.settings
        end = settings.steps if max_steps is None else min(settings.steps, self.step + max_steps)
        self.accelerator.print(
            f"{self.world_size} process(es) ({self.accelerator.distributed_type.value}, {self.device.type}), "
            f"global batch {settings.batch_size} = {self.world_size} x {self.micro_batch} x "
            f"{settings.gradient_accumulation_steps} accumulation step(s); mixed precision {self.mixed_precision}; "
            f"gradient checkpointing {'on' if settings.gradient_checkpointing else 'off'}"
        )
        logs: dict[str, float] = {}
        started = time.perf_counter()
        if settings.log_with is not None:
            # TensorBoard drops what an interrupted run logged after the checkpoint this run resumes from
            resumed = {"tensorboard": {"purge_step": self.step + 1}} if self.step else {}
            self.accelerator.init_trackers(TRACKER_PROJECT, config={"batch_size": settings.batch_size,
                                                                    "learning_rate": settings.learning_rate},
                                           init_kwargs=resumed)
        self._logged_at = (self.step, started)
        for module in self.stage.modules().values():
            module.train()
        stop = _StopSignals()
        with ExitStack() as scope:
            progress = scope.enter_context(tqdm(total=settings.steps, initial=self.step, desc="train", dynamic_ncols=True,
                                                disable=not self.is_main))
            scope.enter_context(stop.installed())
            micro_batches = _each(self.batches(self.step, end))
            scope.callback(micro_batches.close)  # shuts its data workers down, also when interrupted
            out_of_time = False
            while self.step < end:
                logs, diverged = self._train_step(micro_batches)
                out_of_time = max_seconds is not None and time.perf_counter() - started > max_seconds
                # every process must take the same decision, or the others wait forever in the next all-reduce
                diverged, signum, out_of_time = self._agree(diverged, stop.signum, out_of_time)
                if diverged:
                    last = complete_checkpoints(self.output_dir)
                    raise TrainingDiverged(
                        f"the loss became NaN or infinite at step {self.step + 1}; nothing of that step was saved"
                        + (f", the last good checkpoint is {last[-1]}" if last else "") + "; lower the learning rate")
                self._apply_step()
                self.step += 1
                progress.update(1)
                if self.step % settings.log_every == 0 or self.step == end:
                    logs = self._log(logs)
                    progress.set_postfix({key: f"{value:.4f}" for key, value in logs.items()})
                if self.validation is not None and self.validation.due(self.step, settings.steps):
                    self.validate()  # before the checkpoint: a run resumed from it has made this step's videos
                if self.step % settings.checkpoint_every == 0 or self.step == end or out_of_time or signum:
                    checkpoint = self.save_checkpoint()
                if signum:
                    raise TrainingInterrupted(signum, self.step, checkpoint)
                if out_of_time:
                    break
        if self.world_size > 1:
            for files in gather_object([self.skipped_files]):  # waits for every process
                self._reported_skipped_files.update(files)
        if self.step >= settings.steps or out_of_time:
            self.export()
        if settings.log_with is not None:
            self.accelerator.end_training()
        return TrainResult(step=self.step, logs=logs, seconds=time.perf_counter() - started)

    def _train_step(self, micro_batches: Iterator[dict[str, Any]]) -> tuple[dict[str, float], bool]:
        """Forward and backward of one step's micro-batches; gradients are synchronised on the last one.

        Returns the logs averaged over the micro-batches and whether any loss was not finite.
        """
        accumulation = self.settings.gradient_accumulation_steps
        modules = [self.loss_module] + ([self.discriminator_module] if self.discriminator_module else [])
        totals: dict[str, float] = {}
        diverged = False
        for micro in range(accumulation):
            batch = next(micro_batches)
            for files in batch.pop(SKIPPED_FILES, ()):
                self._reported_skipped_files.update(files)
            batch = send_to_device(batch, self.device)
            with ExitStack() as no_sync:
                if micro < accumulation - 1:
                    for module in modules:
                        no_sync.enter_context(self.accelerator.no_sync(module))
                loss, logs = self.loss_module(batch, self.step)
                diverged |= not math.isfinite(loss.item())
                self.accelerator.backward(loss / accumulation)
                if self.discriminator_module is not None:
                    d_loss, d_logs = self.discriminator_module(batch, self.step)
                    diverged |= not math.isfinite(d_loss.item())
                    self.accelerator.backward(d_loss / accumulation)
                    logs = {**logs, **d_logs}
            for key, value in logs.items():
                totals[key] = totals.get(key, 0.0) + value / accumulation
        return totals, diverged

    def _agree(self, diverged: bool, signum: int, out_of_time: bool) -> tuple[bool, int, bool]:
        if self.world_size == 1:
            return diverged, signum, out_of_time
        flags = torch.tensor([float(diverged), float(signum), float(out_of_time)], device=self.device)
        flags = self.accelerator.reduce(flags, "max")
        return bool(flags[0]), int(flags[1]), bool(flags[2])

    def _apply_step(self) -> None:
        if self.settings.grad_clip:
            self.accelerator.clip_grad_norm_(self.parameters, self.settings.grad_clip)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.parameters)
        if self.discriminator_optimizer is not None:
            self.discriminator_optimizer.step()
            self.discriminator_optimizer.zero_grad(set_to_none=True)

    def _log(self, logs: dict[str, float]) -> dict[str, float]:
        """Average ``logs`` over processes; the main process appends them to ``train_log.jsonl``."""
        if self.world_size > 1 and logs:
            values = self.accelerator.reduce(torch.tensor(list(logs.values()), device=self.device), "mean")
            logs = dict(zip(logs, values.tolist()))
        if self.is_main:
            entry = {"step": self.step, "lr": self.lr_scheduler.get_last_lr()[0], **logs}
            with open(self.output_dir / LOG_FILE, "a") as log:
                log.write(json.dumps(entry) + "\n")
        if self.settings.log_with is not None:
            (last_step, last_time), now = self._logged_at, time.perf_counter()
            step_seconds = (now - last_time) / max(self.step - last_step, 1)
            self.accelerator.log({**logs, "lr": self.lr_scheduler.get_last_lr()[0], "step_seconds": step_seconds,
                                  "samples_per_second": self.settings.batch_size / step_seconds,
                                  "peak_memory_mb": _peak_memory_mb(self.device)}, step=self.step)
            self._logged_at = (self.step, now)
        return logs

    @contextmanager
    def ema_weights(self) -> Iterator[None]:
        """The stage's modules hold the EMA weights, in eval mode, inside the block; the trained weights,
        modes and random state are back afterwards (sampling must not change the training run)."""
        backup = [parameter.detach().clone() for parameter in self.parameters]
        modes = {module: module.training for module in self.stage.modules().values()}
        self.ema.copy_to(self.parameters)
        for module in modes:
            module.eval()
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                yield
        finally:
            with torch.no_grad():
                for parameter, saved in zip(self.parameters, backup):
                    parameter.copy_(saved)
            for module, training in modes.items():
                module.train(training)

    def export(self) -> Path:
        """Write the stage's final model (EMA weights) to ``output_dir/final`` (main process)."""
        final = self.output_dir / "final"
        if self.is_main:
            with self.ema_weights():
                self.stage.export(final)
        self.accelerator.wait_for_everyone()
        return final

    def validate(self) -> Path:
        """Sample the stage's validation videos with the EMA weights (main process) into
        ``output_dir/validation/step-XXXXXX/``; log them and their cost to the tracker. Returns that folder."""
        directory = step_directory(self.output_dir, self.step)
        if self.is_main:
            started = time.perf_counter()
            with self.ema_weights(), torch.no_grad():
                videos = self.stage.validation_videos(self.validation)
            files = write_validation_videos(videos, directory, self.validation.fps)
            seconds = time.perf_counter() - started
            if self.settings.log_with == LoggerType.TENSORBOARD.value:
                log_validation_videos(self.accelerator.get_tracker(LoggerType.TENSORBOARD.value, unwrap=True),
                                      files, videos, self.step)
            if self.settings.log_with is not None:
                self.accelerator.log({"validation_seconds": seconds}, step=self.step)
            tqdm.write(f"step {self.step}: {len(files)} validation video(s) in {seconds:.1f} s -> {directory}")
        self.accelerator.wait_for_everyone()
        return directory


def _peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: allocated on its GPU, or resident (VmHWM) on a CPU; MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status")
    lines = status.read_text().splitlines() if status.is_file() else []
    return next((int(line.split()[1]) / 1024 for line in lines if line.startswith("VmHWM:")), float("nan"))


def _each(loader: DataLoader) -> Iterator[dict[str, Any]]:
    yield from loader


def _warmup_factor(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup)


def _parameter_names(modules: dict[str, torch.nn.Module], parameters: list[torch.nn.Parameter]) -> dict[int, str]:
    """``id(parameter) -> "module.name"`` for ``parameters``, found in the stage's ``modules``."""
    names = {id(p): f"{key}.{name}" for key, module in modules.items() for name, p in module.named_parameters()}
    missing = [p for p in parameters if id(p) not in names]
    if missing:
        raise ValueError(f"{len(missing)} trainable parameters belong to none of the stage's modules {sorted(modules)}")
    return {id(p): names[id(p)] for p in parameters}


def _modules_holding(modules: dict[str, torch.nn.Module], parameters: list[torch.nn.Parameter]) -> dict[str, torch.nn.Module]:
    wanted = {id(p) for p in parameters}
    return {key: module for key, module in modules.items() if any(id(p) in wanted for p in module.parameters())}


def _enable_gradient_checkpointing(modules: dict[str, torch.nn.Module], parameters: list[torch.nn.Parameter]) -> None:
    """Recompute activations in backward, in every trained module that supports it (diffusers models)."""
    trained = _modules_holding(modules, parameters)
    supporting = [m for m in trained.values() if getattr(m, "_supports_gradient_checkpointing", False)]
    if not supporting:
        raise SetupError(f"gradient_checkpointing: none of the trained modules {sorted(trained)} supports it")
    for module in supporting:
        module.enable_gradient_checkpointing()


def parameters_of(modules: Iterable[torch.nn.Module]) -> list[torch.nn.Parameter]:
    """Parameters of ``modules`` that require gradients."""
    return [p for module in modules for p in module.parameters() if p.requires_grad]
