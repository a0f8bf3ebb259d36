"""Tiny random diffusers models shared by the tests."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

CROSS_ATTENTION_DIM = 16

# The test models are tiny: one thread is fastest, and immune to oversubscription on shared cores.
torch.set_num_threads(1)


def tiny_image_unet(cross_attention: bool = True, seed: int = 0, in_channels: int = 4) -> UNet2DConditionModel:
    """A random 2-level UNet with (or without) cross-attention blocks; latents ``(4, 8, 8)``."""
    torch.manual_seed(seed)
    if cross_attention:
        down, up = ("CrossAttnDownBlock2D", "DownBlock2D"), ("UpBlock2D", "CrossAttnUpBlock2D")
        mid = "UNetMidBlock2DCrossAttn"
    else:
        down, up, mid = ("DownBlock2D", "AttnDownBlock2D"), ("AttnUpBlock2D", "UpBlock2D"), "UNetMidBlock2D"
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=down,
        up_block_types=up,
        mid_block_type=mid,
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    return unet.eval()


def tiny_vae(seed: int = 0, channels: int = 3) -> AutoencoderKL:
    """A random AutoencoderKL with 2x downsampling: pixels ``(channels, 16, 16)`` <-> latents ``(4, 8, 8)``."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=16,
    ).eval()


def tiny_scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    """A DDIM scheduler with the SD-style scaled-linear schedule."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=prediction_type,
        clip_sample=False,
    )


def randomize_temporal(video_unet: torch.nn.Module, seed: int = 1, alpha_logit: float = -0.3) -> None:
    """Give every temporal layer random nonzero weights and blend logits (as after training)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in video_unet.temporal.named_parameters():
            if name.endswith("mix_logit"):
                parameter.fill_(alpha_logit)
            else:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


@pytest.fixture(params=[True, False], ids=["cross-attention", "no-cross-attention"])
def image_unet(request) -> UNet2DConditionModel:
    return tiny_image_unet(cross_attention=request.param)
