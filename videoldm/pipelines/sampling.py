"""The one denoising loop every Video LDM pipeline uses.

Guidance is generic: ``conditional`` and ``unconditional`` are keyword sets for the VideoUNet;
classifier-free guidance over text/labels and the prediction model's guidance over context frames
are both ``uncond + scale * (cond - uncond)`` with different keyword sets.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

StepCallback = Callable[[int, torch.Tensor, torch.Tensor], Any]


def _concat_conditions(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    if first.keys() != second.keys():
        raise ValueError(f"guidance branches need the same inputs, got {sorted(first)} and {sorted(second)}")
    return {
        key: None if first[key] is None else torch.cat([first[key], second[key]])
        for key in first
    }


def guided_prediction(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    conditional: dict[str, Any],
    unconditional: dict[str, Any] | None,
    guidance_scale: float,
) -> torch.Tensor:
    """Model output for ``latents (B, T, C, H, W)`` with guidance ``u + s * (c - u)`` when ``s != 1``.

    Both branches run in one batch. Guidance scale 1 returns the conditional output exactly and 0
    the unconditional one exactly.
    """
    if unconditional is None or guidance_scale == 1.0:
        return unet(latents, timestep, **conditional).sample
    if guidance_scale == 0.0:
        return unet(latents, timestep, **unconditional).sample
    both = unet(torch.cat([latents, latents]), timestep, **_concat_conditions(conditional, unconditional)).sample
    cond_out, uncond_out = both.chunk(2)
    return uncond_out + guidance_scale * (cond_out - uncond_out)


def denoise(
    unet: torch.nn.Module,
    scheduler: SchedulerMixin,
    latents: torch.Tensor,
    conditional: dict[str, Any],
    unconditional: dict[str, Any] | None = None,
    *,
    guidance_scale: float = 1.0,
    num_inference_steps: int = 25,
    generator: torch.Generator | None = None,
    progress: Callable[[Iterable], Iterable] = lambda steps: steps,
    callback_on_step_end: StepCallback | None = None,
) -> torch.Tensor:
    """Run the reverse diffusion from pure-noise ``latents (B, T, C, H, W)`` with any diffusers scheduler.

    ``latents`` must already be scaled by ``scheduler.init_noise_sigma``. ``callback_on_step_end``
    gets ``(step_index, timestep, latents)`` and may return replacement latents.
    """
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    for step_index, timestep in enumerate(progress(scheduler.timesteps)):
        model_input = scheduler.scale_model_input(latents, timestep)
        prediction = guided_prediction(unet, model_input, timestep, conditional, unconditional, guidance_scale)
        latents = scheduler.step(prediction, timestep, latents, generator=generator, return_dict=False)[0]
        if callback_on_step_end is not None:
            replacement = callback_on_step_end(step_index, timestep, latents)
            if replacement is not None:
                latents = replacement
    return latents
