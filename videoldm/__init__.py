"""videoldm: Video Latent Diffusion Models (Blattmann et al., CVPR 2023).

The public classes are imported on first use (``from videoldm import VideoUNet`` works as usual), so
``import videoldm.cli`` or ``videoldm.__version__`` does not import torch and diffusers; the
command line imports them itself, see :mod:`videoldm._startup`.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._startup import garbage_collection_paused as _garbage_collection_paused

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    **dict.fromkeys(("AlphaBlender", "LabelEncoder", "TemporalAttention", "TemporalConvBlock", "TemporalDecoder",
                     "VideoDiscriminator", "VideoUNet", "VideoUNetOutput"), ".models"),
    "VideoUpsampler": ".models.upsampler",
    **dict.fromkeys(("CascadePipeline", "VideoLDMPipeline", "VideoLDMPipelineOutput", "VideoUpsamplerPipeline"),
                    ".pipelines"),
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str) -> Any:
    """Import a public class on first access (PEP 562)."""
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # torch and diffusers are imported here; see _startup for why the collector waits.
    with _garbage_collection_paused():
        value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
