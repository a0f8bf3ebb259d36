"""Global draw numbering: which samples each step and each process trains on, and their randomness.

The samples of step ``s`` are the *draws* ``n = s * global_batch + j``, ``j`` in ``[0, global_batch)``.
Process ``r`` of ``world_size`` takes ``j`` in ``[r * per_rank, (r + 1) * per_rank)`` (split into
``gradient_accumulation_steps`` micro-batches, in order). Everything random about a draw comes from
``(seed, n)`` alone:

* map-style sources: the item index and the source's own random choices (clip start, crop) come
  from a generator seeded with :func:`draw_seed`;
* streaming sources: ``source.stream(seed, start, keep)`` fixes the order; each process decodes
  only its own draws;
* the stage's per-sample randomness (posterior samples, label dropout, diffusion time, noise) comes
  from :func:`sample_generators` of the batch's ``"draw_seed"`` entry.

So a 1-process run and an N-process run with the same global batch train on the same samples with
the same noise, and a resumed run continues exactly: the data position is the step.
"""

from __future__ import annotations

import os
import signal
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset, Sampler, get_worker_info

from ..data.sources import draw_seed, worker_init

DRAW_SEED = "draw_seed"
SKIPPED_FILES = "skipped_files"
_SEED_MODULUS = 2**63 - 1  # torch.Generator.manual_seed's range


def sample_generators(draw_seeds: torch.Tensor, purpose: str) -> list[torch.Generator]:
    """One CPU generator per sample of a batch, ``draw_seeds (B,)`` int64, for one ``purpose`` (e.g. "noise").

    Different purposes give independent streams; the same draw and purpose always the same one.
    """
    salt = zlib.crc32(purpose.encode())  # stable across processes, unlike hash()
    return [torch.Generator().manual_seed((int(seed) * 0x9E3779B1 + salt) % _SEED_MODULUS) for seed in draw_seeds]


def randn_per_sample(
    draw_seeds: torch.Tensor, purpose: str, shape: Sequence[int], device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Standard normal noise ``(B, *shape)``, each sample's from its own draw."""
    generators = sample_generators(draw_seeds, purpose)
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators]).to(device, dtype)


def rand_per_sample(draw_seeds: torch.Tensor, purpose: str, device: torch.device) -> torch.Tensor:
    """Uniform ``[0, 1)`` values ``(B,)``, one per sample."""
    generators = sample_generators(draw_seeds, purpose)
    return torch.cat([torch.rand(1, generator=g) for g in generators]).to(device)


def randint_per_sample(draw_seeds: torch.Tensor, purpose: str, high: int, device: torch.device) -> torch.Tensor:
    """Integers in ``[0, high)`` ``(B,)`` int64, one per sample."""
    generators = sample_generators(draw_seeds, purpose)
    return torch.cat([torch.randint(0, high, (1,), generator=g) for g in generators]).to(device)


def micro_batch_size(global_batch: int, world_size: int, accumulation_steps: int) -> int:
    """Samples per process and forward pass; the global batch must split evenly."""
    if global_batch % (world_size * accumulation_steps):
        raise ValueError(
            f"batch_size {global_batch} (the global batch) must divide by {world_size} processes x "
            f"{accumulation_steps} gradient_accumulation_steps"
        )
    return global_batch // (world_size * accumulation_steps)


class GlobalDrawBatches(Sampler[list[int]]):
    """Micro-batches of draw numbers for steps ``start_step .. end_step - 1``.

    Each yielded list is one micro-step of *all* processes, rank blocks in order:
    ``world_size * micro_batch`` draws. Accelerate's ``split_batches`` then hands process ``r`` the
    ``r``-th block (``batch_size`` is that global micro-batch, as accelerate expects).
    """

    def __init__(
        self, global_batch: int, world_size: int, accumulation_steps: int, start_step: int, end_step: int
    ) -> None:
        self.global_batch = global_batch
        self.world_size = world_size
        self.accumulation_steps = accumulation_steps
        self.micro_batch = micro_batch_size(global_batch, world_size, accumulation_steps)
        self.batch_size = world_size * self.micro_batch
        self.start_step = start_step
        self.end_step = end_step

    def __len__(self) -> int:
        return max(self.end_step - self.start_step, 0) * self.accumulation_steps

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.global_batch // self.world_size
        for step in range(self.start_step, self.end_step):
            first = step * self.global_batch
            for micro in range(self.accumulation_steps):
                offset = micro * self.micro_batch
                yield [
                    first + rank * per_rank + offset + j for rank in range(self.world_size) for j in range(self.micro_batch)
                ]


def rank_draws(draw: int, global_batch: int, world_size: int, rank: int) -> bool:
    """Whether draw number ``draw`` belongs to process ``rank`` (the streaming sources' ``keep``)."""
    per_rank = global_batch // world_size
    return (draw % global_batch) // per_rank == rank


def _as_float32(value: Any) -> Any:
    # cached sources store half precision; the models and losses see float32 (autocast lowers it)
    return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


class WorkerSkips:
    """The files a data-loader worker's copy of ``source`` skipped since its last report (name -> reason).

    A worker decodes with its own copy of the source, so what it skips (a file that fails only while
    its frames are decoded) never reaches the trainer's copy; every sample carries its worker's new
    skips under ``"skipped_files"`` instead. In the trainer's own process (no workers) it reports
    nothing: the trainer reads that source directly.
    """

    def __init__(self, source: Any) -> None:
        self.source = source
        self._process: int | None = None
        self._reported: set[str] = set()

    def begin(self) -> None:
        """Call before each sample: a new worker process starts from what its parent had already seen."""
        if self._process != os.getpid():
            self._process = os.getpid()
            self._reported = set(getattr(self.source, "skipped_files", {}))

    def new(self) -> dict[str, str]:
        """The skips since the last call (empty outside workers)."""
        files = getattr(self.source, "skipped_files", None)
        if not files or get_worker_info() is None or len(files) == len(self._reported):
            return {}
        fresh = {name: reason for name, reason in files.items() if name not in self._reported}
        self._reported.update(fresh)
        return fresh


class DrawDataset(Dataset):
    """Map-style view of a source by draw number: item ``n`` is the sample of draw ``n``.

    The item index and every random choice of the source come from ``draw_seed(seed, n)``;
    the sample gets a ``"draw_seed"`` entry for the stage's own per-sample randomness and a
    ``"skipped_files"`` one (:class:`WorkerSkips`). A source with buckets (``bucket_of_step``,
    ``bucket_videos``) gives every draw of step ``n // global_batch`` a video of that step's bucket:
    the bucket depends on the step alone, so every process and accumulation step agrees.
    """

    def __init__(self, source: Dataset, seed: int, global_batch: int = 1) -> None:
        if len(source) == 0:
            raise ValueError("the training data set is empty")
        self.source = source
        self.seed = seed
        self.global_batch = global_batch
        self._sample = getattr(source, "sample", None)
        self._bucketed = getattr(source, "buckets", None) is not None
        self.skips = WorkerSkips(source)

    def __len__(self) -> int:
        return len(self.source)

    def _index(self, draw: int, generator: torch.Generator) -> int:
        if not self._bucketed:
            return int(torch.randint(0, len(self.source), (1,), generator=generator))
        videos = self.source.bucket_videos[self.source.bucket_of_step(self.seed, draw // self.global_batch)]
        return videos[int(torch.randint(0, len(videos), (1,), generator=generator))]

    def __getitem__(self, draw: int) -> dict[str, Any]:
        seed = draw_seed(self.seed, draw)
        generator = torch.Generator().manual_seed(seed)
        index = self._index(draw, generator)
        self.skips.begin()
        sample = self._sample(index, generator) if self._sample is not None else self.source[index]
        return {**{key: _as_float32(value) for key, value in sample.items()}, DRAW_SEED: torch.tensor(seed),
                SKIPPED_FILES: self.skips.new()}


class RankStream(IterableDataset):
    """This process's draws of a streaming source, from draw ``start`` on, each with its ``"draw_seed"``."""

    def __init__(self, source: Any, seed: int, start: int, keep: Callable[[int], bool]) -> None:
        self.source = source
        self.seed = seed
        self.start = start
        self.keep = keep
        self.skips = WorkerSkips(source)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.skips.begin()
        for draw, sample in self.source.stream(self.seed, self.start, self.keep):
            if self.keep(draw):
                yield {**{key: _as_float32(value) for key, value in sample.items()},
                       DRAW_SEED: torch.tensor(draw_seed(self.seed, draw)), SKIPPED_FILES: self.skips.new()}


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors ``(B, ...)``; other values (captions, skipped files) become a list."""
    return {
        key: torch.stack([sample[key] for sample in samples]) if isinstance(samples[0][key], torch.Tensor)
        else [sample[key] for sample in samples]
        for key in samples[0]
    }


def init_data_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C / SIGTERM reach the whole process group; the trainer, not
    its data workers, decides when to stop (a worker dying first would fail the next batch). Then
    :func:`~videoldm.data.sources.worker_init`: one thread, killed with its parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker_init(worker_id)
