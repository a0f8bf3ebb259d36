"""Latent caching: encode a data source's clips once, train on the stored latents ever after.

A cache is a directory: ``cache.json`` (what was encoded, with which model and clip format, and
how many shards make it complete) and shards ``latents-00000.safetensors``, ... each holding
``latents`` ``(N, T, c, h, w)`` float16 (already times the autoencoder's scaling factor, the
posterior mean; ``latents.B`` for each bucket ``B`` of a source with buckets), and either ``encoder_hidden_states`` ``(N, L, D)`` float16 (captions run through
the pipeline's text encoder) or the captions themselves in the file's metadata (``captions``, a
JSON list), or neither. Each shard is written under a temporary name and renamed when complete,
so an interrupted run leaves only whole shards, and running it again encodes only the missing
ones. Processes split the shards (shard ``k`` belongs to process ``k mod num_processes``).

Output shard ``k`` holds items ``[k * shard_size, (k + 1) * shard_size)`` of a map-style source
(each a clip drawn with ``draw_generator(seed, item)``), or the clips of input shard ``k`` of a
webdataset source.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .io import atomic_output
from .sources import WebDatasetVideos, bucket_of_step, draw_generator

__all__ = ["CACHE_FILE", "CachedLatents", "cache_description", "cache_shard_count", "check_cache_directory", "encode_to_cache",
           "prepare_cache", "shard_path"]

CACHE_FILE = "cache.json"
# The text encoder's states of the empty caption (float32), beside embedded captions: training on the
# cache then needs no text encoder, even for caption dropout.
NULL_PROMPT_FILE = "null_prompt.safetensors"
# Clip generators of webdataset shard k start at draw k * this (shards hold fewer samples).
_DRAWS_PER_SHARD = 1_000_000


def shard_path(directory: Path, index: int) -> Path:
    """Where output shard ``index`` of a cache lives."""
    return directory / f"latents-{index:05d}.safetensors"


def cache_shard_count(source: Dataset, shard_size: int) -> int:
    """How many output shards encoding ``source`` makes."""
    if isinstance(source, WebDatasetVideos):
        return len(source.shards)
    return -(-len(source) // shard_size)


class LatentCacheError(ValueError):
    """A cache directory that cannot take this encoding: neither new, empty, nor a cache with the same settings."""


def check_cache_directory(directory: Path, description: dict[str, Any]) -> bool:
    """Whether ``directory`` continues an earlier cache (True) or starts a new one (False).

    Raises :class:`LatentCacheError` if it exists and is neither empty nor a cache made with
    ``description`` (every entry of ``description`` must equal the earlier one's).
    """
    if not directory.exists() or (directory.is_dir() and not any(directory.iterdir())):
        return False
    marker = directory / CACHE_FILE
    if not marker.is_file():
        raise LatentCacheError(f"{directory} already exists and is not a latent cache; give a new or empty directory")
    try:
        earlier = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise LatentCacheError(f"{marker}: not a readable cache description ({error})") from None
    differing = sorted(key for key in description if earlier.get(key) != description[key])
    if differing:
        raise LatentCacheError(f"{directory} holds a cache made with other settings ({', '.join(differing)} differ); "
                               "give a new directory to encode with these")
    return True


def cache_description(description: dict[str, Any], source: Dataset, shard_size: int, seed: int, embed: bool) -> dict[str, Any]:
    """The whole ``cache.json`` of encoding ``source``: ``description`` plus the shard layout, seed and caption form."""
    return {**description, "num_shards": cache_shard_count(source, shard_size), "shard_size": shard_size, "seed": seed,
            "captions": "embeddings" if embed else "text"}


def prepare_cache(directory: Path, description: dict[str, Any]) -> bool:
    """Check ``directory`` (:func:`check_cache_directory`) and write its ``cache.json`` if it is new.

    Process 0 calls it before the others start encoding (they only check). Returns whether an
    earlier cache is continued.
    """
    resuming = check_cache_directory(directory, description)
    if not resuming:
        with atomic_output(directory / CACHE_FILE) as staging:
            staging.write_text(json.dumps(description, indent=2) + "\n")
    return resuming


def _items(source: Dataset, shard: int, shard_size: int, seed: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(bucket, sample)`` of the clips of output shard ``shard`` (bucket 0 for sources without buckets)."""
    if isinstance(source, WebDatasetVideos):
        for sample in source.shard_clips(shard, lambda j: draw_generator(seed, shard * _DRAWS_PER_SHARD + j)):
            yield 0, sample
        return
    sample = getattr(source, "sample", None)
    buckets = getattr(source, "bucket_of", None) if getattr(source, "buckets", None) else None
    for item in range(shard * shard_size, min((shard + 1) * shard_size, len(source))):
        clip = sample(item, draw_generator(seed, item)) if sample is not None else source[item]
        yield (0 if buckets is None else buckets[item]), clip


def bucket_key(key: str, bucket: int | None) -> str:
    """A shard's tensor name: ``latents``, or ``latents.3`` for bucket 3 of a cache with buckets."""
    return key if bucket is None else f"{key}.{bucket}"


def encode_to_cache(
    source: Dataset,
    encode: Callable[[torch.Tensor], torch.Tensor],
    directory: str | Path,
    description: dict[str, Any],
    *,
    shard_size: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    embed_captions: Callable[[list[str]], torch.Tensor] | None = None,
    process_index: int = 0,
    num_processes: int = 1,
    progress: bool = True,
) -> int:
    """Encode this process's missing shards of ``source`` into ``directory``; returns clips encoded.

    ``encode`` maps pixels ``(B, T, C, H, W)`` to latents ``(B, T, c, h, w)``; ``embed_captions``
    (optional) maps captions to ``(B, L, D)``, stored instead of the captions. ``description``
    (with :func:`cache_description`'s entries added) is the cache's ``cache.json``: process 0
    writes it (:func:`prepare_cache`); the other processes must start after that.
    """
    directory = Path(directory)
    description = cache_description(description, source, shard_size, seed, embed_captions is not None)
    num_shards = description["num_shards"]
    if process_index == 0:
        prepare_cache(directory, description)
    elif not check_cache_directory(directory, description):
        raise RuntimeError(f"process {process_index} started before process 0 wrote {directory / CACHE_FILE}")
    if process_index == 0 and embed_captions is not None and not (directory / NULL_PROMPT_FILE).is_file():
        with atomic_output(directory / NULL_PROMPT_FILE) as staging, torch.no_grad():
            save_file({"encoder_hidden_states": embed_captions([""]).float().cpu().contiguous()}, str(staging))
    mine = [k for k in range(num_shards) if k % num_processes == process_index and not shard_path(directory, k).is_file()]
    total = sum(min(shard_size, len(source) - k * shard_size) for k in mine) if not isinstance(source, WebDatasetVideos) else None
    # clips of several buckets have several shapes: each bucket is batched and stored apart (latents.B, ...)
    buckets = range(len(source.buckets)) if getattr(source, "buckets", None) else [None]
    encoded = 0
    with tqdm(total=total, desc="encoding clips", unit="clip", disable=not progress, dynamic_ncols=True) as bar:
        for shard in mine:
            latents: dict[int | None, list[torch.Tensor]] = {bucket: [] for bucket in buckets}
            states: dict[int | None, list[torch.Tensor]] = {bucket: [] for bucket in buckets}
            captions: dict[int | None, list[str]] = {bucket: [] for bucket in buckets}
            pending: dict[int | None, list[dict[str, Any]]] = {bucket: [] for bucket in buckets}

            def flush(bucket: int | None) -> None:
                clips = pending[bucket]
                with torch.no_grad():
                    latents[bucket].append(encode(torch.stack([p["video"] for p in clips])).to(torch.float16).cpu())
                    if embed_captions is not None:
                        states[bucket].append(embed_captions([p.get("caption", "") for p in clips]).to(torch.float16).cpu())
                captions[bucket].extend(p.get("caption", "") for p in clips)
                bar.update(len(clips))
                clips.clear()

            for bucket, sample in _items(source, shard, shard_size, seed):
                bucket = None if buckets == [None] else bucket
                pending[bucket].append(sample)
                if len(pending[bucket]) == batch_size:
                    flush(bucket)
            # A shard whose clips were all bad (each warned about) is still written, empty, so the
            # cache counts as complete and a rerun does not try it again.
            tensors = {}
            for bucket in buckets:
                if pending[bucket]:
                    flush(bucket)
                tensors[bucket_key("latents", bucket)] = (torch.cat(latents[bucket]).contiguous() if latents[bucket]
                                                          else torch.zeros(0, dtype=torch.float16))
                if states[bucket]:
                    tensors[bucket_key("encoder_hidden_states", bucket)] = torch.cat(states[bucket]).contiguous()
            # captions in the order the clips are numbered: bucket by bucket
            in_order = [caption for bucket in buckets for caption in captions[bucket]]
            metadata = {"captions": json.dumps(in_order)} if embed_captions is None and any(in_order) else None
            with atomic_output(shard_path(directory, shard)) as staging:
                save_file(tensors, str(staging), metadata=metadata)
            encoded += len(in_order)
    return encoded


class CachedLatents(Dataset):
    """The clips of a latent cache: ``{"latents": (T, c, h, w) float32, ["caption" | "encoder_hidden_states" (L, D)]}``.

    Shards are memory-mapped and read one clip at a time, so a cache larger than memory trains.
    ``null_states`` ``(1, L, D)``: the empty caption's text-encoder states where captions were
    embedded (None in caches without them). A cache encoded with buckets (``buckets`` in its
    ``cache.json``) numbers its clips shard by shard, bucket by bucket, and gives the trainer
    ``buckets``, ``bucket_of`` and ``bucket_videos`` as a bucketed video source does. Raises
    ValueError if ``path`` is not a cache or is incomplete (an interrupted encode).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        marker = self.path / CACHE_FILE
        if not marker.is_file():
            raise ValueError(f"{self.path}: not a latent cache (no {CACHE_FILE}); make one with `videoldm encode`")
        self.description = json.loads(marker.read_text())
        expected = [shard_path(self.path, k) for k in range(self.description["num_shards"])]
        missing = [p for p in expected if not p.is_file()]
        self.shards = expected
        if missing:
            raise ValueError(f"{self.path}: incomplete latent cache ({len(missing)} of {len(expected)} shards missing); "
                             "run the same `videoldm encode` again to finish it")
        self.captions: list[list[str] | None] = []
        self.has_states = False
        self.buckets = self.description.get("buckets")
        buckets = range(len(self.buckets)) if self.buckets else [None]
        # clip -> (shard, bucket, row in that bucket's tensors, row in the shard's caption list)
        self.rows: list[tuple[int, int | None, int, int]] = []
        for index, shard in enumerate(self.shards):
            with safe_open(str(shard), framework="pt") as handle:
                metadata = handle.metadata() or {}
                in_shard = 0
                for bucket in buckets:
                    count = handle.get_slice(bucket_key("latents", bucket)).get_shape()[0]
                    self.rows.extend((index, bucket, row, in_shard + row) for row in range(count))
                    in_shard += count
                    self.has_states |= count > 0 and bucket_key("encoder_hidden_states", bucket) in handle.keys()
            self.captions.append(json.loads(metadata["captions"]) if "captions" in metadata else None)
        if not self.rows:
            raise ValueError(f"{self.path}: the latent cache holds no clips")
        if self.buckets:
            self.bucket_of = [bucket for _, bucket, _, _ in self.rows]
            self.bucket_videos = [[i for i, b in enumerate(self.bucket_of) if b == bucket] for bucket in buckets]
        null_prompt = self.path / NULL_PROMPT_FILE
        self.null_states = load_file(null_prompt)["encoder_hidden_states"] if null_prompt.is_file() else None
        self._handles: dict[int, Any] = {}

    def bucket_of_step(self, seed: int, step: int) -> int:
        """The bucket every clip of training step ``step`` comes from (:func:`~videoldm.data.sources.bucket_of_step`)."""
        return bucket_of_step(self.bucket_videos, seed, step)

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps do not cross process boundaries; each DataLoader worker opens its own.
        return {**self.__dict__, "_handles": {}}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"clip {index} of a cache of {len(self)}")
        shard, bucket, row, in_shard = self.rows[index]
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.shards[shard]), framework="pt")
        handle = self._handles[shard]
        sample: dict[str, Any] = {"latents": handle.get_slice(bucket_key("latents", bucket))[row].float()}
        if self.has_states:
            sample["encoder_hidden_states"] = handle.get_slice(bucket_key("encoder_hidden_states", bucket))[row].float()
        elif self.captions[shard] is not None:
            sample["caption"] = self.captions[shard][in_shard]
        return sample
