"""The shipped digits UNet still computes what it computed when its weights were trained.

``tests/data/shipped_unet_forward.safetensors`` holds fixed inputs (2 videos x 16 frames, one with
two context frames, the other S = 0; timesteps 500 and 120) and the output of the shipped UNet on
them, computed in float32 by the code from before the speed work of the temporal layers (commit
e61adba) with the weights shipped now (recomputed there when the weights changed). Any optimisation
of the forward pass must reproduce it within float tolerance.
"""

from __future__ import annotations

import torch
from pathlib import Path
from safetensors.torch import load_file

from videoldm.embedded import embedded_model_dir
from videoldm.models.unet import VideoUNet

FIXTURE = Path(__file__).parent / "data" / "shipped_unet_forward.safetensors"


def test_shipped_unet_output_is_unchanged():
    data = load_file(FIXTURE)
    unet = VideoUNet.from_pretrained(embedded_model_dir() / "unet").eval()
    inputs = dict(context_mask=data["context_mask"].bool(), context_latents=data["context_latents"])
    with torch.no_grad():
        output = unet(data["sample"], data["timestep"], data["encoder_hidden_states"], **inputs).sample
        image_only = torch.ones(data["sample"].shape[:2], dtype=torch.bool)
        image_output = unet(data["sample"], data["timestep"], data["encoder_hidden_states"],
                            image_only_indicator=image_only, **inputs).sample
    torch.testing.assert_close(output, data["output"], atol=1e-4, rtol=1e-4)
    # The temporal layers move the output far beyond that tolerance, so the check above sees them.
    assert (image_output - data["output"]).abs().max() > 0.5
