"""videoldm: Video Latent Diffusion Models (Blattmann et al., CVPR 2023).

The public classes are imported on first use (``from videoldm import VideoUNet`` works as usual), so
``import videoldm.cli`` or ``videoldm.__version__`` does not import torch and diffusers; the
command line imports them itself, see :mod:`videoldm._startup`.

Importing videoldm makes saved videoldm pipelines loadable by ``DiffusionPipeline.from_pretrained``:
diffusers resolves a ``model_index.json``'s ``_class_name`` inside the ``diffusers`` module, so our
pipeline classes are registered there as soon as diffusers is imported (now, or when it is).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Any

from ._startup import garbage_collection_paused as _garbage_collection_paused
from ._startup import lazy_exports as _lazy_exports
from .pipelines import PIPELINE_NAMES

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    **dict.fromkeys(("AlphaBlender", "LabelEncoder", "TemporalAttention", "TemporalConvBlock", "TemporalDecoder",
                     "VideoDiscriminator", "VideoUNet", "VideoUNetOutput"), ".models"),
    "VideoUpsampler": ".models.upsampler",
    **dict.fromkeys(("CascadePipeline", "SamplingOptions", "VideoInterpolationPipeline", "VideoLDMPipeline",
                     "VideoLDMPipelineOutput", "VideoUpsamplerPipeline"), ".pipelines"),
}

__all__ = sorted(_PUBLIC) + ["__version__"]


__getattr__, __dir__ = _lazy_exports(__name__, _PUBLIC, globals())


def _register_pipelines(diffusers: ModuleType) -> None:
    """Let the ``diffusers`` module resolve our pipeline class names, importing them on first use: its
    class becomes a subclass whose ``__getattr__`` knows them (importing them here could run inside
    an import of our own models, which imports diffusers)."""
    module_class = type(diffusers)
    if issubclass(module_class, _ResolvesVideoLDMPipelines):
        return
    diffusers.__class__ = type("DiffusersWithVideoLDM", (_ResolvesVideoLDMPipelines, module_class), {})


class _ResolvesVideoLDMPipelines(ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name in PIPELINE_NAMES:
            with _garbage_collection_paused():
                value = getattr(importlib.import_module(".pipelines", __name__), name)
            setattr(self, name, value)
            return value
        # diffusers' own lazy module resolves the rest
        return super().__getattr__(name)  # type: ignore[misc]


class _RegisterWithDiffusers(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``diffusers`` is first imported, it wraps the real loader so that our
    pipelines are registered right after diffusers has loaded (importing videoldm stays torch-free)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "diffusers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            load(module)
            # diffusers replaces its module in sys.modules by a lazy one as it loads: register there
            _register_pipelines(sys.modules[name])

        spec.loader.exec_module = exec_module
        return spec


if "diffusers" in sys.modules:
    _register_pipelines(sys.modules["diffusers"])
elif not any(isinstance(finder, _RegisterWithDiffusers) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithDiffusers())
