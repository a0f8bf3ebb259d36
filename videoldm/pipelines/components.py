"""Load some components of a pipeline directory (not all of them) and read the frames it works on.

Training and latent caching need a pipeline's autoencoder and text encoder without its UNet (or
the UNet without a scheduler for sampling), and the frame size and channel count its models were
made for; both come from the directory's ``model_index.json`` and configs
(:func:`~videoldm.pipelines.directory.inspect_pipeline_directory`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .directory import REQUIRED_COMPONENTS, PipelineInfo, inspect_pipeline_directory


@dataclass(frozen=True)
class FrameFormat:
    """Pixel frames a pipeline's models were made for: ``height`` x ``width``, ``channels``; its latents' ``latent_channels``."""

    height: int
    width: int
    channels: int
    latent_channels: int


def frame_format(vae_config: dict[str, Any], unet_config: dict[str, Any] | None = None) -> FrameFormat:
    """The frames of an autoencoder (and UNet): the UNet's ``sample_size`` times the autoencoder's
    downsampling (the autoencoder's own ``sample_size`` without a UNet), its channels.

    Configs of a :class:`TemporalDecoder` / :class:`VideoUNet` hold their image model's config
    inside (``autoencoder_config`` / ``unet_config``); either form is taken.
    """
    vae = vae_config.get("autoencoder_config", vae_config)
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    if unet_config is not None:
        unet = unet_config.get("unet_config", unet_config)
        size = unet["sample_size"]
        height, width = (size, size) if isinstance(size, int) else size
        height, width = height * factor, width * factor
    else:
        size = vae["sample_size"]
        height, width = (size, size) if isinstance(size, int) else size
    return FrameFormat(int(height), int(width), int(vae.get("in_channels", 3)), int(vae.get("latent_channels", 4)))


def pipeline_frame_format(info: PipelineInfo) -> FrameFormat:
    """:func:`frame_format` of a pipeline directory, from its configs alone."""
    return frame_format(info.configs["vae"], info.configs["unet"])


def load_components(directory: str | Path, names: tuple[str, ...], dtype: torch.dtype = torch.float32,
                    required: tuple[str, ...] = REQUIRED_COMPONENTS) -> dict[str, Any]:
    """The named components of a pipeline directory that it has (absent optional ones are left out).

    Each is loaded with its class's own ``from_pretrained`` (the class ``model_index.json`` names),
    models in ``dtype``. ``required`` as in :func:`~videoldm.pipelines.directory.inspect_pipeline_directory`.
    """
    info = inspect_pipeline_directory(directory, required)
    loaded: dict[str, Any] = {}
    for name in names:
        if name not in info.components:
            continue
        library, class_name = info.components[name]
        component_class = getattr(importlib.import_module(library), class_name)
        is_model = isinstance(component_class, type) and issubclass(component_class, torch.nn.Module)
        loaded[name] = component_class.from_pretrained(info.path / name, **({"dtype": dtype} if is_model else {}))
    return loaded
