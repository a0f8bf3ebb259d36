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
from .pipelines import VideoLDMPipeline, VideoLDMPipelineOutput  # noqa: E402

__all__ = [
    "AlphaBlender",
    "LabelEncoder",
    "TemporalAttention",
    "TemporalConvBlock",
    "TemporalDecoder",
    "VideoDiscriminator",
    "VideoLDMPipeline",
    "VideoLDMPipelineOutput",
    "VideoUNet",
    "VideoUNetOutput",
    "__version__",
]
