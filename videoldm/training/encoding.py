"""Encode a data source's clips into a latent cache once, across processes (``videoldm encode``).

Training on cached latents skips the autoencoder (and, with embedded captions, the text encoder) at
every step. The clips are split between the processes of an ``accelerate launch`` / ``torchrun``
run by shard; an interrupted run resumes where it stopped (:mod:`videoldm.data.latents`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from torch.utils.data import Dataset

from ..data.latents import CachedLatents, cache_description, encode_to_cache, prepare_cache
from ..models.autoencoder import encode_video
from ..pipelines.components import load_components
from ..pipelines.conditioning import encode_prompts
from ..pipelines.directory import PipelineInfo, pipeline_frame_format


def clip_request(info: PipelineInfo, num_frames: int, fps: float | None, size: tuple[int, int],
                 buckets: list[list[int]] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a cache of ``info``'s model holds: ``(description, clip entries)``, the clip part of ``cache.json``
    and of the ``data:`` section that reads the videos: ``num_frames`` clips of ``size`` (height, width), or
    ``buckets`` (``[[frames, height, width], ...]``) instead."""
    clips = {"buckets": buckets} if buckets else {"num_frames": num_frames, "size": list(size)}
    description = {"model": str(info.path.absolute()), "num_frames": None if buckets else num_frames, "fps": fps,
                   "height": None if buckets else size[0], "width": None if buckets else size[1],
                   "channels": pipeline_frame_format(info).channels, **({"buckets": buckets} if buckets else {})}
    return description, clips


@dataclass(frozen=True)
class EncodedCache:
    """What a run of :func:`encode_latent_cache` left: the cache's clips and shards, and the clips this run encoded."""

    clips: int
    shards: int
    encoded: int


@dataclass(frozen=True)
class CacheSettings:
    """How clips are cached: ``shard_size`` clips per shard, ``batch_size`` clips per autoencoder batch,
    posterior draws from ``seed``, captions ``embed``-ded as text-encoder states (else kept as text),
    on ``device`` (None: accelerate's choice for the process)."""

    shard_size: int
    batch_size: int
    seed: int
    embed: bool
    device: str | None = None


def encode_latent_cache(
    source: Dataset, info: PipelineInfo, out: Path, description: dict[str, Any], settings: CacheSettings
) -> EncodedCache | None:
    """Load the autoencoder (and text encoder) of ``info`` and write ``source``'s latents to the cache ``out``.

    ``description`` names the data and clip format (it must match an unfinished cache's to resume:
    :class:`~videoldm.data.latents.LatentCacheError` otherwise). Returns the cache's totals on the main
    process, None on the others.
    """
    state = PartialState(cpu=settings.device == "cpu" or not torch.cuda.is_available())
    target = torch.device(settings.device) if settings.device else state.device
    if state.is_main_process:
        prepare_cache(out, cache_description(description, source, settings.shard_size, settings.seed, settings.embed))
    state.wait_for_everyone()
    parts = load_components(info.path, ("vae", "text_encoder", "tokenizer") if settings.embed else ("vae",))
    vae = parts["vae"].to(target).eval()
    captions = None
    if settings.embed and getattr(source, "has_captions", True):
        text_encoder, tokenizer = parts["text_encoder"].to(target).eval(), parts["tokenizer"]
        captions = lambda texts: encode_prompts(text_encoder, tokenizer, texts, target)  # noqa: E731
    encoded = encode_to_cache(
        source, lambda video: encode_video(vae, video.to(target, vae.dtype), sample=False), out, description,
        shard_size=settings.shard_size, batch_size=settings.batch_size, seed=settings.seed, embed_captions=captions,
        process_index=state.process_index, num_processes=state.num_processes, progress=state.is_local_main_process,
    )
    encoded = sum(gather_object([encoded]))  # waits for every process
    if not state.is_main_process:
        return None
    cache = CachedLatents(out)
    return EncodedCache(clips=len(cache), shards=len(cache.shards), encoded=encoded)
