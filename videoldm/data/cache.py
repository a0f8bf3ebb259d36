"""In-memory caches of generated or decoded samples, so training steps never wait on data."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import torch
from torch.utils.data import Dataset


class TensorCache(Dataset):
    """A data set held as stacked tensors ``{key: (N, ...)}``; :meth:`gather` builds a batch at once."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        lengths = {key: len(value) for key, value in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"cached tensors differ in length: {lengths}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in self.tensors.items()}

    def gather(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """Batch of the samples at ``indices (B,)``."""
        return {key: value[indices.to(value.device)] for key, value in self.tensors.items()}

    def to(self, device: torch.device | str) -> "TensorCache":
        """Move every cached tensor to ``device`` (e.g. the GPU, so batches never cross the bus)."""
        self.tensors = {key: value.to(device) for key, value in self.tensors.items()}
        return self


class FramesOfVideos(Dataset):
    """Single frames of a cached video set: item ``i`` is frame ``i % T`` of video ``i // T``.

    Produces ``image`` ``(C, H, W)`` from the cache's ``video`` ``(N, T, C, H, W)``, plus every other
    per-video entry (e.g. ``labels``).
    """

    def __init__(self, videos: TensorCache) -> None:
        self.videos = videos
        self.num_frames = videos.tensors["video"].shape[1]

    def __len__(self) -> int:
        return len(self.videos) * self.num_frames

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[0] for key, value in self.gather(torch.tensor([index])).items()}

    def gather(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """Batch of the frames at ``indices (B,)``: ``image`` ``(B, C, H, W)`` and per-video entries."""
        video_indices, frame_indices = indices.div(self.num_frames, rounding_mode="floor"), indices % self.num_frames
        batch = self.videos.gather(video_indices)
        video = batch.pop("video")
        batch["image"] = video[torch.arange(len(indices), device=video.device), frame_indices.to(video.device)]
        return batch


def _materialize_range(dataset: Dataset, start: int, stop: int) -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    items = [dataset[index] for index in range(start, stop)]
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def build_cache(dataset: Dataset, workers: int = 1, dtype: torch.dtype = torch.float16) -> TensorCache:
    """Generate every item of ``dataset`` once (in ``workers`` processes) into a :class:`TensorCache`.

    Floating-point entries are stored as ``dtype`` (half by default: half the memory, and far finer
    than the 8-bit pixels videos come from).
    """
    length = len(dataset)
    chunk = max(1, -(-length // max(workers * 4, 1)))
    bounds = [(start, min(start + chunk, length)) for start in range(0, length, chunk)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_materialize_range, [dataset] * len(bounds), *zip(*bounds)))
    else:
        parts = [_materialize_range(dataset, start, stop) for start, stop in bounds]
    tensors = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    tensors = {key: value.to(dtype) if value.is_floating_point() else value for key, value in tensors.items()}
    return TensorCache(tensors)
