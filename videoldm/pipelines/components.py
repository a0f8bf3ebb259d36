"""Load some components of a pipeline directory, not all of them.

Training and latent caching need a pipeline's autoencoder and text encoder without its UNet (or
the UNet without a scheduler for sampling); which classes to load comes from the directory's
``model_index.json`` (:func:`~videoldm.pipelines.directory.inspect_pipeline_directory`), the frame
size and channels its models were made for from :func:`~videoldm.pipelines.directory.frame_format`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from .directory import REQUIRED_COMPONENTS, PipelineInfo, inspect_pipeline_directory


def load_components(directory: str | Path | PipelineInfo, names: tuple[str, ...], dtype: torch.dtype = torch.float32,
                    required: tuple[str, ...] = REQUIRED_COMPONENTS) -> dict[str, Any]:
    """The named components of a pipeline directory that it has (absent optional ones are left out).

    Each is loaded with its class's own ``from_pretrained`` (the class ``model_index.json`` names),
    models in ``dtype``. ``directory`` may be its :class:`~videoldm.pipelines.directory.PipelineInfo`,
    already inspected; ``required`` as in :func:`~videoldm.pipelines.directory.inspect_pipeline_directory`.
    """
    info = directory if isinstance(directory, PipelineInfo) else inspect_pipeline_directory(directory, required)
    loaded: dict[str, Any] = {}
    for name in names:
        if name not in info.components:
            continue
        library, class_name = info.components[name]
        component_class = getattr(importlib.import_module(library), class_name)
        is_model = isinstance(component_class, type) and issubclass(component_class, torch.nn.Module)
        loaded[name] = component_class.from_pretrained(info.path / name, **({"dtype": dtype} if is_model else {}))
    return loaded
