"""CLIP-SIM: text-video agreement as the mean cosine similarity of CLIP frame and prompt embeddings.

This is CLIPSIM as defined by Wu et al. (GODIVA, 2021) and reported by Video LDM and Make-A-Video:
the average over frames of the cosine of each frame's and the caption's CLIP embedding, unscaled
(Video LDM's 0.2929 on MSR-VTT), not CLIPScore's ``w * max(cos, 0)``.

The CLIP model is read from a local directory (``CLIPModel.save_pretrained`` layout with its
tokenizer files), never downloaded. Frames are resized (shorter side) and centre-cropped to the
vision tower's input size and normalised with the OpenAI CLIP statistics, unless the directory's
``preprocessor_config.json`` gives others.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ._weights import require_file

__all__ = ["clip_sim", "load_clip"]

_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def load_clip(clip_dir: str | Path) -> tuple[nn.Module, object, tuple[float, ...], tuple[float, ...]]:
    """(CLIPModel in eval mode, tokenizer, image mean, image std) from a local directory."""
    from transformers import AutoTokenizer, CLIPModel

    clip_dir = Path(clip_dir)
    require_file(clip_dir / "config.json", "save a CLIP model there with CLIPModel.save_pretrained")
    model = CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(clip_dir, local_files_only=True)
    mean, std = _OPENAI_MEAN, _OPENAI_STD
    preprocessor = clip_dir / "preprocessor_config.json"
    if preprocessor.is_file():
        config = json.loads(preprocessor.read_text())
        mean, std = tuple(config.get("image_mean", mean)), tuple(config.get("image_std", std))
    return model, tokenizer, mean, std


def _embedding(output: torch.Tensor | object) -> torch.Tensor:
    # transformers < 5 returns the projected embedding, 5.x an output object holding it as pooler_output.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _clip_pixels(frames: torch.Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    if frames.shape[1] == 1:
        frames = frames.expand(-1, 3, -1, -1)
    h, w = frames.shape[-2:]
    # The long side truncated, as CLIP's own processors (transformers, torchvision) compute it.
    long_side = int(size * max(h, w) / min(h, w))
    resized = (size, long_side) if h <= w else (long_side, size)
    frames = F.interpolate(frames.float(), size=resized, mode="bicubic", align_corners=False, antialias=True)
    top, left = (resized[0] - size) // 2, (resized[1] - size) // 2
    frames = frames[..., top:top + size, left:left + size]
    x = (frames.clamp(-1, 1) + 1) / 2
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@torch.inference_mode()
def clip_sim(videos: torch.Tensor, prompts: list[str], clip_dir: str | Path, *, batch_size: int = 32) -> float:
    """Mean over videos and frames of cos(CLIP(frame), CLIP(prompt)).

    ``videos`` (N, T, C, H, W) in [-1, 1] (C in {1, 3}); ``prompts``: N strings, one per video.
    Returns a cosine in [-1, 1] (papers often report it times 100).
    """
    if videos.ndim != 5 or len(prompts) != videos.shape[0]:
        raise ValueError(f"need (N, T, C, H, W) videos and N prompts, got {tuple(videos.shape)} and {len(prompts)}")
    model, tokenizer, mean, std = load_clip(clip_dir)
    tokens = tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt")
    text = F.normalize(_embedding(model.get_text_features(**tokens)), dim=-1)  # (N, D)
    n, t = videos.shape[:2]
    frames = rearrange(videos, "n t c h w -> (n t) c h w")
    size = model.config.vision_config.image_size
    image = torch.cat([
        _embedding(model.get_image_features(pixel_values=_clip_pixels(frames[s:s + batch_size], size, mean, std)))
        for s in range(0, frames.shape[0], batch_size)
    ])
    image = rearrange(F.normalize(image, dim=-1), "(n t) d -> n t d", n=n, t=t)
    return float(torch.einsum("ntd,nd->nt", image, text).mean())
