"""The denoising objective, with the image model's own noise schedule and prediction target.

Video LDM keeps the image LDM's diffusion process: the temporal layers learn under the same
``betas`` and the same target (epsilon or v), so nothing about the spatial layers' training
distribution changes. Both are read from the image model's diffusers scheduler config.
Which diffusion times a training step draws is the one choice left to a recipe
(:class:`TimestepSampling`): uniform, as the image model trained, or logit-normal (SD3's
``logit_normal`` density), which can put more of the draws at high noise, where an epsilon loss
barely weighs the frames' agreement on a video's layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from .draws import randint_per_sample, randn_per_sample

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")


@dataclass(frozen=True)
class TimestepSampling:
    """The distribution of training diffusion times ``t`` in ``[0, N)``, ``N = num_train_timesteps``.

    ``uniform``: every ``t`` equally often. ``logit_normal``: ``t = floor(N * sigmoid(mean + std * z))``,
    ``z ~ N(0, 1)``; ``mean > 0`` draws high noise levels more often (``mean`` 1.5, ``std`` 1: a quarter of the
    draws at ``t >= 0.9 N``, against a tenth uniformly). The noise schedule itself is the image model's either way.
    """

    kind: str = "uniform"
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in TIMESTEP_SAMPLINGS:
            raise ValueError(f"kind must be one of {TIMESTEP_SAMPLINGS}, got {self.kind!r}")
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"mean must be finite and std positive, got mean={self.mean}, std={self.std}")

    def timesteps(self, standard_normal: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
        """Logit-normal times ``(B,)`` int64 from standard normal draws ``(B,)``."""
        fraction = torch.sigmoid(self.mean + self.std * standard_normal.double())
        return (fraction * num_train_timesteps).long().clamp_(0, num_train_timesteps - 1)

    def per_sample(self, draw_seeds: torch.Tensor, num_train_timesteps: int, device: torch.device) -> torch.Tensor:
        """Times ``(B,)``, each sample's from its own draw (:mod:`~videoldm.training.draws`)."""
        if self.kind == "uniform":
            return randint_per_sample(draw_seeds, "timestep", num_train_timesteps, device)
        return self.timesteps(randn_per_sample(draw_seeds, "timestep", (), device), num_train_timesteps)

    def sample(self, batch: int, num_train_timesteps: int, device: torch.device,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Times ``(B,)`` from one generator."""
        if self.kind == "uniform":
            return torch.randint(0, num_train_timesteps, (batch,), device=device, generator=generator)
        return self.timesteps(torch.randn((batch,), generator=generator), num_train_timesteps).to(device)


class DiffusionObjective:
    """Denoising loss for latent videos ``(B, T, C, H, W)`` under an image model's noise schedule.

    One diffusion time per video (all frames share it), as in the paper's video fine-tuning, drawn
    from ``timestep_sampling`` (uniform by default).
    """

    def __init__(self, noise_scheduler: DDPMScheduler, timestep_sampling: TimestepSampling = TimestepSampling()) -> None:
        prediction_type = noise_scheduler.config.prediction_type
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
        self.noise_scheduler = noise_scheduler
        self.prediction_type = prediction_type
        self.timestep_sampling = timestep_sampling
        self.num_train_timesteps = noise_scheduler.config.num_train_timesteps

    def sample_timesteps(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training timesteps ``(B,)`` from ``generator``."""
        return self.timestep_sampling.sample(batch, self.num_train_timesteps, device, generator)

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
