"""High frame rates: the interpolation model and its passes (Video LDM, Sec. 3.3).

One pass multiplies the frame rate by ``factor`` (4 in the paper): ``K`` key latents become
``factor * (K - 1) + 1``, key ``k`` at position ``factor * k``, and the model fills the
``factor - 1`` frames between each pair, conditioned on the key frames through the same context
path as the prediction model (:func:`~videoldm.models.context.key_frame_mask`). Any ``K`` works:
windows of ``window_keys`` key frames run along the video, and consecutive windows share one gap
between key frames: a later window is given both keys of its first gap *and* the frames the
previous window made in it, so the motion runs on across window boundaries instead of restarting
at each one. Two passes (frame-rate regimes ``r`` and ``r + 1`` of one model) make x16.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import torch
from PIL import Image

from ..defaults import (
    DEFAULT_INTERPOLATION_CONTEXT_GUIDANCE,
    DEFAULT_WINDOW_KEY_FRAMES,
    INTERPOLATION_FACTOR,
    PASSES_PER_FACTOR,
)
from ..models.context import key_frame_mask
from .base import (
    LatentVideoPipeline,
    SamplingOptions,
    VideoLDMPipelineOutput,
    check_output_type,
    check_sampling_options,
)
from .planning import plan_interpolation
from .sampling import options_from

SampleInterpolationWindow = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def interpolate_latents(
    key_latents: torch.Tensor, window_keys: int, sample_window: SampleInterpolationWindow, factor: int = INTERPOLATION_FACTOR
) -> torch.Tensor:
    """One pass: key latents ``(B, K, c, h, w)`` -> ``(B, factor * (K - 1) + 1, c, h, w)``, key ``k`` at ``factor * k``.

    ``sample_window(latents (B, W, c, h, w), mask (W,) bool)`` samples a window whose frames marked in
    ``mask`` are given (the others in ``latents`` are placeholders) and returns its latents with
    the given frames put back exactly.
    """
    batch, num_keys = key_latents.shape[:2]
    video = key_latents.new_zeros(batch, factor * (num_keys - 1) + 1, *key_latents.shape[2:])
    video[:, ::factor] = key_latents
    for window in plan_interpolation(num_keys, window_keys):
        start, length = factor * window.first_key, factor * (window.num_keys - 1) + 1
        mask = key_frame_mask(length, factor, key_latents.device)
        if window.continues:
            mask[: factor + 1] = True
        video[:, start : start + length] = sample_window(video[:, start : start + length], mask)
    return video


class VideoInterpolationPipeline(LatentVideoPipeline):
    """Raise a video's frame rate x4 or x16 with the interpolation model (its ``unet``: a VideoUNet with
    context conditioning and frame-rate regimes).

    Components as :class:`~videoldm.pipelines.base.LatentVideoPipeline`. A saved Video LDM directory
    stores the interpolation model as temporal weights (component ``interpolator``) on the key-frame
    model's spatial UNet; :meth:`~videoldm.pipelines.cascade.CascadePipeline.interpolation_pipeline`
    makes this pipeline from it, sharing every tensor.
    """

    @torch.no_grad()
    def __call__(
        self,
        video: torch.Tensor | list[Image.Image] | None = None,
        factor: int = 4,
        *,
        latents: torch.Tensor | None = None,
        frame_rate_regime: int = 0,
        window_key_frames: int = DEFAULT_WINDOW_KEY_FRAMES,
        output_type: str = "pil",
        return_dict: bool = True,
        sampling: SamplingOptions | None = None,
        **sampling_fields: Any,
    ) -> VideoLDMPipelineOutput | tuple:
        """Raise the frame rate of ``video`` ``(K, C, H, W)`` or ``(B, K, C, H, W)`` in [-1, 1] (or a list of PIL images), ``K >= 2``, by ``factor``.

        Returns ``factor * (K - 1) + 1`` frames per video; frame ``factor * k`` is input frame ``k``
        after encoding and decoding. ``factor`` 4 is one pass of the interpolation model in
        ``frame_rate_regime`` (0: from the key-frame rate), 16 two passes (regimes ``r``, ``r + 1``).
        Windows of ``window_key_frames`` key frames share one gap, so any ``K`` works
        (:func:`interpolate_latents`). ``latents`` ``(B, K, c, h, w)`` (e.g. a key-frame model's, with
        ``output_type="latent"``) replace ``video`` and skip its encoding; frames must have the model's
        channel count and sizes divisible by :attr:`vae_scale_factor`.
        ``sampling`` / ``sampling_fields``: :class:`~videoldm.pipelines.base.SamplingOptions`, whose
        ``context_guidance_scale`` guides over the key frames (default 2 here:
        ``DEFAULT_INTERPOLATION_CONTEXT_GUIDANCE``) and ``guidance_scale`` over ``labels`` / ``prompt``
        (default: none, the null label or empty prompt). ``image_only=True`` switches the temporal
        layers off (and with them the key-frame context): the in-between frames are then the image
        model's, a baseline.
        """
        options = options_from(SamplingOptions, sampling, sampling_fields,
                                        context_guidance_scale=DEFAULT_INTERPOLATION_CONTEXT_GUIDANCE)
        num_inference_steps = self.inference_steps(options.num_inference_steps)
        check_sampling_options(options, num_inference_steps)
        if factor not in PASSES_PER_FACTOR:
            raise ValueError(f"factor must be one of {sorted(PASSES_PER_FACTOR)}, got {factor}")
        check_output_type(output_type)
        unet = self.unet
        passes, regimes = PASSES_PER_FACTOR[factor], unet.config.frame_rate_regimes
        if not 0 <= frame_rate_regime or frame_rate_regime + passes > regimes:
            raise ValueError(f"factor {factor} needs {passes} frame-rate regime(s) from frame_rate_regime "
                             f"{frame_rate_regime}; the interpolation model has regimes 0..{regimes - 1}")
        if (video is None) == (latents is None):
            raise ValueError("give the key frames as video (pixels) or as latents, one of them")
        name, given = ("video", video) if latents is None else ("latents", latents)
        given = torch.as_tensor(self.as_pixel_frames(given))
        given = given[None] if given.ndim == 4 else given
        scale = self.vae_scale_factor if latents is None else 1
        if given.ndim != 5 or given.shape[1] < 2 or given.shape[-1] % scale or given.shape[-2] % scale:
            raise ValueError(f"{name} must be (B, K, C, H, W) with K >= 2 frames and H, W multiples of {scale}, "
                             f"got shape {tuple(given.shape)}")
        if not torch.isfinite(given).all():
            raise ValueError(f"{name} holds NaN or inf values")
        batch, device = given.shape[0], self._execution_device
        latents = self.encode_frames(given.float()) if latents is None else given.to(device, unet.dtype)
        sampler = self.window_sampler(unet, batch, options, num_inference_steps)
        for regime in range(frame_rate_regime, frame_rate_regime + passes):
            regime_sampler = replace(sampler, extra_inputs={"frame_rate_regime": torch.full((batch,), regime, device=device)})

            def sample_window(window_latents: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                noise = self.initial_noise(tuple(window_latents.shape), options)
                return regime_sampler(noise, mask, window_latents)

            latents = interpolate_latents(latents, window_key_frames, sample_window)
        frames = latents if output_type == "latent" else torch.cat(
            list(self.decode_frames(latents, options.decode_chunk_size, options.decoder)), dim=1)
        self.maybe_free_model_hooks()
        return self.output(frames, output_type, return_dict)
