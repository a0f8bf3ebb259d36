"""videoldm: Video Latent Diffusion Models (Blattmann et al., CVPR 2023)."""

__version__ = "0.1.0"

from ._startup import garbage_collection_paused as _garbage_collection_paused

# torch and diffusers are imported here; see _startup for why the collector waits.
with _garbage_collection_paused():
    from .models import (
        AlphaBlender,
        LabelEncoder,
        TemporalAttention,
        TemporalConvBlock,
        TemporalDecoder,
        VideoDiscriminator,
        VideoUNet,
        VideoUNetOutput,
    )
    from .models.upsampler import VideoUpsampler
    from .pipelines import CascadePipeline, VideoLDMPipeline, VideoLDMPipelineOutput, VideoUpsamplerPipeline

__all__ = [
    "AlphaBlender",
    "CascadePipeline",
    "LabelEncoder",
    "TemporalAttention",
    "TemporalConvBlock",
    "TemporalDecoder",
    "VideoDiscriminator",
    "VideoLDMPipeline",
    "VideoLDMPipelineOutput",
    "VideoUNet",
    "VideoUNetOutput",
    "VideoUpsampler",
    "VideoUpsamplerPipeline",
    "__version__",
]
