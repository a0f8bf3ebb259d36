"""The one denoising loop every Video LDM pipeline uses.

Guidance is generic. ``conditional`` is the keyword set of the fully conditioned VideoUNet call;
each :class:`Guidance` names another keyword set with one condition removed and its scale:

    f = f(c) + sum_i (s_i - 1) * (f(c) - f(u_i))

With one branch this is classifier-free guidance ``f(u) + s * (f(c) - f(u))``. Label/text guidance
removes the label or prompt (context kept); the prediction model's context guidance removes the
context frames (label or prompt kept). Each branch whose scale is not 1 costs one more UNet
evaluation per step, all run in one batch: 1 (no guidance), 2 (one guidance) or 3 (both).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Sequence, TypeVar

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from ..defaults import DEFAULT_NUM_INFERENCE_STEPS

StepCallback = Callable[[int, torch.Tensor, torch.Tensor], Any]
Generator = torch.Generator | list[torch.Generator] | None
Options = TypeVar("Options")


def options_from(options_class: type[Options], options: Options | None, given: dict[str, Any], **defaults: Any) -> Options:
    """A pipeline call's options object: ``options`` with the fields ``given`` as keywords set, or for None a new
    ``options_class`` of ``defaults`` and ``given``. A ``TypeError`` names a keyword that is no field."""
    names = {option.name for option in fields(options_class)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise TypeError(f"unexpected {options_class.__name__} field(s) {unknown}; expected some of {sorted(names)}")
    return options_class(**(defaults | given)) if options is None else replace(options, **given)


@dataclass
class Guidance:
    """A guidance branch: the VideoUNet keywords with one condition removed (``inputs``), and its ``scale``.

    ``scale`` 1 is no guidance (the branch is not evaluated), 0 the branch's own output.
    """

    inputs: dict[str, Any]
    scale: float


def _concat_conditions(branches: list[dict[str, Any]]) -> dict[str, Any]:
    keys = branches[0].keys()
    if any(branch.keys() != keys for branch in branches):
        raise ValueError(f"guidance branches need the same inputs, got {[sorted(branch) for branch in branches]}")
    return {
        key: None if branches[0][key] is None else torch.cat([branch[key] for branch in branches])
        for key in keys
    }


def guided_prediction(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    conditional: dict[str, Any],
    guidance: Sequence[Guidance] = (),
) -> torch.Tensor:
    """Model output for ``latents (B, T, C, H, W)``: ``f(c) + sum_i (s_i - 1) (f(c) - f(u_i))``.

    Branches with scale 1 are skipped; the rest and the conditional call run in one batch. A single
    branch with scale 0 returns that branch's output exactly (one pass).
    """
    active = [branch for branch in guidance if branch.scale != 1.0]
    if not active:
        return unet(latents, timestep, **conditional).sample
    if len(active) == 1 and active[0].scale == 0.0:
        return unet(latents, timestep, **active[0].inputs).sample
    calls = [conditional] + [branch.inputs for branch in active]
    outputs = unet(torch.cat([latents] * len(calls)), timestep, **_concat_conditions(calls)).sample.chunk(len(calls))
    guided = outputs[0]
    for branch, output in zip(active, outputs[1:]):
        guided = guided + (branch.scale - 1.0) * (outputs[0] - output)
    return guided


def initial_noise(
    shape: tuple[int, ...], correlation: float, generator: Generator, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Unit-variance noise ``(B, T, c, h, w)`` whose frames share a fraction ``correlation`` of their variance.

    ``sqrt(1 - r) * own + sqrt(r) * shared``: the mixed noise prior of PYoCo (Ge et al., ICCV 2023). Each
    frame's noise stays standard normal, so every frame is still the image model's start; frames of one
    video start alike, which the temporal layers turn into one scene instead of reconciling unrelated
    ones. ``correlation`` 0 is exactly the independent draw (the same numbers from ``generator``).
    """
    own = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    if correlation == 0:
        return own
    shared = randn_tensor((shape[0], 1, *shape[2:]), generator=generator, device=device, dtype=dtype)
    return math.sqrt(1.0 - correlation) * own + math.sqrt(correlation) * shared


def _step_kwargs(scheduler: SchedulerMixin, generator: Generator) -> dict[str, Any]:
    """The optional ``scheduler.step`` keywords it accepts: PNDM, LMS, Heun, KDPM2, UniPC, DEIS take no ``generator``."""
    accepted = inspect.signature(scheduler.step).parameters
    return {"generator": generator} if "generator" in accepted else {}


def denoise(
    unet: torch.nn.Module,
    scheduler: SchedulerMixin,
    noise: torch.Tensor,
    conditional: dict[str, Any],
    guidance: Sequence[Guidance] = (),
    *,
    num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    generator: Generator = None,
    progress_bar: Callable[..., Any] | None = None,
    callback_on_step_end: StepCallback | None = None,
    given_latents: torch.Tensor | None = None,
    given_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the reverse diffusion from unit-variance ``noise (B, T, C, H, W)`` with any diffusers scheduler.

    The noise is scaled by ``scheduler.init_noise_sigma`` after ``set_timesteps``, since for
    sigma-based schedulers (Euler, LMS, Heun, KDPM2, ...) that scale depends on the first timestep.
    Returns the denoised latents ``(B, T, C, H, W)``; raises ``ValueError`` if they are not finite.
    ``conditional`` and ``guidance`` are as in :func:`guided_prediction`.

    Second-order schedulers (Heun, KDPM2) and PNDM's Runge-Kutta warm-up evaluate the model more
    than once per step: ``callback_on_step_end`` runs after every ``scheduler.step``, with
    ``(index into scheduler.timesteps, timestep, latents)``, and may return replacement latents.
    ``progress_bar(total=num_inference_steps)`` (e.g. ``DiffusionPipeline.progress_bar``) advances
    in proportion to the model evaluations done, reaching ``num_inference_steps`` at the end.

    ``given_latents`` ``(B, T, C, H, W)`` with ``given_mask`` ``(B, T)`` bool: the marked frames of the
    noisy input are the given latents noised to each step's level with ``noise`` (the forward
    process, ``scheduler.add_noise``), as a prediction model saw its context frames in training,
    instead of following the sampler's own trajectory; the result holds them exactly.
    """
    scheduler.set_timesteps(num_inference_steps, device=noise.device)
    timesteps = scheduler.timesteps
    latents = noise * scheduler.init_noise_sigma
    given = None if given_mask is None else given_mask[:, :, None, None, None]

    def with_given(latents: torch.Tensor, level: torch.Tensor | None) -> torch.Tensor:
        if given is None:
            return latents
        target = given_latents if level is None else scheduler.add_noise(given_latents, noise, level.reshape(1))
        return torch.where(given, target.to(latents.dtype), latents)

    latents = with_given(latents, timesteps[0])
    extra = _step_kwargs(scheduler, generator)
    bar = progress_bar(total=num_inference_steps) if progress_bar is not None else None
    try:
        for step_index, timestep in enumerate(timesteps):
            model_input = scheduler.scale_model_input(latents, timestep)
            prediction = guided_prediction(unet, model_input, timestep, conditional, guidance)
            latents = scheduler.step(prediction, timestep, latents, **extra, return_dict=False)[0]
            if callback_on_step_end is not None:
                replacement = callback_on_step_end(step_index, timestep, latents)
                if replacement is not None:
                    latents = replacement
            latents = with_given(latents, timesteps[step_index + 1] if step_index + 1 < len(timesteps) else None)
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


@dataclass
class WindowSampler:
    """Denoises the windows of one request with ``unet``: its conditioning, guidance and sampler settings.

    ``conditional_states`` / ``unconditional_states`` ``(B, L, D)`` (or None) are the label/prompt
    branches (:func:`~videoldm.pipelines.conditioning.encode_conditions`); ``extra_inputs`` go to every
    UNet call (e.g. an interpolation pass's ``frame_rate_regime``); ``denoise_options`` to :func:`denoise`.
    """

    unet: torch.nn.Module
    scheduler: SchedulerMixin
    conditional_states: torch.Tensor | None
    unconditional_states: torch.Tensor | None
    image_only: bool
    guidance_scale: float
    context_guidance_scale: float
    denoise_options: dict[str, Any]
    extra_inputs: dict[str, Any] = field(default_factory=dict)

    def __call__(
        self, noise: torch.Tensor, context_mask: torch.Tensor | None = None, context_latents: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Denoise one window from ``noise (B, W, c, h, w)``.

        The frames marked in ``context_mask`` ``(W,)`` bool (None: none) are given as
        ``context_latents`` ``(B, W, c, h, w)`` (values elsewhere ignored). The given frames' positions of
        the noisy input are those latents noised to each step's level (``denoise(given_latents=...)``);
        guidance over them is ``context_guidance_scale``. Returns the window's latents, the given
        frames exactly.
        """
        batch, num_frames = noise.shape[:2]
        device = noise.device
        inputs: dict[str, Any] = {
            "encoder_hidden_states": self.conditional_states,
            "image_only_indicator": torch.full((batch, num_frames), self.image_only, dtype=torch.bool, device=device),
            **self.extra_inputs,
        }
        guidance = []
        denoise_options = self.denoise_options
        given = context_mask is not None and bool(context_mask.any())
        if given:
            if not self.unet.has_context_conditioning:
                raise ValueError("this model has no context conditioning: it cannot continue given frames "
                                 "(train a prediction model: stage 'prediction')")
            mask = context_mask.to(device)[None].expand(batch, num_frames)
            context_latents = torch.where(mask[:, :, None, None, None], context_latents.to(noise.dtype), noise.new_zeros(()))
            inputs |= {"context_mask": mask, "context_latents": context_latents}
            no_context = inputs | {"context_mask": torch.zeros_like(mask), "context_latents": torch.zeros_like(context_latents)}
            guidance.append(Guidance(no_context, self.context_guidance_scale))
            # the given frames enter the noisy input too, noised to each step's level as in training
            denoise_options = denoise_options | {"given_latents": context_latents, "given_mask": mask}
        if self.unconditional_states is not None:
            guidance.append(Guidance(inputs | {"encoder_hidden_states": self.unconditional_states}, self.guidance_scale))
        return denoise(self.unet, self.scheduler, noise, inputs, guidance, **denoise_options)
