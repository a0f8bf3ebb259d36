"""Sampling procedures built on diffusers schedulers."""

import diffusers

from .sampling import Guidance, denoise, guided_prediction
from .text_to_video import VideoLDMPipeline, VideoLDMPipelineOutput, decode_latents

# DiffusionPipeline.from_pretrained resolves a model_index.json's "_class_name" inside the
# diffusers module; registering our pipeline there lets saved videoldm pipelines load generically.
setattr(diffusers, "VideoLDMPipeline", VideoLDMPipeline)

__all__ = ["VideoLDMPipeline", "VideoLDMPipelineOutput", "decode_latents", "denoise", "guided_prediction", "Guidance"]
