"""Sampling procedures built on diffusers schedulers."""

import diffusers

from .cascade import CascadePipeline, CascadePipelineOutput
from .sampling import Guidance, denoise, guided_prediction
from .text_to_video import VideoLDMPipeline, VideoLDMPipelineOutput, decode_latents
from .upsample import VideoUpsamplerPipeline

# DiffusionPipeline.from_pretrained resolves a model_index.json's "_class_name" inside the
# diffusers module; registering our pipeline there lets saved videoldm pipelines load generically.
for _pipeline in (VideoLDMPipeline, CascadePipeline, VideoUpsamplerPipeline):
    setattr(diffusers, _pipeline.__name__, _pipeline)

__all__ = ["CascadePipeline", "CascadePipelineOutput", "VideoLDMPipeline", "VideoLDMPipelineOutput",
           "VideoUpsamplerPipeline", "decode_latents", "denoise", "guided_prediction", "Guidance"]
