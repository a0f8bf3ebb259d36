"""The pipelines, one task each (diffusers-style), and the cascade that composes them."""

from .base import LatentVideoPipeline, SamplingOptions, VideoLDMPipelineOutput
from .cascade import CascadePipeline, CascadePipelineOutput
from .decoding import decode_latents, stream_decode
from .interpolation import VideoInterpolationPipeline
from .sampling import Guidance, denoise, guided_prediction
from .upsample import VideoUpsamplerPipeline
from .video import VideoLDMPipeline

# The pipeline classes a saved model_index.json may name as its "_class_name"; DiffusionPipeline.from_pretrained
# resolves that name inside the diffusers module (see videoldm.__init__, which registers them there).
PIPELINE_CLASSES = (VideoLDMPipeline, VideoInterpolationPipeline, VideoUpsamplerPipeline, CascadePipeline)

__all__ = ["CascadePipeline", "CascadePipelineOutput", "Guidance", "LatentVideoPipeline", "PIPELINE_CLASSES",
           "SamplingOptions", "VideoInterpolationPipeline", "VideoLDMPipeline", "VideoLDMPipelineOutput",
           "VideoUpsamplerPipeline", "decode_latents", "denoise", "guided_prediction", "stream_decode"]
