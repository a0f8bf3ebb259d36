"""torch.nn modules of Video LDM (no I/O, no training loops)."""

from .conditioning import LabelEncoder
from .temporal import AlphaBlender, BlendedTemporalLayer, FrameContext, TemporalAttention, TemporalConvBlock
from .unet import VideoUNet, VideoUNetOutput

__all__ = [
    "AlphaBlender",
    "BlendedTemporalLayer",
    "FrameContext",
    "LabelEncoder",
    "TemporalAttention",
    "TemporalConvBlock",
    "VideoUNet",
    "VideoUNetOutput",
]
