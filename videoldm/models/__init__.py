"""torch.nn modules of Video LDM (no I/O, no training loops).

Imported on first use (PEP 562), like the package's top level: :mod:`~videoldm.models.configs` reads
model configs without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_PUBLIC = {
    "TemporalDecoder": ".autoencoder",
    "LabelEncoder": ".conditioning",
    "VideoDiscriminator": ".discriminator",
    **dict.fromkeys(("AlphaBlender", "BlendedTemporalLayer", "FrameContext", "TemporalAttention", "TemporalConvBlock"),
                    ".temporal"),
    **dict.fromkeys(("TemporalOptions", "TemporalWeights", "VideoUNet", "VideoUNetOutput"), ".unet"),
    "VideoUpsampler": ".upsampler",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    """Import a public class on first access (PEP 562)."""
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
