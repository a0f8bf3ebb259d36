"""Real footage: a film cut into scenes, prepared once, with a held-out stretch (the bunny model's data).

The film is *Big Buck Bunny* (c) Blender Foundation, CC-BY 3.0 (peach.blender.org): 1280x720, 24 fps,
14,315 frames, shipped inside the moviepy 2.2.1 source distribution, which a user fetches with
``pip download --no-deps --no-binary :all: moviepy==2.2.1 -d DIR`` (nothing is downloaded here). Any
other film works the same way, given as a video file.

Preparing (:func:`prepare_film`, on first use of a ``data: {kind: film, path: ...}`` section): the
film's frames are decoded with PyAV and scaled (area) to ``height`` rows, keeping the aspect ratio,
into ``frames.npy`` (uint8 ``(N, H, W, 3)``, read memory-mapped); scene cuts are found as spikes of the
block-averaged change between consecutive frames (:func:`detect_scene_cuts`); ``film.json`` holds
the frame rate, the cuts and the split. The split (:class:`FilmSplit`): a contiguous stretch of the
film is held out (its scenes never train; scenes that cross its edges belong to neither side), and
ranges such as the opening titles and the end credits are excluded. :class:`FilmClips` draws clips
inside scenes, never across a cut.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import av
import numpy as np
import torch
from torch.utils.data import Dataset

from .io import from_uint8
from .paths import atomic_output
from .sources import ClipFormat, fit_frames

__all__ = ["BUNNY_SPLIT", "FILM_DOWNLOAD", "FilmClips", "FilmSplit", "detect_scene_cuts", "film_source", "film_video",
           "prepare_film", "scene_change_scores", "split_scenes"]

FILM_DOWNLOAD = "pip download --no-deps --no-binary :all: moviepy==2.2.1 -d DIR"
# where the film lies inside the moviepy 2.2.1 sdist: a zip inside the tarball
_SDIST_ZIP = "docs/_static/medias/getting_started/moviepy_10_minutes/moviepy_10_minutes.zip"
_ZIP_FILM = "moviepy_10_minutes/resources/bbb.mp4"
FRAMES_FILE = "frames.npy"
FILM_FILE = "film.json"
_PREPARED_VERSION = 1


@dataclass(frozen=True)
class FilmSplit:
    """Which frames of a film train and which are held out: ``held_out`` ``[start, end)`` and ``excluded``
    ranges (titles, credits), in frames of the film at its own rate."""

    held_out: tuple[int, int]
    excluded: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        for start, end in (self.held_out, *self.excluded):
            if not 0 <= start < end:
                raise ValueError(f"frame ranges must be [start, end) with 0 <= start < end, got [{start}, {end})")


# Big Buck Bunny: the opening up to the title (0-30 s) and the end credits (from 8:10, after the last
# scene) do not train; 2:26-3:41 (the bunny in the meadow teased by the three rodents, 1,800 frames of
# the film's typical content) never trains and is where every measurement is made.
BUNNY_SPLIT = FilmSplit(held_out=(3500, 5300), excluded=((0, 720), (11757, 14315)))


def film_video(path: str | os.PathLike[str]) -> BinaryIO | str:
    """The film's video, for ``av.open``: ``path`` is the moviepy 2.2.1 sdist (``.tar.gz``) or the zip inside
    it (the film in memory), or a video file (its path). Raises ValueError naming the file and how to get it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"{path}: no such file; get the film (Big Buck Bunny, CC-BY 3.0) with `{FILM_DOWNLOAD}` "
                         "and give the moviepy-2.2.1.tar.gz it writes, or any video file")
    if path.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(path) as archive:
            member = next((m for m in archive.getmembers() if m.name.endswith(_SDIST_ZIP)), None)
            if member is None:
                raise ValueError(f"{path}: holds no {_SDIST_ZIP}; expected the moviepy 2.2.1 sdist ({FILM_DOWNLOAD})")
            zip_bytes = archive.extractfile(member).read()
        return film_video_from_zip(io.BytesIO(zip_bytes), str(path))
    if path.suffix == ".zip":
        with path.open("rb") as handle:
            return film_video_from_zip(handle, str(path))
    return str(path)


def film_video_from_zip(handle: BinaryIO, name: str) -> BinaryIO:
    """The film inside moviepy's ``moviepy_10_minutes.zip`` (opened from ``handle``; ``name`` names it in errors)."""
    with zipfile.ZipFile(handle) as archive:
        if _ZIP_FILM not in archive.namelist():
            raise ValueError(f"{name}: holds no {_ZIP_FILM}")
        film = io.BytesIO(archive.read(_ZIP_FILM))
    film.name = f"{name}:{_ZIP_FILM}"
    return film


def decode_scaled_frames(video: BinaryIO | str, height: int) -> tuple[float, Iterator[np.ndarray]]:
    """``(fps, frames)``: every frame of ``video`` scaled (area) to ``height`` rows, the width keeping the
    aspect ratio (rounded to even), as uint8 ``(height, width, 3)`` RGB arrays."""
    container = av.open(video)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = stream.guessed_rate or stream.average_rate
    source_height, source_width = stream.codec_context.height, stream.codec_context.width
    width = 2 * round(source_width * height / source_height / 2)

    def frames() -> Iterator[np.ndarray]:
        with container:
            for frame in container.decode(stream):
                yield frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="AREA")

    return float(rate), frames()


def scene_change_scores(frames: np.ndarray, pool: int = 4) -> np.ndarray:
    """How much each frame differs from the previous one: the mean absolute difference of the two frames
    averaged over ``pool`` x ``pool`` blocks, in [0, 1]; ``frames`` uint8 ``(N, H, W, 3)`` -> ``(N,)`` (0 for
    frame 0). Pooling keeps small motion low; a cut changes most blocks at once."""
    count, height, width, channels = frames.shape
    rows, columns = height // pool, width // pool
    blocks = np.empty((count, rows, columns, channels), np.float32)
    for start in range(0, count, 1024):  # bounded memory on a whole film
        piece = frames[start : start + 1024, : rows * pool, : columns * pool].astype(np.float32) / 255
        blocks[start : start + 1024] = piece.reshape(len(piece), rows, pool, columns, pool, channels).mean(axis=(2, 4))
    scores = np.zeros(count)
    scores[1:] = np.abs(np.diff(blocks, axis=0)).mean(axis=(1, 2, 3))
    return scores


def detect_scene_cuts(scores: np.ndarray, threshold: float = 0.06, contrast: float = 10.0, window: int = 12,
                      min_scene: int = 8) -> list[int]:
    """The frames that start a new scene, from :func:`scene_change_scores` ``(N,)``.

    A cut is a score above ``threshold`` that is also ``contrast`` times the median score of the
    ``window`` frames on each side (a spike, not fast motion or a slow dissolve), at least
    ``min_scene`` frames from another cut (the highest of close candidates wins).
    """
    cuts: list[int] = []
    for index in np.argsort(-scores, kind="stable"):
        index = int(index)
        if scores[index] <= threshold:
            break
        neighbours = np.concatenate([scores[max(index - window, 1) : index], scores[index + 1 : index + 1 + window]])
        if len(neighbours) and scores[index] < contrast * max(float(np.median(neighbours)), 1e-3):
            continue
        if all(abs(index - cut) >= min_scene for cut in cuts):
            cuts.append(index)
    return sorted(cuts)


def film_scenes(cuts: Sequence[int], num_frames: int) -> list[tuple[int, int]]:
    """Scenes ``[start, end)`` of a film of ``num_frames`` frames cut at ``cuts``."""
    edges = [0, *cuts, num_frames]
    return [(start, end) for start, end in zip(edges[:-1], edges[1:]) if end > start]


def split_scenes(scenes: Sequence[tuple[int, int]], split: FilmSplit) -> dict[str, list[tuple[int, int]]]:
    """``{"train": [...], "held_out": [...]}``: the scenes wholly inside the held-out stretch are held out;
    the scenes wholly outside it train, their excluded frames cut away (each remaining piece a scene)."""
    held_start, held_end = split.held_out
    held_out = [(start, end) for start, end in scenes if start >= held_start and end <= held_end]
    train = []
    for start, end in scenes:
        if end <= held_start or start >= held_end:
            pieces = [(start, end)]
            for cut_start, cut_end in split.excluded:
                pieces = [piece for s, e in pieces
                          for piece in ((s, min(e, cut_start)), (max(s, cut_end), e)) if piece[1] > piece[0]]
            train.extend(pieces)
    return {"train": train, "held_out": held_out}


def prepare_film(video: str | os.PathLike[str], directory: str | os.PathLike[str], height: int = 64,
                 split: FilmSplit = BUNNY_SPLIT) -> Path:
    """Decode ``video`` (:func:`film_video`) into ``directory`` (``frames.npy``, ``film.json``: see the
    module docstring), atomically; an already prepared directory with the same settings is kept. Returns it."""
    directory = Path(directory)
    settings = {"version": _PREPARED_VERSION, "source": str(Path(video).expanduser().absolute()), "height": height,
                "split": asdict(split)}
    if (directory / FILM_FILE).is_file():
        prepared = json.loads((directory / FILM_FILE).read_text())
        if {key: prepared.get(key) for key in settings} == json.loads(json.dumps(settings)):
            return directory
        raise ValueError(f"{directory} holds a film prepared with other settings; give another directory")
    fps, frames = decode_scaled_frames(film_video(video), height)
    pieces = list(frames)
    if not pieces:
        raise ValueError(f"{video}: no frames decoded")
    stacked = np.stack(pieces)
    cuts = detect_scene_cuts(scene_change_scores(stacked))
    scenes = film_scenes(cuts, len(stacked))
    with atomic_output(directory) as staging:
        staging.mkdir(parents=True)
        np.save(staging / FRAMES_FILE, stacked)
        description = {**settings, "fps": fps, "num_frames": len(stacked), "width": stacked.shape[2],
                       "cuts": cuts, "scenes": split_scenes(scenes, split)}
        (staging / FILM_FILE).write_text(json.dumps(description) + "\n")
    return directory


def default_film_cache(video: str | os.PathLike[str], height: int) -> Path:
    """Where a film is prepared unless a recipe says (``data.cache``): ``$XDG_CACHE_HOME/videoldm/film-<name>-<height>``."""
    name = Path(video).name.split(".")[0]
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "videoldm" / f"film-{name}-{height}"


def film_source(path: str | os.PathLike[str], clip: ClipFormat, split: str = "train",
                cache: str | os.PathLike[str] | None = None, held_out: list[int] | None = None,
                excluded: list[list[int]] | None = None) -> "FilmClips":
    """A ``data: {kind: film}`` source: ``path`` is a prepared film directory, or the film (:func:`film_video`),
    prepared (:func:`prepare_film`, frames ``clip.height`` rows high) into ``cache`` on first use with the
    split ``held_out`` ``[start, end]`` and ``excluded`` ``[[start, end], ...]`` (frames; default
    :data:`BUNNY_SPLIT`)."""
    if held_out is None and excluded is not None:
        raise ValueError("data: excluded frame ranges need held_out (the film's own split) beside them")
    path = Path(path).expanduser()
    if not (path / FILM_FILE).is_file():
        split_frames = BUNNY_SPLIT if held_out is None else FilmSplit(tuple(held_out), tuple(map(tuple, excluded or ())))
        path = prepare_film(path, Path(cache).expanduser() if cache else default_film_cache(path, clip.height),
                            clip.height, split_frames)
    return FilmClips(path, clip, split)


@dataclass
class _Starts:
    """The clip starts of a split: scene ``scenes[k]`` offers ``counts[k]`` starts, numbered in order."""

    scenes: list[tuple[int, int]]
    counts: list[int] = field(default_factory=list)

    def locate(self, index: int) -> tuple[int, int]:
        """Clip ``index`` -> (scene start frame, offset in the scene)."""
        for (start, _), count in zip(self.scenes, self.counts):
            if index < count:
                return start, index
            index -= count
        raise IndexError(index)


class FilmClips(Dataset):
    """Clips of a prepared film (:func:`prepare_film`) inside the scenes of one ``split`` (``train`` or ``held_out``).

    A clip is ``clip.num_frames`` frames, every ``stride``-th frame of the film (``clip.fps`` given: the
    film's rate over it, rounded), all in one scene. Item ``i`` is the ``i``-th possible clip start
    (scene by scene, frame by frame), so every clip is equally likely; frames are scaled to cover
    ``clip.height`` x ``clip.width`` and cropped at an offset from the draw's generator.
    ``clip_starts()`` lists evenly spaced clips (the measurements' held-out set).
    """

    def __init__(self, path: str | os.PathLike[str], clip: ClipFormat, split: str = "train") -> None:
        self.path = Path(path)
        if not (self.path / FILM_FILE).is_file():
            raise ValueError(f"{self.path}: not a prepared film (no {FILM_FILE})")
        self.description = json.loads((self.path / FILM_FILE).read_text())
        if split not in self.description["scenes"]:
            raise ValueError(f"split must be one of {sorted(self.description['scenes'])}, got {split!r}")
        self.clip, self.split = clip, split
        self.stride = max(1, round(self.description["fps"] / clip.fps)) if clip.fps else 1
        span = (clip.num_frames - 1) * self.stride + 1
        scenes = [tuple(scene) for scene in self.description["scenes"][split] if scene[1] - scene[0] >= span]
        self.starts = _Starts(scenes, [end - start - span + 1 for start, end in scenes])
        if not scenes:
            raise ValueError(f"{self.path}: no {split} scene holds a clip of {clip.num_frames} frames at stride {self.stride}")
        self._frames: np.ndarray | None = None
        # the film was checked whole when it was prepared: no file is ever skipped
        self.skipped: Counter = Counter()
        self.skipped_files: dict[str, str] = {}

    @property
    def frames(self) -> np.ndarray:
        """The film's frames, uint8 ``(N, H, W, 3)``, memory-mapped (opened in each data-loader worker)."""
        if self._frames is None:
            self._frames = np.load(self.path / FRAMES_FILE, mmap_mode="r")
        return self._frames

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_frames": None}

    def __len__(self) -> int:
        return sum(self.starts.counts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.sample(index, torch.Generator().manual_seed(index))

    def clip_frames(self, first: int) -> torch.Tensor:
        """The clip starting at film frame ``first`` before cropping: ``(T, 3, H, W)`` in [-1, 1]."""
        indices = first + self.stride * np.arange(self.clip.num_frames)
        return from_uint8(np.ascontiguousarray(self.frames[indices]))

    def sample(self, index: int, generator: torch.Generator) -> dict[str, Any]:
        """Clip ``index`` as ``{"video": (T, C, H, W)}`` in [-1, 1], cropped at an offset from ``generator``."""
        scene_start, offset = self.starts.locate(index)
        return {"video": fit_frames(self.clip_frames(scene_start + offset), self.clip, generator)}

    def clip_starts(self, hop: int | None = None) -> list[int]:
        """Film frames starting clips every ``hop`` frames of each scene (default: the clip's span, so the clips do
        not overlap), as many as fit, scene by scene: the measurements' held-out set."""
        span = (self.clip.num_frames - 1) * self.stride + 1
        hop = hop or span
        return [start + k * hop for start, end in self.starts.scenes for k in range((end - start - span) // hop + 1)]
