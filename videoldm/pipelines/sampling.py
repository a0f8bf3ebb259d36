"""The one denoising loop every Video LDM pipeline uses.

Guidance is generic: ``conditional`` and ``unconditional`` are keyword sets for the VideoUNet;
classifier-free guidance over text/labels and the prediction model's guidance over context frames
are both ``uncond + scale * (cond - uncond)`` with different keyword sets.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

StepCallback = Callable[[int, torch.Tensor, torch.Tensor], Any]
Generator = torch.Generator | list[torch.Generator] | None


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
    the unconditional one exactly. ``unconditional=None`` means the branches are the same (or there
    is no guidance): one pass, the conditional output.
    """
    if unconditional is None or guidance_scale == 1.0:
        return unet(latents, timestep, **conditional).sample
    if guidance_scale == 0.0:
        return unet(latents, timestep, **unconditional).sample
    both = unet(torch.cat([latents, latents]), timestep, **_concat_conditions(conditional, unconditional)).sample
    cond_out, uncond_out = both.chunk(2)
    return uncond_out + guidance_scale * (cond_out - uncond_out)


def _step_kwargs(scheduler: SchedulerMixin, generator: Generator) -> dict[str, Any]:
    """The optional ``scheduler.step`` keywords it accepts: PNDM, LMS, Heun, KDPM2, UniPC, DEIS take no ``generator``."""
    accepted = inspect.signature(scheduler.step).parameters
    return {"generator": generator} if "generator" in accepted else {}


def denoise(
    unet: torch.nn.Module,
    scheduler: SchedulerMixin,
    noise: torch.Tensor,
    conditional: dict[str, Any],
    unconditional: dict[str, Any] | None = None,
    *,
    guidance_scale: float = 1.0,
    num_inference_steps: int = 25,
    generator: Generator = None,
    progress_bar: Callable[..., Any] | None = None,
    callback_on_step_end: StepCallback | None = None,
) -> torch.Tensor:
    """Run the reverse diffusion from unit-variance ``noise (B, T, C, H, W)`` with any diffusers scheduler.

    The noise is scaled by ``scheduler.init_noise_sigma`` after ``set_timesteps``, since for
    sigma-based schedulers (Euler, LMS, Heun, KDPM2, ...) that scale depends on the first timestep.
    Returns the denoised latents ``(B, T, C, H, W)``; raises ``ValueError`` if they are not finite.

    Second-order schedulers (Heun, KDPM2) and PNDM's Runge-Kutta warm-up evaluate the model more
    than once per step: ``callback_on_step_end`` runs after every ``scheduler.step``, with
    ``(index into scheduler.timesteps, timestep, latents)``, and may return replacement latents.
    ``progress_bar(total=num_inference_steps)`` (e.g. ``DiffusionPipeline.progress_bar``) advances
    in proportion to the model evaluations done, reaching ``num_inference_steps`` at the end.
    """
    scheduler.set_timesteps(num_inference_steps, device=noise.device)
    timesteps = scheduler.timesteps
    latents = noise * scheduler.init_noise_sigma
    extra = _step_kwargs(scheduler, generator)
    bar = progress_bar(total=num_inference_steps) if progress_bar is not None else None
    try:
        for step_index, timestep in enumerate(timesteps):
            model_input = scheduler.scale_model_input(latents, timestep)
            prediction = guided_prediction(unet, model_input, timestep, conditional, unconditional, guidance_scale)
            latents = scheduler.step(prediction, timestep, latents, **extra, return_dict=False)[0]
            if callback_on_step_end is not None:
                replacement = callback_on_step_end(step_index, timestep, latents)
                if replacement is not None:
                    latents = replacement
            if bar is not None:
                done = (step_index + 1) * num_inference_steps // len(timesteps)
                bar.update(done - step_index * num_inference_steps // len(timesteps))
    finally:
        if bar is not None:
            bar.close()
    if not torch.isfinite(latents).all():
        raise ValueError(
            "sampling produced non-finite latents (NaN or inf); check guidance_scale, the scheduler's "
            "settings, and the model's weights and dtype (float16 can overflow)"
        )
    return latents
