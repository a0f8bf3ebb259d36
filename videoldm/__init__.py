"""videoldm: Video Latent Diffusion Models (Blattmann et al., CVPR 2023)."""

__version__ = "0.1.0"
