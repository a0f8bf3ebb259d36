"""The denoising objective, with the image model's own noise schedule and prediction target.

Video LDM keeps the image LDM's diffusion process: the temporal layers learn under the same
``betas`` and the same target (epsilon or v), so nothing about the spatial layers' training
distribution changes. Both are read from the image model's diffusers scheduler config.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class DiffusionObjective:
    """Denoising loss for latent videos ``(B, T, C, H, W)`` under an image model's noise schedule.

    One diffusion time per video (all frames share it), as in the paper's video fine-tuning.
    """

    def __init__(self, noise_scheduler: DDPMScheduler) -> None:
        prediction_type = noise_scheduler.config.prediction_type
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
        self.noise_scheduler = noise_scheduler
        self.prediction_type = prediction_type

    def sample_timesteps(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform training timesteps ``(B,)``."""
        steps = self.noise_scheduler.config.num_train_timesteps
        return torch.randint(0, steps, (batch,), device=device, generator=generator)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Regression target for ``latents``/``noise`` ``(B, ...)`` at ``timesteps (B,)``."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.noise_scheduler.get_velocity(latents, noise, timesteps)
        return latents

    def loss(
        self,
        model: torch.nn.Module,
        latents: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
        timesteps: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean-squared denoising loss of ``model`` on clean latents ``(B, T, C, H, W)``.

        ``timesteps (B,)`` and ``noise`` (shaped like ``latents``) are drawn from ``generator`` unless given.
        """
        if timesteps is None:
            timesteps = self.sample_timesteps(latents.shape[0], latents.device, generator)
        if noise is None:
            noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = model(noisy, timesteps, **(model_kwargs or {})).sample
        return F.mse_loss(prediction.float(), self.target(latents, noise, timesteps).float())
