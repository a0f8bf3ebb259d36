"""A recipe's ``data:`` section (or ``--data PATH``) -> a data source.

``kind`` picks the source; the other entries are its options, checked (an unknown or wrongly
typed entry is an error naming it):

- ``digits`` (the default): the embedded moving digits, :class:`~videoldm.data.moving_digits.MovingDigitsConfig`
  entries and ``num_videos``.
- ``folder``: ``path`` (a folder of videos, recursive), :class:`~videoldm.data.sources.VideoFolder`.
- ``csv``: ``path`` (``path,caption`` rows) and column options, :class:`~videoldm.data.sources.VideoCsv`.
- ``webdataset``: ``path`` (shards: a ``.tar``, a folder of them, a brace pattern), ``caption_key``,
  ``video_key``, ``shuffle_buffer``, :class:`~videoldm.data.sources.WebDatasetVideos`.
- ``images``: ``path`` (a folder of PNG/JPG images), image stages only.
- ``latents``: ``path`` (a cache written by ``videoldm encode``), video stages only.
- ``film``: ``path`` (a film: the moviepy 2.2.1 sdist holding Big Buck Bunny, or a video file; or a
  directory it was prepared into), ``split`` (``train`` or ``held_out``), ``cache`` (where to prepare
  it), :func:`~videoldm.data.film.film_source`: clips inside scenes of one side of the split.

Video kinds also take ``num_frames`` (default 16; image stages: 1, one frame of each video),
``fps`` (default: each file's own rate) and ``size`` (``[height, width]`` or one number; default:
the model's frame size). Channels always follow the model. Instead of ``num_frames`` and ``size``,
``folder`` and ``csv`` take ``buckets``: ``[[frames, height, width], ...]``, each video trained in
the nearest one by aspect ratio that it fills without upscaling, each batch from one bucket.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..config import check_arguments
from .io import IMAGE_SUFFIXES
from .film import film_source
from .latents import CACHE_FILE, CachedLatents
from .moving_digits import MovingDigitsConfig, MovingDigitsVideos
from .sources import ClipFormat, DataError, FramesAsImages, ImageFolder, VideoCsv, VideoFolder, WebDatasetVideos, list_video_files

__all__ = ["SOURCE_KINDS", "DataError", "build_source", "infer_kind"]

_FILE_KINDS = {"folder": VideoFolder, "csv": VideoCsv, "webdataset": WebDatasetVideos, "images": ImageFolder}
SOURCE_KINDS = ("digits", *_FILE_KINDS, "film", "latents")
_CLIP_ENTRIES = ("num_frames", "fps", "size")


def infer_kind(path: str | Path, images: bool = False) -> str:
    """The source kind ``path`` holds: ``csv`` for a .csv file, ``webdataset`` for a .tar, a brace
    pattern or a folder of .tar shards, ``latents`` for a cache folder, else ``folder`` (``images``
    for an image stage given a folder without videos). Raises ValueError if it does not exist."""
    text = str(path)
    if text.endswith(".tar") or "{" in text:
        return "webdataset"
    folder = Path(text).expanduser()
    if not folder.exists():
        raise ValueError(f"{text} does not exist")
    if folder.is_file():
        if folder.suffix.lower() == ".csv":
            return "csv"
        raise ValueError(f"{text} is a file but not a .csv or .tar; expected a folder of videos, a CSV file, "
                         "webdataset shards or a latent cache")
    if (folder / CACHE_FILE).is_file():
        return "latents"
    videos = list_video_files(folder)
    if not videos and any(folder.glob("*.tar")):
        return "webdataset"
    if images and not videos and any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*")):
        return "images"
    return "folder"


def _check_entries(data: dict[str, Any], allowed: list[str], kind: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ValueError(f"data: unknown entries {unknown} for kind {kind!r}; expected some of {sorted(allowed)}")


def _buckets(data: dict[str, Any], clip: ClipFormat, size_multiple: int) -> list[ClipFormat] | None:
    """The ``buckets`` entry (``[[frames, height, width], ...]``) as clip formats of ``clip``'s rate and channels."""
    buckets = data.pop("buckets", None)
    if buckets is None:
        return None
    if (not isinstance(buckets, list) or not buckets
            or any(not isinstance(b, list) or len(b) != 3 or any(type(n) is not int or n < 1 for n in b) for b in buckets)):
        raise ValueError(f"data: buckets must list [frames, height, width] triples of positive integers, got {buckets!r}")
    for frames, height, width in buckets:
        if height % size_multiple or width % size_multiple:
            raise ValueError(f"data: bucket [{frames}, {height}, {width}]: height and width must be multiples of "
                             f"{size_multiple} for this model")
    if len({tuple(b) for b in buckets}) != len(buckets):
        raise ValueError(f"data: buckets repeat a format: {buckets}")
    return [ClipFormat(num_frames=frames, fps=clip.fps, height=height, width=width, channels=clip.channels)
            for frames, height, width in buckets]


def _clip_format(data: dict[str, Any], height: int, width: int, channels: int, images: bool) -> ClipFormat:
    size = data.pop("size", None)
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else tuple(size)
    num_frames = data.pop("num_frames", 1 if images else 16)
    if images and num_frames != 1:
        raise ValueError(f"data: num_frames is {num_frames}, but an image stage trains on single frames (1)")
    return ClipFormat(num_frames=num_frames, fps=data.pop("fps", None), height=height, width=width, channels=channels)


def build_source(data: dict[str, Any], *, height: int, width: int, channels: int, images: bool = False,
                 size_multiple: int = 1) -> Dataset:
    """The source a ``data:`` section describes, for a model of ``height`` x ``width`` x ``channels`` frames.

    ``images``: for an image stage (samples ``{"image": (C, H, W)}``; moving digits stay videos,
    the trainer takes their frames). ``size_multiple``: what bucket sizes must be multiples of (the
    model's pixels per cell of its deepest level). Raises :class:`DataError` for a bad section, or a
    source without a usable clip (naming the path).
    """
    try:
        return _build_source(dict(data), height, width, channels, images, size_multiple)
    except ValueError as error:
        raise DataError(str(error)) from None


def _build_source(data: dict[str, Any], height: int, width: int, channels: int, images: bool,
                  size_multiple: int) -> Dataset:
    kind = data.pop("kind", "digits")
    if kind not in SOURCE_KINDS:
        raise ValueError(f"data: unknown kind {kind!r}; expected one of {', '.join(SOURCE_KINDS)}")
    if kind == "digits":
        _check_entries(data, [field.name for field in dataclasses.fields(MovingDigitsConfig)] + ["num_videos"], kind)
        num_videos = data.pop("num_videos", 20000)
        return MovingDigitsVideos(MovingDigitsConfig(**data), num_videos)
    if data.get("path") is None:
        raise ValueError(f"data: kind {kind!r} needs a path: set data.path in the recipe or give --data PATH")
    if kind == "latents":
        if images:
            raise ValueError("data: a latent cache holds video latents; image stages train on images or video frames")
        _check_entries(data, ["path"], kind)
        return CachedLatents(data["path"])
    if images and kind == "webdataset":
        raise ValueError("data: image stages read folders or CSV lists of videos, or folders of images, not shards")
    if "buckets" in data:
        if kind not in ("folder", "csv") or images:
            raise ValueError("data: buckets are for video stages reading a folder or a CSV list of videos")
        if "size" in data or "num_frames" in data:
            raise ValueError("data: buckets give the clips' lengths and sizes; remove num_frames and size")
    clip = _clip_format(data, height, width, channels, images)
    if "buckets" in data:
        data["buckets"] = _buckets(data, clip, size_multiple)
    source_class = film_source if kind == "film" else _FILE_KINDS[kind]
    check_arguments(source_class if kind == "film" else source_class.__init__, {**data, "clip": clip},
                    f"data (kind {kind!r})")
    source = source_class(clip=clip, **data)
    return FramesAsImages(source) if images and kind != "images" else source
