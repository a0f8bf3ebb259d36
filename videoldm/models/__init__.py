"""torch.nn modules of Video LDM (no I/O, no training loops).

Imported on first use (PEP 562), like the package's top level: :mod:`~videoldm.models.configs` reads
model configs without torch.
"""

from __future__ import annotations

from .._startup import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC, globals())
