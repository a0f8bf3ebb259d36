"""torch.nn modules of Video LDM (no I/O, no training loops)."""

from .autoencoder import TemporalDecoder
from .conditioning import LabelEncoder
from .discriminator import VideoDiscriminator
from .temporal import AlphaBlender, BlendedTemporalLayer, FrameContext, TemporalAttention, TemporalConvBlock
from .unet import VideoUNet, VideoUNetOutput
from .upsampler import VideoUpsampler

__all__ = [
    "AlphaBlender",
    "BlendedTemporalLayer",
    "FrameContext",
    "LabelEncoder",
    "TemporalAttention",
    "TemporalConvBlock",
    "TemporalDecoder",
    "VideoDiscriminator",
    "VideoUNet",
    "VideoUNetOutput",
    "VideoUpsampler",
]
