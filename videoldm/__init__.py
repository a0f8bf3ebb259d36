"""videoldm: Video Latent Diffusion Models (Blattmann et al., CVPR 2023)."""

__version__ = "0.1.0"

from .models import (  # noqa: E402
    AlphaBlender,
    LabelEncoder,
    TemporalAttention,
    TemporalConvBlock,
    TemporalDecoder,
    VideoDiscriminator,
    VideoUNet,
    VideoUNetOutput,
)
from .models.upsampler import VideoUpsampler  # noqa: E402
from .pipelines import CascadePipeline, VideoLDMPipeline, VideoLDMPipelineOutput, VideoUpsamplerPipeline  # noqa: E402

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
