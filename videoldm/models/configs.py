"""What a model's config says about its sizes, read without building the model (torch-free).

The command line checks requests against a pipeline directory's configs before torch is imported,
and the models read their own configs the same way: one definition of each size rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# where an inflated model's config nests its image model's: TemporalDecoder; VideoUNet, VideoUpsampler, TemporalWeights
_NESTED_IMAGE_CONFIG = ("autoencoder_config", "unet_config")


def image_model_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The image model's config inside an inflated model's config (``autoencoder_config`` / ``unet_config``),
    or ``config`` itself for an image model."""
    for key in _NESTED_IMAGE_CONFIG:
        if key in config:
            return config[key]
    return config


def downsampling_factor(config: Mapping[str, Any]) -> int:
    """Input pixels (or cells) per cell of the deepest level of a diffusers autoencoder or UNet (``2 ** (levels - 1)``),
    from its config or an inflated model's: for an autoencoder, the pixel size of one latent cell."""
    return 2 ** (len(image_model_config(config)["block_out_channels"]) - 1)


def frame_size_multiple(vae_config: Mapping[str, Any], unet_config: Mapping[str, Any] | None = None) -> int:
    """What a frame's height and width must be multiples of: the autoencoder's pixels per latent cell times
    the UNet's cells per cell of its deepest level."""
    return downsampling_factor(vae_config) * (downsampling_factor(unet_config) if unet_config else 1)
