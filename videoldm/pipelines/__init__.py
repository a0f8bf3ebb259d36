"""The pipelines, one task each (diffusers-style), and the cascade that composes them.

Imported on first use (PEP 562), like the package's top level: :mod:`~videoldm.pipelines.directory`
and :mod:`~videoldm.pipelines.planning` read pipeline directories and plan requests without torch.
"""

from __future__ import annotations

from .._startup import lazy_exports

# public name -> the module that defines it
_PUBLIC = {
    **dict.fromkeys(("LatentVideoPipeline", "SamplingOptions", "VideoLDMPipelineOutput"), ".base"),
    **dict.fromkeys(("CascadePipeline", "CascadePipelineOutput"), ".cascade"),
    **dict.fromkeys(("decode_latents", "stream_decode"), ".decoding"),
    "VideoInterpolationPipeline": ".interpolation",
    **dict.fromkeys(("Guidance", "denoise", "guided_prediction"), ".sampling"),
    "VideoUpsamplerPipeline": ".upsample",
    "VideoLDMPipeline": ".video",
}
# The pipeline classes a saved model_index.json may name as its "_class_name" (videoldm registers them with diffusers).
PIPELINE_NAMES = ("CascadePipeline", "VideoInterpolationPipeline", "VideoLDMPipeline", "VideoUpsamplerPipeline")

__all__ = sorted(_PUBLIC) + ["PIPELINE_NAMES"]


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC, globals())
