"""Training data from users' files: video folders, CSV lists, webdataset shards, image folders.

Every source turns what it reads into clips the model can train on (:class:`ClipFormat`):
``num_frames`` frames at a target frame rate (each file is resampled from its own rate, so the
frame stride follows the file), starting at a random frame, resized so the frame covers the
model's size and cropped to it (at a random offset), with the model's channel count (grey models
get the luma of colour videos). A sample is a dict: ``"video"`` float32 ``(T, C, H, W)`` in [-1, 1]
(``"image"`` ``(C, H, W)`` for image sources), plus ``"caption"`` (str) where the source has them.

Map-style sources (:class:`VideoFolder`, :class:`VideoCsv`, :class:`ImageFolder`) implement
``sample(index, generator)``: every random decision of the sample comes from ``generator``, so the
trainer's ``(seed, draw)`` numbering fixes the whole batch and resumption is exact;
``source[index]`` is ``sample(index, Generator().manual_seed(index))``. The streaming source
(:class:`WebDatasetVideos`) implements ``stream(seed, start, keep)`` over global stream positions.

Bad files (zero bytes, not a video, unreadable, truncated, too short for one clip) are skipped
with a :class:`DataWarning` naming the file and the reason, and counted in ``source.skipped`` (a
``Counter`` of reasons; :func:`skipped_summary` makes the end-of-run line). Files are checked when
the source is built (container headers, cheap); a file that only fails while its frames are
decoded (a truncated stream) is skipped then, and the draw falls to another clip. A source without
one usable clip is a ``ValueError`` naming the path, before any training starts.
"""

from __future__ import annotations

import csv
import ctypes
import io
import json
import math
import os
import signal
import sys
import tarfile
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, VideoReadError, frames_at_rate, read_video, to_channels, video_info

__all__ = [
    "ClipFormat",
    "DataError",
    "DataWarning",
    "FramesAsImages",
    "ImageFolder",
    "VideoCsv",
    "VideoFolder",
    "WebDatasetVideos",
    "draw_generator",
    "draw_seed",
    "skipped_summary",
    "worker_init",
]

# A draw whose file fails while decoding falls to another clip; this many failures in a row mean
# the data is broken beyond skipping, not a few bad files.
MAX_REDRAWS = 32
# makes a step's bucket draw independent of the draw of the same number (both come from draw_seed)
_BUCKET_SALT = 0x5BD1E995


class DataWarning(UserWarning):
    """A file of a data source was skipped (it names the file and the reason)."""


class DataError(ValueError):
    """Data that cannot make clips: a bad ``data:`` section, a source without one usable clip, or
    so many failing files in a row that skipping them cannot go on. Names the path."""


def draw_seed(seed: int, draw: int) -> int:
    """The seed of global draw ``draw`` of a run seeded ``seed`` (the trainer's numbering): ``seed * 1_000_003 + draw``."""
    return (seed * 1_000_003 + draw) % (2**63 - 1)  # torch.Generator.manual_seed's range


def draw_generator(seed: int, draw: int) -> torch.Generator:
    """The generator of global draw ``draw`` of a run seeded ``seed``."""
    return torch.Generator().manual_seed(draw_seed(seed, draw))


@dataclass(frozen=True)
class ClipFormat:
    """The clips a model trains on: ``num_frames`` frames at ``fps`` (None: each file's own rate),
    ``height`` x ``width`` pixels, ``channels`` 1 (grey) or 3 (RGB)."""

    num_frames: int = 16
    fps: float | None = None
    height: int = 32
    width: int = 32
    channels: int = 3

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be a positive number, got {self.fps}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"frame size must be positive, got {self.height}x{self.width}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")


def fit_frames(frames: torch.Tensor, clip: ClipFormat, generator: torch.Generator) -> torch.Tensor:
    """``(T, 3, h, w)`` in [-1, 1] -> ``(T, clip.channels, clip.height, clip.width)``.

    Resized (bilinear, antialiased) by one factor so the frame covers the target, then cropped at
    an offset drawn from ``generator`` (two draws, always made, so later draws do not shift).
    """
    height, width = frames.shape[-2:]
    scale = max(clip.height / height, clip.width / width)
    size = (max(clip.height, round(height * scale)), max(clip.width, round(width * scale)))
    if size != (height, width):
        frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=True)
    top = int(torch.randint(0, size[0] - clip.height + 1, (), generator=generator))
    left = int(torch.randint(0, size[1] - clip.width + 1, (), generator=generator))
    frames = frames[..., top : top + clip.height, left : left + clip.width]
    return to_channels(frames, clip.channels).clamp(-1, 1).contiguous()


def skipped_summary(source: Any) -> str | None:
    """One line counting the files ``source`` skipped (its ``skipped``, a Counter of reasons; a trainer's
    covers every data-loader worker and process), by reason; None if it skipped none."""
    skipped: Counter = getattr(source, "skipped", Counter())
    if not skipped:
        return None
    reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(skipped.items()))
    return f"skipped {sum(skipped.values())} bad file(s): {reasons}"


class _SkipCounter:
    """``skipped`` (a Counter of reasons), ``skipped_files`` (name -> reason, every file skipped in this
    process) and the warning that names each skipped file once."""

    def _init_skips(self) -> None:
        self.skipped: Counter = Counter()
        self.skipped_files: dict[str, str] = {}
        self._skip_lock = threading.Lock()  # files are checked in threads

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "_skip_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._skip_lock = threading.Lock()

    def _skip(self, name: str, reason: str, detail: str | None = None) -> None:
        with self._skip_lock:
            if name in self.skipped_files:
                return
            self.skipped_files[name] = reason
            self.skipped[reason] += 1
        warnings.warn(f"skipping {name}: {reason}" + (f" ({detail})" if detail else ""), DataWarning, stacklevel=3)


def _reason_of(error: VideoReadError) -> tuple[str, str]:
    """``(reason, detail)`` of a read error; read_video's messages begin with the file name."""
    text = str(error)
    detail = text.split(": ", 1)[1] if ": " in text else text
    return ("no video stream" if "no video stream" in detail else "unreadable"), detail


def bucket_of_step(bucket_videos: Sequence[Sequence[int]], seed: int, step: int) -> int:
    """The bucket of training step ``step`` of a run seeded ``seed``, given each bucket's items: drawn from
    ``(seed, step)`` alone with probability proportional to its number of items (so every item is equally
    likely, as without buckets, and every process and accumulation step of the step agrees)."""
    counts = torch.tensor([len(items) for items in bucket_videos], dtype=torch.float64)
    generator = torch.Generator().manual_seed(draw_seed(seed, step) ^ _BUCKET_SALT)
    return int(torch.multinomial(counts, 1, generator=generator))


@dataclass(frozen=True)
class _Video:
    """A checked video: where it is, how many frames it has at the target rate, its caption, its size."""

    path: Path
    frames: int
    caption: str | None = None
    height: int = 0
    width: int = 0


def nearest_bucket(buckets: Sequence[ClipFormat], frames: int, height: int, width: int) -> int | None:
    """The bucket a video of ``frames`` frames (at the target rate) and ``height`` x ``width`` pixels trains in.

    Among the buckets it fills without upscaling (no more frames, rows or columns than it has), the one
    closest in aspect ratio (``|log(w/h) - log(bw/bh)|``, so the crop is smallest), then the largest
    (pixels times frames); None if it is smaller than every bucket.
    """
    fitting = [index for index, bucket in enumerate(buckets)
               if bucket.num_frames <= frames and bucket.height <= height and bucket.width <= width]
    if not fitting:
        return None
    aspect = math.log(width / height)

    def distance(index: int) -> tuple[float, int]:
        bucket = buckets[index]
        return (abs(aspect - math.log(bucket.width / bucket.height)),
                -bucket.num_frames * bucket.height * bucket.width)

    return min(fitting, key=distance)


class VideoFiles(Dataset, _SkipCounter):
    """Clips of a list of video files or frame folders, each with an optional caption.

    Every file is checked when the source is built (in threads: container headers only); item
    ``i`` is a clip of the ``i``-th usable video. ``name`` names the source in errors.

    ``buckets`` (clip formats of several lengths and sizes) replace ``clip``: each video makes clips of
    its :func:`nearest_bucket` (never upscaled; a video smaller than every bucket is skipped), and the
    trainer takes every clip of a step from one bucket (:meth:`bucket_of_step`), so batches stack.
    """

    def __init__(self, videos: Sequence[tuple[Path, str | None]], clip: ClipFormat, name: str, threads: int = 8,
                 buckets: Sequence[ClipFormat] | None = None) -> None:
        self._init_skips()
        # with buckets, the shortest bucket's clips decide which videos are long enough
        self.clip = clip if not buckets else min(buckets, key=lambda bucket: bucket.num_frames)
        self.name = name
        with ThreadPoolExecutor(max(1, threads)) as pool:
            checked = list(pool.map(self._check, videos))
        self.videos = [video for video in checked if video is not None]
        self.buckets = list(buckets) if buckets else None
        if self.buckets:
            assigned = [(video, self._bucket(video)) for video in self.videos]
            self.videos = [video for video, bucket in assigned if bucket is not None]
            self.bucket_of = [bucket for _, bucket in assigned if bucket is not None]
            self.bucket_videos = [[i for i, bucket in enumerate(self.bucket_of) if bucket == b] for b in range(len(self.buckets))]
        if not self.videos:
            raise ValueError(f"{name}: no usable video of at least {self.clip.num_frames} frames"
                             + (f" among {len(videos)} file(s) ({skipped_summary(self)})" if videos else " (no video files)"))
        self.has_captions = any(video.caption is not None for video in self.videos)

    def _bucket(self, video: _Video) -> int | None:
        """The video's :func:`nearest_bucket`; None (the video skipped, warned and counted) if it has none."""
        bucket = nearest_bucket(self.buckets, video.frames, video.height, video.width)
        if bucket is None:
            self._skip(str(video.path), "smaller than every bucket",
                       f"{video.frames} frames of {video.height}x{video.width}; buckets never upscale")
        return bucket

    def bucket_of_step(self, seed: int, step: int) -> int:
        """The bucket every clip of training step ``step`` comes from (:func:`bucket_of_step`)."""
        return bucket_of_step(self.bucket_videos, seed, step)

    def _check(self, entry: tuple[Path, str | None]) -> _Video | None:
        path, caption = entry
        if not path.exists():
            self._skip(str(path), "missing")
            return None
        if path.is_file() and path.stat().st_size == 0:
            self._skip(str(path), "empty file", "0 bytes")
            return None
        try:
            info = video_info(path)
        except VideoReadError as error:
            self._skip(str(path), *_reason_of(error))
            return None
        except OSError as error:  # e.g. no permission to read it
            self._skip(str(path), "unreadable", error.strerror or str(error))
            return None
        frames = frames_at_rate(int(info["num_frames"]), float(info["fps"]), self.clip.fps)
        if frames < self.clip.num_frames:
            rate = f" at {self.clip.fps:g} fps" if self.clip.fps else ""
            self._skip(str(path), "too short", f"{frames} frames{rate}, clips need {self.clip.num_frames}")
            return None
        return _Video(path, frames, caption, int(info["height"]), int(info["width"]))

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.sample(index, torch.Generator().manual_seed(index))

    def sample(self, index: int, generator: torch.Generator) -> dict[str, Any]:
        """A clip of video ``index`` (in its bucket's format, with buckets): start frame and crop from
        ``generator``; ``{"video", ["caption"]}``.

        A video that fails while decoding is skipped (warned, counted) and the draw moves to a
        video picked by ``generator`` (in the same bucket), so the result still depends on ``(index, generator)`` only.
        """
        bucket = None if self.buckets is None else self.bucket_of[index]
        clip = self.clip if bucket is None else self.buckets[bucket]
        candidates = range(len(self.videos)) if bucket is None else self.bucket_videos[bucket]
        for _ in range(MAX_REDRAWS):
            video = self.videos[index]
            start = int(torch.randint(0, video.frames - clip.num_frames + 1, (), generator=generator))
            try:
                frames = read_video(video.path, fps=clip.fps, start_frame=start, num_frames=clip.num_frames).frames
            except VideoReadError as error:
                reason, detail = _reason_of(error)
                # the header promised these frames (checked when the source was built)
                self._skip(str(video.path), "truncated" if "requested range is empty" in detail else reason, detail)
            else:
                if len(frames) == clip.num_frames:
                    sample: dict[str, Any] = {"video": fit_frames(frames, clip, generator)}
                    if self.has_captions:
                        sample["caption"] = video.caption or ""
                    return sample
                self._skip(str(video.path), "truncated", f"{len(frames)} of {clip.num_frames} frames decoded")
            index = candidates[int(torch.randint(0, len(candidates), (), generator=generator))]
        raise DataError(f"{self.name}: {MAX_REDRAWS} videos in a row failed to decode ({skipped_summary(self)})")


def _is_frame_folder(names: Sequence[str]) -> bool:
    return any(Path(name).suffix.lower() in IMAGE_SUFFIXES for name in names)


def list_video_files(root: Path) -> list[Path]:
    """Video files (by extension) and PNG/JPG frame folders under ``root``, recursively, sorted."""
    found: list[Path] = []
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        if Path(folder) != root and _is_frame_folder(files):
            found.append(Path(folder))
            subfolders.clear()  # a frame folder is one video, whatever it holds
            continue
        found.extend(Path(folder) / name for name in sorted(files) if Path(name).suffix.lower() in VIDEO_SUFFIXES)
    return sorted(found)


class VideoFolder(VideoFiles):
    """Every video under a folder (recursively; any FFmpeg-readable file with a video extension,
    and folders of PNG/JPG frames, which play at ``fps`` or 8 fps). A folder that is itself a
    folder of frames is one video. No captions."""

    def __init__(self, path: str | Path, clip: ClipFormat, buckets: Sequence[ClipFormat] | None = None) -> None:
        root = Path(path).expanduser()
        if not root.is_dir():
            raise ValueError(f"{root}: no such folder of videos")
        files = list_video_files(root)
        if not files and _is_frame_folder(os.listdir(root)):
            files = [root]
        super().__init__([(file, None) for file in files], clip, name=str(root), buckets=buckets)


class VideoCsv(VideoFiles):
    """Videos listed in a CSV file with a header row: ``path,caption`` by default.

    ``path_column`` / ``caption_column`` name other columns (WebVid: ``caption_column: name``);
    ``path_template`` builds the path from any columns instead (WebVid downloads:
    ``"{page_dir}/{videoid}.mp4"``). Relative paths are relative to ``video_root`` (default: the
    CSV's folder). ``caption_column: null`` reads no captions.
    """

    def __init__(
        self,
        path: str | Path,
        clip: ClipFormat,
        path_column: str = "path",
        caption_column: str | None = "caption",
        path_template: str | None = None,
        video_root: str | None = None,
        buckets: Sequence[ClipFormat] | None = None,
    ) -> None:
        table = Path(path).expanduser()
        if not table.is_file():
            raise ValueError(f"{table}: no such CSV file")
        root = Path(video_root).expanduser() if video_root else table.parent
        try:
            with table.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        except (UnicodeDecodeError, csv.Error) as error:
            raise ValueError(f"{table}: not a readable CSV file ({error})") from None
        columns = set(rows[0]) if rows else set()
        needed = [caption_column] if caption_column else []
        try:
            relative = [path_template.format(**row) for row in rows] if path_template else None
        except KeyError as error:
            raise ValueError(f"{table}: path_template names column {error}, which it lacks (has {sorted(columns)})") from None
        if relative is None:
            needed.append(path_column)
            relative = [row.get(path_column) or "" for row in rows]
        missing = [column for column in needed if rows and column not in columns]
        if missing:
            raise ValueError(f"{table}: no column {missing[0]!r} (columns: {', '.join(sorted(columns))})")
        videos = [(root / name, row[caption_column] if caption_column else None) for name, row in zip(relative, rows)]
        super().__init__(videos, clip, name=str(table), buckets=buckets)


class FramesAsImages(Dataset):
    """Single frames of a video source as an image source: ``{"image": (C, H, W), ...}``.

    The video source should make one-frame clips (``num_frames: 1``); item ``i`` is a random
    frame of video ``i``.
    """

    def __init__(self, videos: VideoFiles) -> None:
        if videos.clip.num_frames != 1:
            raise ValueError(f"an image source needs one-frame clips, got num_frames={videos.clip.num_frames}")
        self.videos = videos

    @property
    def skipped(self) -> Counter:
        return self.videos.skipped

    @property
    def skipped_files(self) -> dict[str, str]:
        return self.videos.skipped_files

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.sample(index, torch.Generator().manual_seed(index))

    def sample(self, index: int, generator: torch.Generator) -> dict[str, Any]:
        """Frame ``(C, H, W)`` of video ``index``, which frame and crop from ``generator``."""
        sample = self.videos.sample(index, generator)
        sample["image"] = sample.pop("video")[0]
        return sample


class ImageFolder(Dataset, _SkipCounter):
    """Every PNG/JPG image under a folder (recursively), fitted to ``clip``'s size and channels.

    Unreadable images are skipped (warned, counted) when the source is built.
    """

    def __init__(self, path: str | Path, clip: ClipFormat) -> None:
        self._init_skips()
        self.clip = clip
        root = Path(path).expanduser()
        if not root.is_dir():
            raise ValueError(f"{root}: no such folder of images")
        candidates = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        self.images = [p for p in candidates if self._readable(p)]
        if not self.images:
            raise ValueError(f"{root}: no readable PNG/JPG image" + (f" ({skipped_summary(self)})" if candidates else ""))

    def _readable(self, path: Path) -> bool:
        try:
            with Image.open(path) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            self._skip(str(path), "empty file" if path.stat().st_size == 0 else "unreadable", str(error))
            return False
        return True

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.sample(index, torch.Generator().manual_seed(index))

    def sample(self, index: int, generator: torch.Generator) -> dict[str, Any]:
        """Image ``index`` as ``{"image": (C, H, W)}`` in [-1, 1], cropped at an offset from ``generator``."""
        with Image.open(self.images[index]) as image:
            pixels = torch.from_numpy(np.asarray(image.convert("RGB")).copy())
        frames = pixels.permute(2, 0, 1)[None].float() / 127.5 - 1
        return {"image": fit_frames(frames, self.clip, generator)[0]}


def expand_shards(urls: str | Sequence[str]) -> list[str]:
    """Shard paths from a path, a folder of ``*.tar``, a brace pattern (``shards-{000..099}.tar``) or a list."""
    import webdataset

    patterns = [urls] if isinstance(urls, str) else list(urls)
    shards: list[str] = []
    for pattern in patterns:
        folder = Path(pattern).expanduser()
        if folder.is_dir():
            shards.extend(str(p) for p in sorted(folder.glob("*.tar")))
        else:
            shards.extend(webdataset.shardlists.expand_urls(os.path.expanduser(pattern)))
    return shards


class WebDatasetVideos(IterableDataset, _SkipCounter):
    """Clips streamed from webdataset ``.tar`` shards (one video and an optional caption per sample).

    A sample is the tar members sharing a key: the video is the first member whose extension is
    a video extension (``video_key`` picks one), the caption the ``caption_key`` member (``txt``;
    a ``json`` member's ``caption`` field otherwise). Samples are read in order; they are never
    all listed, so shards can hold millions of clips.

    The stream's order: epoch ``e`` visits the shards in a permutation drawn from ``(seed, e)``,
    and passes their samples through a shuffle buffer of ``shuffle_buffer`` samples seeded the
    same way. Stream position ``n`` counts every sample, bad ones included, so positions never
    depend on what was decoded; a bad sample at a wanted position is replaced by the next good
    one after it. Start frame and crop of position ``n`` come from ``draw_generator(seed, n)``.
    """

    def __init__(
        self,
        path: str | Sequence[str],
        clip: ClipFormat,
        caption_key: str = "txt",
        video_key: str | None = None,
        shuffle_buffer: int = 64,
        seed: int = 0,
    ) -> None:
        self._init_skips()
        self.clip = clip
        self.caption_key = caption_key
        self.video_key = video_key
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.name = path if isinstance(path, str) else ", ".join(path)
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")
        self.shards = expand_shards(path)
        missing = [shard for shard in self.shards if "://" not in shard and not Path(shard).is_file()]
        if not self.shards or missing:
            raise ValueError(f"{self.name}: no such shard {missing[0]}" if missing else f"{self.name}: no .tar shards")
        if not any(self._clip_of(sample, torch.Generator().manual_seed(0), check_only=True) for sample in self._samples(self.shards)):
            raise ValueError(f"{self.name}: no usable clip of at least {clip.num_frames} frames in "
                             f"{len(self.shards)} shard(s) ({skipped_summary(self) or 'no video members'})")

    # ----------------------------------------------------------------------------- reading
    def _samples(self, shards: Sequence[str]) -> Iterator[dict[str, Any]]:
        """The samples of ``shards`` in order; an unreadable shard (or its unreadable rest) is skipped."""
        import webdataset
        from webdataset.tariterators import group_by_keys, tar_file_expander

        for shard in shards:
            def skip_shard(error: Exception, shard: str = shard) -> bool:
                self._skip(shard, "unreadable shard", str(error.args[0]) if error.args else type(error).__name__)
                return True

            try:
                # Opened here, so the file is closed when a stream stops mid-shard (the generator closes).
                with webdataset.gopen(shard, "rb") as stream:
                    members = tar_file_expander([{"url": shard, "stream": stream}], handler=skip_shard)
                    yield from group_by_keys(members, handler=skip_shard)
            except (tarfile.TarError, OSError) as error:
                self._skip(shard, "unreadable shard", str(error))

    def _video_member(self, sample: dict[str, Any]) -> str | None:
        if self.video_key is not None:
            return self.video_key if self.video_key in sample else None
        return next((key for key in sample if not key.startswith("__") and f".{key.split('.')[-1]}" in VIDEO_SUFFIXES), None)

    def _caption(self, sample: dict[str, Any]) -> str | None:
        if self.caption_key in sample:
            return bytes(sample[self.caption_key]).decode("utf-8", errors="replace").strip()
        if "json" in sample:
            try:
                return str(json.loads(sample["json"]).get("caption", "")) or None
            except (ValueError, AttributeError):
                return None
        return None

    def _clip_of(self, sample: dict[str, Any], generator: torch.Generator, check_only: bool = False) -> dict[str, Any] | bool | None:
        """The clip of one tar sample (None, warned and counted, if it has no usable one)."""
        name = f"{sample.get('__url__', self.name)}:{sample.get('__key__', '?')}"
        key = self._video_member(sample)
        if key is None:
            self._skip(name, "no video member", f"members: {', '.join(k for k in sample if not k.startswith('__'))}")
            return None
        data = sample[key]
        if not data:
            self._skip(f"{name}.{key}", "empty file", "0 bytes")
            return None
        buffer = io.BytesIO(data)
        buffer.name = f"{name}.{key}"
        try:
            info = video_info(buffer)
            frames = frames_at_rate(int(info["num_frames"]), float(info["fps"]), self.clip.fps)
            if frames < self.clip.num_frames:
                self._skip(buffer.name, "too short", f"{frames} frames, clips need {self.clip.num_frames}")
                return None
            if check_only:
                return True
            start = int(torch.randint(0, frames - self.clip.num_frames + 1, (), generator=generator))
            clip = read_video(buffer, fps=self.clip.fps, start_frame=start, num_frames=self.clip.num_frames).frames
        except VideoReadError as error:
            self._skip(buffer.name, *_reason_of(error))
            return None
        if len(clip) < self.clip.num_frames:
            self._skip(buffer.name, "truncated", f"{len(clip)} of {self.clip.num_frames} frames decoded")
            return None
        out: dict[str, Any] = {"video": fit_frames(clip, self.clip, generator)}
        caption = self._caption(sample)
        if caption is not None:
            out["caption"] = caption
        return out

    def shard_clips(self, shard: int, generator_of: Callable[[int], torch.Generator]) -> Iterator[dict[str, Any]]:
        """The clips of every good sample of shard ``shard``, in order; sample ``j``'s from ``generator_of(j)``."""
        for j, sample in enumerate(self._samples([self.shards[shard]])):
            clip = self._clip_of(sample, generator_of(j))
            if clip is not None:
                yield clip

    # ----------------------------------------------------------------------------- order
    def _epoch(self, seed: int, epoch: int) -> Iterator[dict[str, Any]]:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.shards), generator=generator).tolist()
        buffer: list[dict[str, Any]] = []
        for sample in self._samples([self.shards[i] for i in order]):
            buffer.append(sample)
            if len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(int(torch.randint(0, len(buffer), (), generator=generator)))
        while buffer:
            yield buffer.pop(int(torch.randint(0, len(buffer), (), generator=generator)))

    def _positions(self, seed: int) -> Iterator[tuple[int, dict[str, Any]]]:
        position, epoch = 0, 0
        while True:
            count = 0
            for sample in self._epoch(seed, epoch):
                yield position, sample
                position, count = position + 1, count + 1
            if count == 0:
                raise DataError(f"{self.name}: the shards hold no samples")
            epoch += 1

    def stream(self, seed: int, start: int = 0, keep: Callable[[int], bool] = lambda n: True) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(n, sample)`` for stream positions ``n >= start`` with ``keep(n)``, in order, epochs repeating forever.

        Only wanted positions are decoded. A bad sample at a wanted position ``n`` is replaced by
        the first good sample after it, decoded with ``n``'s generator; that depends on the
        stream alone, so every split of the positions (processes, workers) sees the same clips.
        """
        pending: list[int] = []
        for position, sample in self._positions(seed):
            if position >= start and keep(position):
                pending.append(position)
            while pending:
                clip = self._clip_of(sample, draw_generator(seed, pending[0]))
                if clip is None:
                    break
                yield pending.pop(0), clip
            if pending and position - pending[0] > MAX_REDRAWS:
                raise DataError(f"{self.name}: {MAX_REDRAWS} samples in a row had no usable clip ({skipped_summary(self)})")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """One endless pass with ``seed``; DataLoader workers split the positions between them."""
        worker = get_worker_info()
        workers, rank = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        for _, sample in self.stream(self.seed, 0, lambda n: n % workers == rank):
            yield sample


# ----------------------------------------------------------------------------- DataLoader workers
_PR_SET_PDEATHSIG = 1


def worker_init(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoaders over these sources: one thread per worker (decoding is
    parallel across workers already), and on Linux the worker is killed with its parent, so a
    killed training process leaves no decoding workers behind."""
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before the request took effect
            os._exit(0)
