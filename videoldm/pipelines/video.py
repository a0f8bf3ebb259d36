"""VideoLDMPipeline: key frames and long videos (Video LDM, Sec. 3.1 and 3.2).

A video model samples a window of frames; a prediction model (a VideoUNet with context
conditioning) makes longer videos window by window, each conditioned on the last frames made so
far (:mod:`videoldm.pipelines.prediction`), decoded as they are made.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from PIL import Image

from ..defaults import DEFAULT_CONTEXT_FRAMES, DEFAULT_NUM_FRAMES, DEFAULT_WINDOW_FRAMES
from .base import (
    LatentVideoPipeline,
    SamplingOptions,
    VideoLDMPipelineOutput,
    check_output_type,
    check_sampling_options,
)
from .decoding import stream_decode
from .sampling import options_from
from .planning import RolloutWindow, plan_rollout, window_samples
from .prediction import rollout_latents, select_continuation


class VideoLDMPipeline(LatentVideoPipeline):
    """Text-, label- or unconditional video generation with a :class:`~videoldm.models.unet.VideoUNet`.

    Components as :class:`~videoldm.pipelines.base.LatentVideoPipeline`. A pipeline directory that also
    holds an interpolation model or an upsampler loads whole as a
    :class:`~videoldm.pipelines.cascade.CascadePipeline`; this class takes its key-frame components.
    """

    def _latent_shape(self, height: int | None, width: int | None) -> tuple[int, int, int]:
        spatial = self.unet.spatial_config
        height = height or spatial.sample_size * self.vae_scale_factor
        width = width or spatial.sample_size * self.vae_scale_factor
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ValueError(f"height and width must be multiples of {self.vae_scale_factor}, got {height}x{width}")
        return spatial.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor

    def _given_frames(
        self, batch: int, init_image: Any, init_video: Any, size: tuple[int, int]
    ) -> torch.Tensor | None:
        """``init_image`` ``(C, H, W)``/``(B, C, H, W)`` or a PIL image, or ``init_video`` ``(T, C, H, W)``/``(B, T, C, H, W)``
        or a list of PIL images -> ``(B, K, C, H, W)``."""
        if init_image is not None and init_video is not None:
            raise ValueError("give init_image or init_video, not both")
        init_image, init_video = self.as_pixel_frames(init_image), self.as_pixel_frames(init_video)
        given = init_image[..., None, :, :, :] if init_image is not None else init_video
        if given is None:
            return None
        name = "init_image" if init_image is not None else "init_video"
        given = torch.as_tensor(given)
        if given.ndim == 4:
            given = given[None]
        if given.ndim != 5 or given.shape[0] not in (1, batch) or tuple(given.shape[-2:]) != size:
            raise ValueError(f"{name} must be {size[0]}x{size[1]} frames in [-1, 1] for {batch} video(s), got shape "
                             f"{tuple(torch.as_tensor(init_image if init_image is not None else init_video).shape)}")
        if not torch.isfinite(given).all():
            raise ValueError(f"{name} holds NaN or inf values")
        return given.expand(batch, *given.shape[1:]).float()

    @torch.no_grad()
    def generate_frames(
        self,
        num_frames: int = DEFAULT_NUM_FRAMES,
        *,
        num_videos: int = 1,
        height: int | None = None,
        width: int | None = None,
        window_frames: int | None = None,
        context_frames: int = DEFAULT_CONTEXT_FRAMES,
        window_candidates: int = 1,
        init_image: torch.Tensor | Image.Image | None = None,
        init_video: torch.Tensor | list[Image.Image] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pt",
        sampling: SamplingOptions | None = None,
        **sampling_fields: Any,
    ) -> Iterator[torch.Tensor]:
        """Yield the video's frames as they are made: ``(B, k, C, H, W)`` pixels in [-1, 1] per piece.

        A continued ``init_video``'s frames come first, exactly as given (pixels only).
        ``output_type="latent"`` yields latents ``(B, k, c, h, w)`` of the new frames instead. Arguments as in
        :meth:`__call__`; a long video (``num_frames`` above ``window_frames``) is made window by
        window (:func:`~videoldm.pipelines.prediction.plan_rollout`) with flat memory in its length.
        """
        options = options_from(SamplingOptions, sampling, sampling_fields)
        num_inference_steps = self.inference_steps(options.num_inference_steps)
        check_sampling_options(options, num_inference_steps)
        check_output_type(output_type, ("pt", "latent"))
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if window_candidates < 1:
            raise ValueError(f"window_candidates must be >= 1, got {window_candidates}")
        batch = len(options.prompt) if isinstance(options.prompt, list) else num_videos
        channels, latent_height, latent_width = self._latent_shape(height, width)
        size = (latent_height * self.vae_scale_factor, latent_width * self.vae_scale_factor)
        device = self._execution_device
        given = self._given_frames(batch, init_image, init_video, size)
        if window_frames is None:
            window_frames = DEFAULT_WINDOW_FRAMES if self.unet.has_context_conditioning or given is not None else num_frames
        # an init image is frame 0 of the output; a continued video precedes the num_frames new ones
        num_new = num_frames - 1 if init_image is not None else num_frames
        plan = plan_rollout(num_new, window_frames, context_frames, 0 if given is None else given.shape[1])
        if latents is not None:
            expected = (batch, window_frames, channels, latent_height, latent_width)
            if len(plan) != 1 or plan[0].num_context or tuple(latents.shape) != expected:
                raise ValueError(f"latents (initial noise) must have shape {expected} and serve for a single window "
                                 f"without given frames; got {tuple(latents.shape)}")

        sampler = self.window_sampler(self.unet, batch, options, num_inference_steps)

        def sample_window(window: RolloutWindow, context: torch.Tensor | None) -> torch.Tensor:
            shape = (batch, window_frames, channels, latent_height, latent_width)
            mask = torch.arange(window_frames, device=device) < window.num_context
            context_latents = torch.zeros(shape, device=device, dtype=self.unet.dtype)
            if window.num_context:
                context_latents[:, : window.num_context] = context
            candidates = []
            for _ in range(window_samples(window, window_candidates)):
                noise = latents if latents is not None else self.initial_noise(shape, options)
                candidates.append(sampler(noise.to(device), mask, context_latents))
            if len(candidates) == 1:
                return candidates[0]
            return select_continuation(torch.stack(candidates), window.num_context)

        given_latents = None if given is None else self.encode_frames(given)
        new_latents = rollout_latents(plan, sample_window, given_latents)
        if output_type == "latent":
            if init_image is not None:
                yield given_latents
            yield from new_latents
        else:
            primer = None
            if init_video is not None:
                # The decoder's cross-fade starts in the continued video, so its first new frame has no
                # seam; those given frames are returned as they were given, not as decoded.
                primer = given_latents[:, -options.decode_chunk_size:]
                yield given.to(device)
            elif init_image is not None:
                # a temporal decoder may hold the image's frame back until its first window is full
                new_latents = _chained(given_latents, new_latents)
            yield from stream_decode(self.vae, new_latents, options.decode_chunk_size, options.decoder, primer=primer)
        self.maybe_free_model_hooks()

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *,
        output_type: str = "pil",
        return_dict: bool = True,
        **options: Any,
    ) -> VideoLDMPipelineOutput | tuple:
        """Generate ``num_videos`` videos of ``num_frames`` frames (16).

        ``options``: :meth:`generate_frames`' keywords and :class:`~videoldm.pipelines.base.SamplingOptions`' fields.
        Long videos: a prediction model makes videos longer than ``window_frames`` (default 16 for
        those models; otherwise ``num_frames``, one window) window by window, each conditioned on the
        last ``context_frames`` frames (0: independent windows). ``window_candidates`` K > 1 samples
        every window with >= 2 context frames K times and keeps, per video, the one whose first new
        latent continues the context most steadily
        (:func:`~videoldm.pipelines.prediction.select_continuation`): K times those windows' cost.
        ``init_image`` ``(C, H, W)`` or ``(B, C, H, W)`` in [-1, 1] (or a PIL image) becomes frame 0
        (encoded and decoded); ``init_video`` ``(T, C, H, W)`` or ``(B, T, C, H, W)`` in [-1, 1] (or
        a list of PIL images) is continued: the output is its frames, exactly as given, followed by
        ``num_frames`` new ones. PIL images are converted to the model's channel count (RGB -> luma
        for a grey model); their size must be the model's.

        ``latents`` (optional) is the initial unit-variance noise ``(B, T, c, h, w)`` of a single
        window (the scheduler's ``init_noise_sigma`` is applied after its timesteps are set).
        ``frames`` follows diffusers' ``output_type`` conventions. Non-finite sampled latents are a
        ``ValueError``. :meth:`generate_frames` yields the frames as they are made instead.
        """
        check_output_type(output_type)
        if prompt is not None:
            options["prompt"] = prompt
        pieces = list(self.generate_frames(**options, output_type="latent" if output_type == "latent" else "pt"))
        return self.output(torch.cat(pieces, dim=1), output_type, return_dict)


def _chained(first: torch.Tensor, rest: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    yield first
    yield from rest
