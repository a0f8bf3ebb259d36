"""Video reading and writing (PyAV / FFmpeg, Pillow for image folders).

Inside the library a single video is a float tensor ``(T, C, H, W)`` in [-1, 1] (the per-video slice
of the public ``(B, T, C, H, W)`` convention); on disk it is one of:

- ``.mp4``: H.264 (libx264), yuv420p, ``+faststart`` so browsers can start playing before the whole
  file arrives. yuv420p subsamples chroma by 2, so odd widths/heights are padded to even by
  replicating the last row/column; reading such a file back gives the padded size.
- ``.gif``: animated, looping forever, one global palette of at most 256 colours (exact for videos
  with few colours, quantised otherwise). GIF delays are whole 1/100 s, so the per-frame delays are
  rounded and alternate where needed (12 fps -> 8, 9, 8, ... cs) to keep the average rate.
- a folder (a path without extension, or ending with ``/``): lossless ``frame_00000.png``, ...
  Folders store no frame rate; readers assume ``fps`` (default 8). A frame folder must be new or
  empty, so frames of an earlier video never mix with the new ones.

Writing is atomic: the video is written under a temporary name beside its destination and renamed
into place when complete, so an interrupted run never leaves a half-written video (an existing file
at the destination is replaced only then).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..defaults import DEFAULT_FPS
from .paths import atomic_output, check_creatable, check_video_output, existing_video_path

__all__ = [
    "VideoClip",
    "VIDEO_SUFFIXES",
    "VideoReadError",
    "VideoSource",
    "atomic_output",
    "check_creatable",
    "check_video_output",
    "frames_at_rate",
    "from_uint8",
    "read_video",
    "to_channels",
    "to_uint8",
    "video_info",
    "video_writer",
    "write_video",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Files taken for videos when a folder is listed (FFmpeg reads many more; these are the common ones).
VIDEO_SUFFIXES = (".mp4", ".gif", ".webm", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".ts", ".ogv", ".flv",
                  ".wmv", ".3gp")
# A path to a video file or frame folder, or an open binary file holding a video (e.g. a member of
# a webdataset shard in a BytesIO; its ``name`` attribute, when set, names it in errors).
VideoSource = str | os.PathLike[str] | BinaryIO


class VideoReadError(ValueError):
    """A video file exists but cannot be decoded, or holds no frames in the requested range."""


@dataclass
class VideoClip:
    """Decoded frames ``(T, 3, H, W)`` float in [-1, 1] and the frame rate they are meant to play at."""

    frames: torch.Tensor
    fps: float


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """``(T, C, H, W)`` float in [-1, 1], C in {1, 3} -> ``(T, H, W, 3)`` uint8 (gray repeated to RGB).

    Values outside [-1, 1] are clipped; rounding to nearest makes ``to_uint8(from_uint8(x)) == x``.
    """
    if frames.ndim != 4 or frames.shape[1] not in (1, 3):
        raise ValueError(f"expected frames (T, C, H, W) with C in (1, 3), got shape {tuple(frames.shape)}")
    pixels = ((frames.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous().numpy()


def from_uint8(frames: np.ndarray) -> torch.Tensor:
    """``(T, H, W, C)`` uint8 -> ``(T, C, H, W)`` float32 in [-1, 1] (channels kept as given)."""
    if frames.ndim != 4 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (T, H, W, C), got {frames.dtype} shape {frames.shape}")
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1


def to_channels(frames: torch.Tensor, channels: int) -> torch.Tensor:
    """``(T, C, H, W)`` frames with C in {1, 3} -> ``(T, channels, H, W)``: grey is repeated, RGB becomes
    ITU-R 601 luma (exact for grey frames stored as RGB)."""
    if frames.shape[1] == channels:
        return frames
    if channels == 3 and frames.shape[1] == 1:
        return frames.expand(-1, 3, -1, -1)
    if channels == 1 and frames.shape[1] == 3:
        if bool((frames[:, :1] == frames[:, 1:]).all()):
            return frames[:, :1]
        luma = torch.tensor([0.299, 0.587, 0.114], dtype=frames.dtype, device=frames.device)
        return torch.einsum("tchw,c->thw", frames, luma)[:, None]
    raise ValueError(f"cannot convert {frames.shape[1]}-channel frames to {channels} channels")


def frames_from_images(images: Image.Image | list[Image.Image], channels: int) -> torch.Tensor:
    """PIL image(s) -> ``(C, H, W)`` for one image, ``(T, C, H, W)`` for a list; float in [-1, 1], ``channels`` channels.

    Any PIL mode is read as RGB, then converted as :func:`to_channels` does (grey: ITU-R 601 luma).
    """
    single = isinstance(images, Image.Image)
    arrays = [np.asarray(image.convert("RGB")) for image in ([images] if single else images)]
    if not arrays or len({array.shape for array in arrays}) != 1:
        raise ValueError(f"expected one image or a non-empty list of images of one size, got sizes {[a.shape[:2] for a in arrays]}")
    frames = to_channels(from_uint8(np.stack(arrays)), channels)
    return frames[0] if single else frames


def write_video(
    frames: torch.Tensor | np.ndarray, path: str | os.PathLike[str], fps: float = 8.0, *, crf: int = 18
) -> Path:
    """Write one video atomically; the format follows the path (see the module docstring). Returns the path.

    ``frames``: torch ``(T, C, H, W)`` float in [-1, 1] or numpy ``(T, H, W, C)`` uint8, C in {1, 3}.
    ``crf``: H.264 quality for ``.mp4`` (0 lossless luma, 18 visually lossless, 23 x264 default).
    Parent directories are created; an existing file is replaced, a frame folder must be new or empty.
    """
    with video_writer(path, fps, crf=crf) as write:
        write(frames)
    return Path(path)


@contextmanager
def video_writer(
    path: str | os.PathLike[str], fps: float = 8.0, *, crf: int = 18
) -> Iterator[Callable[[torch.Tensor | np.ndarray], None]]:
    """Write a video piece by piece, e.g. as a long rollout makes its frames; atomic like :func:`write_video`.

    Yields ``write(frames)``, taking frames as :func:`write_video` does; call it any number of
    times. ``.mp4`` and frame folders are written as the frames come (memory flat in the length);
    ``.gif`` needs one palette for all frames, so its frames are kept until the end. The file
    appears at ``path`` only when the block completes; at least one frame must have been written.
    """
    kind = check_video_output(path)
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be positive and finite, got {fps}")
    written = 0
    with atomic_output(Path(path)) as staging:
        if kind == ".mp4":
            with av.open(str(staging), "w", options={"movflags": "+faststart"}) as container:
                stream = None

                def write(frames: torch.Tensor | np.ndarray) -> None:
                    nonlocal stream, written
                    pixels = _as_rgb_uint8(frames)
                    if stream is None:
                        stream = _add_h264_stream(container, pixels.shape[1:3], fps, crf)
                    for frame in _pad_to_even(pixels):
                        container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
                    written += len(pixels)

                yield write
                if stream is not None:
                    container.mux(stream.encode())
        elif kind == ".gif":
            pieces: list[np.ndarray] = []

            def write(frames: torch.Tensor | np.ndarray) -> None:
                nonlocal written
                pieces.append(_as_rgb_uint8(frames))
                written += len(pieces[-1])

            yield write
            if written:
                _write_gif(np.concatenate(pieces), staging, fps)
        else:
            staging.mkdir()

            def write(frames: torch.Tensor | np.ndarray) -> None:
                nonlocal written
                for frame in _as_rgb_uint8(frames):
                    Image.fromarray(frame).save(staging / f"frame_{written:05d}.png")
                    written += 1

            yield write
        if not written:
            raise ValueError(f"no frames were written to {path}")


def read_video(
    path: VideoSource,
    *,
    fps: float | None = None,
    start_frame: int = 0,
    num_frames: int | None = None,
    stride: int | None = None,
) -> VideoClip:
    """Read a video file (anything FFmpeg decodes, GIF included) or a folder of PNG/JPG frames.

    Returns ``VideoClip(frames (T, 3, H, W) float in [-1, 1], fps)``.

    ``fps`` resamples the frame rate: source frame ``i`` is taken to show at ``i / source_fps``
    (constant frame rate assumed), output frame ``j`` at ``j / fps`` for every ``j / fps`` before the
    end of the video, and each output frame is the source frame nearest in time (ties go to the
    later frame). For a folder, which stores no rate, ``fps`` *is* the source rate (default 8).
    Then ``start_frame``, ``stride`` and ``num_frames`` pick resampled frames ``start_frame``,
    ``start_frame + stride``, ... (``num_frames`` of them, fewer if the video ends first).
    Decoding stops as soon as the requested frames are in hand, and starts near ``start_frame``:
    a video file is sought to the key frame before it (frame ``i`` is the one shown at
    ``i / source_fps`` after the first; where the timestamps do not step by exactly one frame, a
    variable-rate video, it is decoded from the start instead), a folder skips earlier images.

    ``path`` may also be an open binary file (read from its start).

    Raises FileNotFoundError if ``path`` is missing, VideoReadError if it cannot be decoded, holds
    no frames, or has none in the requested range.
    """
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if start_frame < 0:
        raise ValueError(f"start_frame must be >= 0, got {start_frame}")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    step = 1 if stride is None else stride
    if step < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")

    path = _existing(path)

    def first_needed(source_fps: float) -> int:
        return int(np.floor(start_frame * source_fps / (source_fps if fps is None else fps) + 0.5))

    try:
        with _open_frames(path, DEFAULT_FPS if fps is None else fps, first_needed) as (source_fps, decoded):
            target_fps = source_fps if fps is None else fps
            picked, seen = _resample(decoded, source_fps / target_fps, start_frame, step, num_frames)
    except _InexactSeek:
        with _open_frames(path, DEFAULT_FPS if fps is None else fps) as (source_fps, decoded):
            picked, seen = _resample(decoded, source_fps / target_fps, start_frame, step, num_frames)
    if seen == 0:
        raise VideoReadError(f"{_name(path)}: video is empty (no frames decoded)")
    if not picked:
        raise VideoReadError(
            f"{_name(path)}: requested range is empty: start_frame={start_frame} but the video has only "
            f"{_count_after_resampling(seen, source_fps / target_fps)} frames at {target_fps:g} fps"
        )
    return VideoClip(frames=from_uint8(np.stack(picked)), fps=float(target_fps))


def video_info(path: VideoSource) -> dict[str, float | int]:
    """``{"num_frames", "fps", "width", "height"}`` of a video file or frame folder.

    The frame count comes from the container when it records one, otherwise the video is decoded
    to count. Folders report ``fps`` 8 (they store no rate). Errors as for ``read_video``.
    """
    path = _existing(path)
    if _is_folder(path):
        files = _frame_files(path)
        width, height = _load_image(files[0]).size
        return {"num_frames": len(files), "fps": DEFAULT_FPS, "width": width, "height": height}
    try:
        with av.open(_opened(path)) as container:
            stream = _video_stream(container, path)
            info = {
                "num_frames": stream.frames,
                "fps": _stream_fps(stream),
                "width": stream.codec_context.width,
                "height": stream.codec_context.height,
            }
            if not info["num_frames"]:
                info["num_frames"] = sum(1 for _ in container.decode(stream))
    except av.FFmpegError as err:
        raise VideoReadError(f"{_name(path)}: cannot read video: {err}") from err
    if info["num_frames"] == 0:
        raise VideoReadError(f"{_name(path)}: video is empty (no frames decoded)")
    return info


# --- writing -----------------------------------------------------------------------------------


def _as_rgb_uint8(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(frames, torch.Tensor):
        return to_uint8(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] not in (1, 3):
        raise ValueError(
            f"numpy frames must be uint8 (T, H, W, C) with C in (1, 3), got {frames.dtype} {frames.shape}"
        )
    return np.ascontiguousarray(np.broadcast_to(frames, (*frames.shape[:3], 3)))


def _rate(fps: float) -> Fraction:
    # Containers want a rational rate; the denominator bound keeps NTSC rates (30000/1001) exact.
    return Fraction(fps).limit_denominator(1001)


def _pad_to_even(pixels: np.ndarray) -> np.ndarray:
    # yuv420p subsamples chroma by 2: replicate the last row/column of odd sizes
    _, height, width, _ = pixels.shape
    return np.pad(pixels, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def _add_h264_stream(
    container: av.container.OutputContainer, size: tuple[int, int], fps: float, crf: int
) -> av.video.stream.VideoStream:
    height, width = size
    stream = container.add_stream("libx264", rate=_rate(fps))
    stream.width, stream.height = width + width % 2, height + height % 2
    stream.pix_fmt = "yuv420p"
    # x264's macroblock-tree rate control reads uninitialised memory on small frames (seen at 32x32
    # and 64x64, libx264 in PyAV 18.1): the same frames encoded twice gave different pixels, up to 19
    # levels apart. Without it a seed gives the same file every time on one machine (x264 output also
    # depends on its thread count, so on the number of cores); the default demo stays 2.6 kB.
    stream.options = {"crf": str(crf), "x264-params": "mbtree=0"}
    return stream


def _write_gif(pixels: np.ndarray, path: Path, fps: float) -> None:
    # Pillow's GIF writer merges identical consecutive frames, which would change the frame count,
    # so Pillow only builds the palette and FFmpeg's GIF encoder writes every frame.
    frames, height, width, _ = pixels.shape
    indexed = Image.fromarray(pixels.reshape(frames * height, width, 3)).quantize(
        colors=256, dither=Image.Dither.NONE
    )
    indices = np.asarray(indexed).reshape(frames, height, width)
    palette = np.zeros((256, 4), np.uint8)  # ARGB rows, as PyAV expects for pal8
    rgb = np.asarray(indexed.getpalette(), np.uint8).reshape(-1, 3)
    palette[: len(rgb), 1:] = rgb
    palette[:, 0] = 255
    with av.open(str(path), "w", format="gif", options={"loop": "0"}) as container:
        stream = container.add_stream("gif", rate=_rate(fps))
        stream.width, stream.height = width, height
        stream.pix_fmt = "pal8"
        for frame in indices:
            container.mux(stream.encode(av.VideoFrame.from_ndarray((frame, palette), format="pal8")))
        container.mux(stream.encode())


# --- reading -----------------------------------------------------------------------------------


def frames_at_rate(num_frames: int, source_fps: float, fps: float | None) -> int:
    """How many frames a video of ``num_frames`` at ``source_fps`` has when :func:`read_video` resamples it to ``fps``."""
    return num_frames if fps is None else _count_after_resampling(num_frames, source_fps / fps)


def _is_folder(source: Path | BinaryIO) -> bool:
    return isinstance(source, Path) and source.is_dir()


def _opened(source: Path | BinaryIO) -> str | BinaryIO:
    """What ``av.open`` takes: a path string, or the binary file rewound to its start."""
    if isinstance(source, Path):
        return str(source)
    source.seek(0)
    return source


def _name(source: Path | BinaryIO) -> str:
    return str(source) if isinstance(source, Path) else str(getattr(source, "name", "<video stream>"))


def _existing(path: VideoSource) -> Path | BinaryIO:
    return path if hasattr(path, "read") else existing_video_path(path)


# A decoded frame, converted to (H, W, 3) uint8 pixels when called (inside the open container).
Frame = Callable[[], np.ndarray]


class _InexactSeek(Exception):
    """Frame timestamps after a seek do not give frame indices exactly; decode from the start."""


@contextmanager
def _open_frames(
    path: Path | BinaryIO, folder_fps: float, first_needed: Callable[[float], int] = lambda fps: 0
) -> Iterator[tuple[float, Iterator[tuple[int, Frame]]]]:
    """Yield ``(source_fps, lazy iterator of (index, frame))``; ``folder_fps`` for folders.

    Frames come in order; the first has index at most ``first_needed(source_fps)`` (video files
    are sought there, see :func:`read_video`; the iterator raises :class:`_InexactSeek` where
    that is not exact). The container stays open while the caller pulls frames, so decoder
    failures that surface mid-stream (a truncated file) are caught here too and reported as
    VideoReadError.
    """
    if _is_folder(path):
        files = _frame_files(path)
        # keep the last frame at least, so the frame count stays known
        yield folder_fps, _folder_frames(files, min(first_needed(folder_fps), len(files) - 1))
        return
    try:
        with av.open(_opened(path)) as container:
            stream = _video_stream(container, path)
            stream.thread_type = "AUTO"
            source_fps = _stream_fps(stream)
            yield source_fps, _indexed_frames(container, stream, source_fps, first_needed(source_fps))
    except av.FFmpegError as err:
        raise VideoReadError(f"{_name(path)}: cannot read video: {err}") from err


def _indexed_frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, fps: float, start: int
) -> Iterator[tuple[int, Frame]]:
    decoded = container.decode(stream)
    if start <= 0:
        yield from ((i, partial(frame.to_ndarray, format="rgb24")) for i, frame in enumerate(decoded))
        return
    first = next(decoded, None)
    if first is None:
        return
    if first.pts is None or first.time_base is None:
        raise _InexactSeek
    origin, seconds_per_tick = first.pts, float(first.time_base)
    container.seek(origin + int(start / fps / seconds_per_tick), stream=stream, backward=True, any_frame=False)
    expected = None
    for frame in container.decode(stream):
        if frame.pts is None:
            raise _InexactSeek
        position = (frame.pts - origin) * seconds_per_tick * fps
        index = round(position)
        # a timestamp off the frame grid, a gap, or a landing after the wanted frame: not exact
        if abs(position - index) > 0.25 or (index != expected if expected is not None else index > start):
            raise _InexactSeek
        expected = index + 1
        yield index, partial(frame.to_ndarray, format="rgb24")


def _video_stream(container: av.container.InputContainer, path: Path | BinaryIO) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoReadError(f"{_name(path)}: no video stream found (format {container.format.name!r})")
    return container.streams.video[0]


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    # FFmpeg's own best guess first: a GIF's average rate comes out skewed (12.5 for the 12 fps
    # files written here, whose delays alternate 8/9 cs) while its guessed rate is the nominal one.
    rate = stream.guessed_rate or stream.average_rate or stream.base_rate
    return float(rate) if rate else DEFAULT_FPS


def _frame_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise VideoReadError(f"{folder}: video is empty (no {'/'.join(IMAGE_SUFFIXES)} frames in folder)")
    return files


def _load_image(file: Path) -> Image.Image:
    try:
        with Image.open(file) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise VideoReadError(f"{file}: cannot read frame image: {err}") from err


def _folder_frames(files: list[Path], start: int = 0) -> Iterator[tuple[int, Frame]]:
    first: list[tuple[Path, tuple[int, int]]] = []  # the first image loaded, which the others must match

    def load(file: Path) -> np.ndarray:
        image = _load_image(file)
        if not first:
            first.append((file, image.size))
        if image.size != first[0][1]:
            raise VideoReadError(f"{file}: frame size {image.size} differs from {first[0][0].name}'s {first[0][1]}")
        return np.asarray(image)

    for index in range(start, len(files)):
        yield index, partial(load, files[index])


def _resample(
    frames: Iterator[tuple[int, Frame]], ratio: float, start: int, step: int, limit: int | None
) -> tuple[list[np.ndarray], int]:
    """Pick resampled frames ``start, start + step, ...`` from a stream of ``(index, frame)``
    (``ratio`` = source/target fps; consecutive indices from at most the first one needed).
    Only picked frames are converted to pixels (colour conversion costs more than decoding).

    Returns the picked frames and how many source frames there were up to the last one decoded.
    Output frame ``j`` is source frame ``floor(j * ratio + 0.5)``, which only grows with ``j``, so
    one pass suffices.
    """
    picked: list[np.ndarray] = []
    j, seen, last = start, 0, None
    for i, frame in frames:
        seen, last = i + 1, frame
        pixels = None
        while (limit is None or len(picked) < limit) and int(np.floor(j * ratio + 0.5)) == i:
            pixels = frame() if pixels is None else pixels
            picked.append(pixels)
            j += step
        if limit is not None and len(picked) == limit:
            break
    # When upsampling, times in the last frame's second half are nearest to a frame that does not
    # exist; the last frame is still on screen then, so it fills them.
    pixels = None
    while last is not None and (limit is None or len(picked) < limit) and j * ratio < seen:
        pixels = last() if pixels is None else pixels
        picked.append(pixels)
        j += step
    return picked, seen


def _count_after_resampling(source_frames: int, ratio: float) -> int:
    # Output frame j exists while its time j / fps is before the end, i.e. j * ratio < source_frames.
    return int(np.ceil(source_frames / ratio - 1e-9))
