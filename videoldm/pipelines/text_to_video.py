"""VideoLDMPipeline: sample (key-frame) videos from an inflated image LDM."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from einops import rearrange
from PIL import Image

from ..data.io import frames_from_images
from ..models.autoencoder import TemporalDecoder, encode_video
from ..models.conditioning import LabelEncoder
from ..models.unet import TemporalWeights, VideoUNet
from ..models.upsampler import VideoUpsampler
from .directory import DEFAULT_NUM_INFERENCE_STEPS
from .interpolation import (
    DEFAULT_INTERPOLATION_CONTEXT_GUIDANCE,
    DEFAULT_WINDOW_KEY_FRAMES,
    PASSES_PER_FACTOR,
    interpolate_latents,
)
from .prediction import (
    RolloutWindow,
    StreamingDecoder,
    decoder_overlap,
    plan_rollout,
    rollout_latents,
    select_continuation,
    window_samples,
)
from .sampling import Guidance, denoise
from .upsample import (
    DEFAULT_NOISE_LEVEL,
    DEFAULT_UPSAMPLER_STEPS,
    DEFAULT_UPSAMPLER_WINDOW_FRAMES,
    SegmentFrames,
    TileSize,
    VideoUpsamplerPipeline,
)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
DEFAULT_WINDOW_FRAMES = 16  # the clip length the shipped models' temporal layers were trained on


@dataclass
class VideoLDMPipelineOutput(BaseOutput):
    """``frames``: PIL lists per video, ``np`` ``(B, T, H, W, C)`` / ``pt`` ``(B, T, C, H, W)`` in [0, 1], or latents."""

    frames: Any


def decode_latents(vae: torch.nn.Module, latents: torch.Tensor, chunk_size: int = 8, decoder: str = "video") -> torch.Tensor:
    """Decode scaled latents ``(B, T, c, h, w)`` to pixels ``(B, T, C, H, W)`` in [-1, 1], ``chunk_size`` frames at a time.

    A :class:`~videoldm.models.autoencoder.TemporalDecoder` decodes with its temporal layers
    (``decoder="video"``) or as the image decoder (``decoder="image"``); a plain ``AutoencoderKL``
    always decodes frame by frame, unscaling with ``z / scaling_factor + shift_factor`` and, like
    diffusers' Stable Diffusion pipelines, in float32 when it is float16 with ``force_upcast``
    (its weights are float16 again afterwards; pixels come back in the VAE's dtype).
    """
    if decoder not in ("video", "image"):
        raise ValueError(f"decoder must be 'video' or 'image', got {decoder!r}")
    if isinstance(vae, AutoencoderKL):
        return _decode_image_vae(vae, latents, chunk_size)
    return vae.decode(latents, chunk_size=chunk_size, overlap=decoder_overlap(chunk_size),
                      temporal=decoder == "video").clamp(-1, 1)


def _decode_image_vae(vae: AutoencoderKL, latents: torch.Tensor, chunk_size: int) -> torch.Tensor:
    dtype = vae.dtype
    # float16 AutoencoderKL decoders can overflow to NaN; force_upcast marks those diffusers upcasts.
    upcast = dtype == torch.float16 and vae.config.force_upcast
    decode_dtype = torch.float32 if upcast else dtype
    frames = rearrange(latents.to(decode_dtype), "b t c h w -> (b t) c h w")
    frames = frames / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
    if upcast:
        # nn.Module.to: ModelMixin.to logs a float32-modules warning on every dtype cast.
        torch.nn.Module.to(vae, decode_dtype)
    try:
        decoded = torch.cat([vae.decode(chunk).sample for chunk in frames.split(chunk_size)])
    finally:
        if upcast:
            torch.nn.Module.to(vae, dtype)
    return rearrange(decoded.to(dtype), "(b t) c h w -> b t c h w", b=latents.shape[0]).clamp(-1, 1)


def encode_prompts(text_encoder: torch.nn.Module, tokenizer: Any, prompts: list[str], device: torch.device | str) -> torch.Tensor:
    """Prompts -> the text encoder's last hidden states ``(B, L, D)``, padded to the tokenizer's maximum length
    (as Stable Diffusion's pipelines do, so training and sampling see the same sequence)."""
    tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    return text_encoder(tokens.input_ids.to(device))[0]


def _check_sampling_options(guidance_scale: float, context_guidance_scale: float, decoder: str, num_inference_steps: int) -> None:
    """Raise ValueError for a non-finite guidance scale, an unknown decoder or fewer than one step."""
    for name, value in (("guidance_scale", guidance_scale), ("context_guidance_scale", context_guidance_scale)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
    if decoder not in ("video", "image"):
        raise ValueError(f"decoder must be 'video' or 'image', got {decoder!r}")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")


class VideoLDMPipeline(DiffusionPipeline):
    """Text-, label- or unconditional video generation with a :class:`VideoUNet`.

    Components: ``unet`` (VideoUNet), ``vae`` (AutoencoderKL or TemporalDecoder), ``scheduler`` (any
    diffusers scheduler), and optionally ``text_encoder`` + ``tokenizer`` (prompts) or
    ``label_encoder`` (class labels), ``interpolator`` (:class:`TemporalWeights`: the
    interpolation model's temporal layers and context encoder, run on ``unet``'s spatial UNet by
    :meth:`interpolate`), and the video upsampler of :meth:`upsample`: ``upsampler``
    (:class:`VideoUpsampler`, pixel space), ``upsampler_scheduler`` (its sampler) and
    ``low_res_scheduler`` (its noise augmentation).
    """

    model_cpu_offload_seq = "text_encoder->label_encoder->unet->vae->upsampler"
    _optional_components = ["text_encoder", "tokenizer", "label_encoder", "interpolator", "upsampler",
                            "upsampler_scheduler", "low_res_scheduler"]

    def __init__(
        self,
        unet: VideoUNet,
        vae: torch.nn.Module,
        scheduler: SchedulerMixin,
        text_encoder: torch.nn.Module | None = None,
        tokenizer: Any | None = None,
        label_encoder: LabelEncoder | None = None,
        interpolator: TemporalWeights | None = None,
        upsampler: VideoUpsampler | None = None,
        upsampler_scheduler: SchedulerMixin | None = None,
        low_res_scheduler: DDPMScheduler | None = None,
        default_num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    ) -> None:
        super().__init__()
        if default_num_inference_steps < 1:
            raise ValueError(f"default_num_inference_steps must be >= 1, got {default_num_inference_steps}")
        self.register_modules(
            unet=unet,
            vae=vae,
            scheduler=scheduler,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            label_encoder=label_encoder,
            interpolator=interpolator,
            upsampler=upsampler,
            upsampler_scheduler=upsampler_scheduler,
            low_res_scheduler=low_res_scheduler,
        )
        # Saved in model_index.json, so a directory carries the step count its makers measured as enough.
        self.register_to_config(default_num_inference_steps=default_num_inference_steps)
        self.video_processor = VideoProcessor(do_resize=False, vae_scale_factor=self.vae_scale_factor)

    def inference_steps(self, num_inference_steps: int | None) -> int:
        """``num_inference_steps``, or the pipeline's own ``default_num_inference_steps`` for None."""
        return self.config.default_num_inference_steps if num_inference_steps is None else num_inference_steps

    @property
    def vae_scale_factor(self) -> int:
        """Pixel size of one latent cell."""
        image_vae = self.vae.vae if isinstance(self.vae, TemporalDecoder) else self.vae
        return 2 ** (len(image_vae.config.block_out_channels) - 1)

    # ------------------------------------------------------------------------- conditioning
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> text-encoder hidden states ``(B, L, D)``."""
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("this pipeline has no text encoder; pass class labels or nothing instead of a prompt")
        return encode_prompts(self.text_encoder, self.tokenizer, prompts, self._execution_device)

    def encode_conditions(
        self,
        batch: int,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None,
        labels: torch.Tensor | list | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Return (conditional, unconditional) ``encoder_hidden_states`` ``(B, L, D)`` (or ``None``).

        The unconditional states are ``None`` when both guidance branches would be the same (no
        labels, all-null labels, or each prompt equal to its negative prompt), so sampling runs one
        UNet pass per step instead of two. Conditioning the model cannot use is a ``ValueError``.
        """
        if prompt is not None and labels is not None:
            raise ValueError("give a prompt or labels, not both")
        kind = "text-conditional" if self.text_encoder is not None else (
            "label-conditional" if self.label_encoder is not None else "unconditional")
        if self.text_encoder is None and (prompt is not None or negative_prompt is not None):
            if prompt is None:
                advice = "it takes no negative prompt"
            else:
                advice = "pass labels instead of a prompt" if self.label_encoder is not None else "it takes no prompt"
            raise ValueError(f"this pipeline is {kind}: it has no text encoder; {advice}")
        if self.label_encoder is None and labels is not None:
            advice = "pass a prompt instead of labels" if self.text_encoder is not None else "it takes no labels"
            raise ValueError(f"this pipeline is {kind}: it has no label encoder; {advice}")
        if self.text_encoder is not None and labels is None:
            prompts = [prompt or ""] * batch if not isinstance(prompt, list) else prompt
            negatives = [negative_prompt or ""] * batch if not isinstance(negative_prompt, list) else negative_prompt
            if len(prompts) != batch or len(negatives) != batch:
                raise ValueError(f"expected {batch} prompts, got {len(prompts)} and {len(negatives)} negative")
            conditional = self.encode_prompt(prompts)
            return conditional, None if negatives == prompts else self.encode_prompt(negatives)
        if self.label_encoder is not None:
            device = self._execution_device
            null = self.label_encoder.null_labels(batch, device)
            if labels is None:
                labels = null
            labels = torch.as_tensor(labels, device=device).long()
            labels = labels.reshape(batch, -1) if labels.numel() == batch or labels.ndim == 2 else labels
            if labels.shape[0] != batch:
                raise ValueError(f"expected labels for {batch} videos, got shape {tuple(labels.shape)}")
            conditional = self.label_encoder(labels)
            # -1 is the null label: all-null labels are the unconditional branch itself.
            return conditional, None if bool((labels < 0).all()) else self.label_encoder(null)
        return None, None

    # ------------------------------------------------------------------------- sampling
    def _latent_shape(self, height: int | None, width: int | None) -> tuple[int, int, int]:
        spatial = self.unet.spatial_config
        height = height or spatial.sample_size * self.vae_scale_factor
        width = width or spatial.sample_size * self.vae_scale_factor
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ValueError(f"height and width must be multiples of {self.vae_scale_factor}, got {height}x{width}")
        return spatial.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Pixels ``(B, T, C, H, W)`` in [-1, 1] -> scaled latents ``(B, T, c, h, w)`` (posterior mode)."""
        image_vae = self.vae.vae if isinstance(self.vae, TemporalDecoder) else self.vae
        channels = image_vae.config.in_channels
        if frames.ndim != 5 or frames.shape[2] != channels:
            raise ValueError(f"frames must be (B, T, {channels}, H, W) for this model, got shape {tuple(frames.shape)}")
        return encode_video(self.vae, frames.to(self._execution_device), sample=False)

    def _as_pixel_frames(self, frames: Any) -> Any:
        """PIL image(s) -> pixel tensors in [-1, 1] with the model's channel count (:func:`frames_from_images`); tensors pass."""
        is_image = isinstance(frames, Image.Image)
        if is_image or (isinstance(frames, (list, tuple)) and frames and all(isinstance(f, Image.Image) for f in frames)):
            image_vae = self.vae.vae if isinstance(self.vae, TemporalDecoder) else self.vae
            return frames_from_images(frames if is_image else list(frames), image_vae.config.in_channels)
        return frames

    def _given_frames(
        self, batch: int, init_image: Any, init_video: Any, size: tuple[int, int]
    ) -> torch.Tensor | None:
        """``init_image`` ``(C, H, W)``/``(B, C, H, W)`` or a PIL image, or ``init_video`` ``(T, C, H, W)``/``(B, T, C, H, W)``
        or a list of PIL images -> ``(B, K, C, H, W)``."""
        if init_image is not None and init_video is not None:
            raise ValueError("give init_image or init_video, not both")
        init_image, init_video = self._as_pixel_frames(init_image), self._as_pixel_frames(init_video)
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

    def _sample_window(
        self,
        unet: VideoUNet,
        noise: torch.Tensor,
        conditional_states: torch.Tensor | None,
        unconditional_states: torch.Tensor | None,
        *,
        context_mask: torch.Tensor | None,
        context_latents: torch.Tensor | None,
        extra_inputs: dict[str, Any],
        image_only: bool,
        guidance_scale: float,
        context_guidance_scale: float,
        denoise_options: dict[str, Any],
    ) -> torch.Tensor:
        """Denoise one window from ``noise (B, W, c, h, w)`` with ``unet``.

        The frames marked in ``context_mask`` ``(W,)`` bool (None: none) are given as
        ``context_latents`` ``(B, W, c, h, w)`` (values elsewhere ignored); ``extra_inputs`` go to
        every UNet call. The given frames' positions of the noisy input are those latents noised to
        each step's level (``denoise(given_latents=...)``). Returns the window's latents, the given
        frames exactly.
        """
        batch, num_frames = noise.shape[:2]
        device = noise.device
        inputs: dict[str, Any] = {
            "encoder_hidden_states": conditional_states,
            "image_only_indicator": torch.full((batch, num_frames), image_only, dtype=torch.bool, device=device),
            **extra_inputs,
        }
        guidance = []
        given = context_mask is not None and bool(context_mask.any())
        if given:
            if not unet.has_context_conditioning:
                raise ValueError("this model has no context conditioning: it cannot continue given frames "
                                 "(train a prediction model: stage 'prediction')")
            mask = context_mask.to(device)[None].expand(batch, num_frames)
            context_latents = torch.where(mask[:, :, None, None, None], context_latents.to(noise.dtype), noise.new_zeros(()))
            inputs |= {"context_mask": mask, "context_latents": context_latents}
            no_context = inputs | {"context_mask": torch.zeros_like(mask), "context_latents": torch.zeros_like(context_latents)}
            guidance.append(Guidance(no_context, context_guidance_scale))
        if unconditional_states is not None:
            guidance.append(Guidance(inputs | {"encoder_hidden_states": unconditional_states}, guidance_scale))
        if given:
            # the given frames enter the noisy input too, noised to each step's level as in training
            denoise_options = denoise_options | {"given_latents": context_latents, "given_mask": mask}
        return denoise(unet, self.scheduler, noise, inputs, guidance, **denoise_options)

    @torch.no_grad()
    def generate_frames(
        self,
        prompt: str | list[str] | None = None,
        *,
        labels: torch.Tensor | list | None = None,
        negative_prompt: str | list[str] | None = None,
        num_videos: int = 1,
        num_frames: int = 16,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        context_guidance_scale: float = 1.0,
        window_frames: int | None = None,
        context_frames: int = 2,
        window_candidates: int = 1,
        init_image: torch.Tensor | Image.Image | None = None,
        init_video: torch.Tensor | list[Image.Image] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        image_only: bool = False,
        decode_chunk_size: int = 8,
        decoder: str = "video",
        output_type: str = "pt",
        callback_on_step_end: Callable[[int, torch.Tensor, torch.Tensor], Any] | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield the video's frames as they are made: ``(B, k, C, H, W)`` pixels in [-1, 1] per piece.

        A continued ``init_video``'s frames come first, exactly as given (pixels only).
        ``output_type="latent"`` yields latents ``(B, k, c, h, w)`` of the new frames instead. Arguments as in
        :meth:`__call__`; a long video (``num_frames`` above ``window_frames``) is made window by
        window (:func:`~videoldm.pipelines.prediction.plan_rollout`) with flat memory in its length.
        """
        num_inference_steps = self.inference_steps(num_inference_steps)
        _check_sampling_options(guidance_scale, context_guidance_scale, decoder, num_inference_steps)
        if output_type not in ("pt", "latent"):
            raise ValueError(f"generate_frames yields 'pt' pixels or 'latent' latents, got output_type {output_type!r}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if window_candidates < 1:
            raise ValueError(f"window_candidates must be >= 1, got {window_candidates}")
        batch = len(prompt) if isinstance(prompt, list) else num_videos
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

        conditional_states, unconditional_states = self.encode_conditions(batch, prompt, negative_prompt, labels)
        denoise_options = dict(num_inference_steps=num_inference_steps, generator=generator,
                               progress_bar=self.progress_bar, callback_on_step_end=callback_on_step_end)

        def sample_window(window: RolloutWindow, context: torch.Tensor | None) -> torch.Tensor:
            shape = (batch, window_frames, channels, latent_height, latent_width)
            mask = torch.arange(window_frames, device=device) < window.num_context
            context_latents = torch.zeros(shape, device=device, dtype=self.unet.dtype)
            if window.num_context:
                context_latents[:, : window.num_context] = context
            candidates = []
            for _ in range(window_samples(window, window_candidates)):
                noise = latents if latents is not None else randn_tensor(shape, generator=generator, device=device,
                                                                          dtype=self.unet.dtype)
                candidates.append(self._sample_window(
                    self.unet, noise.to(device), conditional_states, unconditional_states, context_mask=mask,
                    context_latents=context_latents, extra_inputs={}, image_only=image_only,
                    guidance_scale=guidance_scale, context_guidance_scale=context_guidance_scale,
                    denoise_options=denoise_options))
            if len(candidates) == 1:
                return candidates[0]
            return select_continuation(torch.stack(candidates), window.num_context)

        given_latents = None if given is None else self.encode_frames(given)
        stream = StreamingDecoder(self.vae, lambda z: decode_latents(self.vae, z, decode_chunk_size, decoder),
                                  decode_chunk_size, decoder)
        if init_video is not None:
            # The decoder's cross-fade starts in the continued video, so its first new frame has no
            # seam; those given frames are returned as they were given, not as decoded.
            stream.push(given_latents[:, -decode_chunk_size:])
            if output_type != "latent":
                yield given.to(device)
        elif init_image is not None:
            # a temporal decoder may hold the image's frame back until its first window is full
            pixels = given_latents if output_type == "latent" else stream.push(given_latents)
            if pixels is not None:
                yield pixels
        for new in rollout_latents(plan, sample_window, given_latents):
            pixels = new if output_type == "latent" else stream.push(new)
            if pixels is not None:
                yield pixels
        rest = None if output_type == "latent" else stream.flush()
        if rest is not None:
            yield rest
        self.maybe_free_model_hooks()

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *,
        labels: torch.Tensor | list | None = None,
        negative_prompt: str | list[str] | None = None,
        num_videos: int = 1,
        num_frames: int = 16,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        context_guidance_scale: float = 1.0,
        window_frames: int | None = None,
        context_frames: int = 2,
        window_candidates: int = 1,
        init_image: torch.Tensor | Image.Image | None = None,
        init_video: torch.Tensor | list[Image.Image] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        image_only: bool = False,
        decode_chunk_size: int = 8,
        decoder: str = "video",
        output_type: str = "pil",
        callback_on_step_end: Callable[[int, torch.Tensor, torch.Tensor], Any] | None = None,
        return_dict: bool = True,
    ) -> VideoLDMPipelineOutput | tuple:
        """Generate ``num_videos`` videos of ``num_frames`` frames.

        Long videos: a prediction model (a VideoUNet with context conditioning) makes videos longer
        than ``window_frames`` (default 16 for those models; otherwise ``num_frames``, one window)
        window by window, each conditioned on the last ``context_frames`` frames (0: independent
        windows). ``context_guidance_scale`` ``s`` guides over the context,
        ``f(no context) + s * (f(context) - f(no context))``; combined with label/text guidance a
        step costs up to three UNet evaluations (see :mod:`videoldm.pipelines.sampling`).
        ``window_candidates`` K > 1 samples every window with >= 2 context frames K times and keeps, per
        video, the one whose first new latent continues the context most steadily
        (:func:`~videoldm.pipelines.prediction.select_continuation`): K times those windows' cost.
        ``init_image`` ``(C, H, W)`` or ``(B, C, H, W)`` in [-1, 1] (or a PIL image) becomes frame 0
        (encoded and decoded); ``init_video`` ``(T, C, H, W)`` or ``(B, T, C, H, W)`` in [-1, 1] (or
        a list of PIL images) is continued: the output is its frames, exactly as given, followed by
        ``num_frames`` new ones. PIL images are converted to the model's channel count (RGB -> luma
        for a grey model); their size must be the model's.

        ``image_only=True`` forces every alpha to 1: the image LDM sampled frame by frame, the
        paper's baseline. ``latents`` (optional) is the initial unit-variance noise ``(B, T, c, h, w)``
        of a single window (the scheduler's ``init_noise_sigma`` is applied after its timesteps are
        set). ``num_inference_steps`` None is the pipeline's ``default_num_inference_steps`` (25 unless
        its directory says otherwise; the embedded model's 10 measure equal to 25). ``frames``
        follows diffusers' ``output_type`` conventions. ``callback_on_step_end`` runs after every
        scheduler step (``len(scheduler.timesteps)`` times: more than
        ``num_inference_steps`` for Heun, KDPM2 and PNDM). Non-finite sampled latents are a
        ``ValueError``. :meth:`generate_frames` yields the frames as they are made instead.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        pieces = list(self.generate_frames(
            prompt, labels=labels, negative_prompt=negative_prompt, num_videos=num_videos, num_frames=num_frames,
            height=height, width=width, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            context_guidance_scale=context_guidance_scale, window_frames=window_frames, context_frames=context_frames,
            window_candidates=window_candidates, init_image=init_image, init_video=init_video, generator=generator,
            latents=latents, image_only=image_only, decode_chunk_size=decode_chunk_size, decoder=decoder,
            output_type="latent" if output_type == "latent" else "pt", callback_on_step_end=callback_on_step_end,
        ))
        return self._output(torch.cat(pieces, dim=1), output_type, return_dict)

    def _output(self, frames: torch.Tensor, output_type: str, return_dict: bool) -> VideoLDMPipelineOutput | tuple:
        """Pixels ``(B, T, C, H, W)`` in [-1, 1] (or latents for ``"latent"``) in diffusers' ``output_type`` form."""
        if output_type != "latent":
            frames = self.video_processor.postprocess_video(rearrange(frames, "b t c h w -> b c t h w"), output_type)
        return VideoLDMPipelineOutput(frames=frames) if return_dict else (frames,)

    def interpolation_unet(self) -> VideoUNet:
        """The interpolation model: ``unet``'s spatial UNet with the ``interpolator``'s temporal weights (shared tensors)."""
        if self.interpolator is None:
            raise ValueError("this pipeline has no interpolation model (component 'interpolator'); "
                             "train one with the 'interpolation' stage (configs/digits_interpolation.yaml)")
        return self.unet.with_temporal_weights(self.interpolator)

    @torch.no_grad()
    def interpolate(
        self,
        video: torch.Tensor | list[Image.Image] | None = None,
        factor: int = 4,
        *,
        latents: torch.Tensor | None = None,
        prompt: str | list[str] | None = None,
        labels: torch.Tensor | list | None = None,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        context_guidance_scale: float = DEFAULT_INTERPOLATION_CONTEXT_GUIDANCE,
        frame_rate_regime: int = 0,
        window_key_frames: int = DEFAULT_WINDOW_KEY_FRAMES,
        generator: torch.Generator | list[torch.Generator] | None = None,
        image_only: bool = False,
        decode_chunk_size: int = 8,
        decoder: str = "video",
        output_type: str = "pil",
        callback_on_step_end: Callable[[int, torch.Tensor, torch.Tensor], Any] | None = None,
        return_dict: bool = True,
    ) -> VideoLDMPipelineOutput | tuple:
        """Raise the frame rate of ``video`` ``(K, C, H, W)`` or ``(B, K, C, H, W)`` in [-1, 1] (or a list of PIL images), ``K >= 2``, by ``factor``.

        Returns ``factor * (K - 1) + 1`` frames per video; frame ``factor * k`` is input frame ``k``
        after encoding and decoding. ``factor`` 4 is one pass of the interpolation model in
        ``frame_rate_regime`` (0: from the key-frame rate), 16 two passes (regimes ``r``, ``r + 1``).
        Windows of ``window_key_frames`` key frames share one gap, so any ``K`` works
        (:mod:`videoldm.pipelines.interpolation`). ``context_guidance_scale`` guides over the key
        frames (default 2: measured better than 1 and 4, ``benchmarks/interpolation.py``),
        ``guidance_scale`` over ``labels`` / ``prompt`` (default: none, the null label or empty prompt); frames must have the model's channel count and sizes divisible by
        :attr:`vae_scale_factor`. ``latents`` ``(B, K, c, h, w)`` (e.g. a key-frame model's, with
        ``output_type="latent"``) replace ``video`` and skip its encoding. ``image_only=True`` switches the temporal layers off (and with them
        the key-frame context): the in-between frames are then the image model's, a baseline.
        Other arguments as in :meth:`__call__`.
        """
        num_inference_steps = self.inference_steps(num_inference_steps)
        _check_sampling_options(guidance_scale, context_guidance_scale, decoder, num_inference_steps)
        if factor not in PASSES_PER_FACTOR:
            raise ValueError(f"factor must be one of {sorted(PASSES_PER_FACTOR)}, got {factor}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        unet = self.interpolation_unet()
        passes, regimes = PASSES_PER_FACTOR[factor], unet.config.frame_rate_regimes
        if not 0 <= frame_rate_regime or frame_rate_regime + passes > regimes:
            raise ValueError(f"factor {factor} needs {passes} frame-rate regime(s) from frame_rate_regime "
                             f"{frame_rate_regime}; the interpolation model has regimes 0..{regimes - 1}")
        if (video is None) == (latents is None):
            raise ValueError("give the key frames as video (pixels) or as latents, one of them")
        name, given = ("video", video) if latents is None else ("latents", latents)
        given = torch.as_tensor(self._as_pixel_frames(given))
        given = given[None] if given.ndim == 4 else given
        scale = self.vae_scale_factor if latents is None else 1
        if given.ndim != 5 or given.shape[1] < 2 or given.shape[-1] % scale or given.shape[-2] % scale:
            raise ValueError(f"{name} must be (B, K, C, H, W) with K >= 2 frames and H, W multiples of {scale}, "
                             f"got shape {tuple(given.shape)}")
        if not torch.isfinite(given).all():
            raise ValueError(f"{name} holds NaN or inf values")
        batch, device = given.shape[0], self._execution_device
        latents = self.encode_frames(given.float()) if latents is None else given.to(device, self.unet.dtype)
        conditional_states, unconditional_states = self.encode_conditions(batch, prompt, negative_prompt, labels)
        denoise_options = dict(num_inference_steps=num_inference_steps, generator=generator,
                               progress_bar=self.progress_bar, callback_on_step_end=callback_on_step_end)
        for regime in range(frame_rate_regime, frame_rate_regime + passes):
            extra_inputs = {"frame_rate_regime": torch.full((batch,), regime, device=device)}

            def sample_window(window_latents: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                noise = randn_tensor(window_latents.shape, generator=generator, device=device, dtype=unet.dtype)
                return self._sample_window(unet, noise, conditional_states, unconditional_states, context_mask=mask,
                                           context_latents=window_latents, extra_inputs=extra_inputs, image_only=image_only,
                                           guidance_scale=guidance_scale, context_guidance_scale=context_guidance_scale,
                                           denoise_options=denoise_options)

            latents = interpolate_latents(latents, window_key_frames, sample_window)
        frames = latents if output_type == "latent" else torch.cat(list(self.decode_frames(latents, decode_chunk_size, decoder)), dim=1)
        self.maybe_free_model_hooks()
        return self._output(frames, output_type, return_dict)

    def upsampler_pipeline(self) -> VideoUpsamplerPipeline:
        """The video upsampler of this pipeline as a :class:`VideoUpsamplerPipeline` (same modules, same progress-bar settings)."""
        if self.upsampler is None or self.upsampler_scheduler is None or self.low_res_scheduler is None:
            raise ValueError("this pipeline has no video upsampler (components 'upsampler', 'upsampler_scheduler', "
                             "'low_res_scheduler'); train one with the 'upsampler' stage (configs/digits_upsampler.yaml)")
        pipe = VideoUpsamplerPipeline(upsampler=self.upsampler, scheduler=self.upsampler_scheduler,
                                      low_res_scheduler=self.low_res_scheduler)
        pipe.set_progress_bar_config(**getattr(self, "_progress_bar_config", {}))
        return pipe

    @torch.no_grad()
    def upsample(
        self,
        video: torch.Tensor | list[Image.Image],
        *,
        noise_level: int = DEFAULT_NOISE_LEVEL,
        num_inference_steps: int = DEFAULT_UPSAMPLER_STEPS,
        image_only: bool = False,
        window_frames: int | None = DEFAULT_UPSAMPLER_WINDOW_FRAMES,
        tile_size: TileSize = "auto",
        segment_frames: SegmentFrames = "auto",
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        callback_on_step_end: Callable[[int, torch.Tensor, torch.Tensor], Any] | None = None,
        return_dict: bool = True,
    ) -> VideoLDMPipelineOutput | tuple:
        """Upsample ``video`` ``(T, C, h, w)`` or ``(B, T, C, h, w)`` in [-1, 1] (or a list of PIL images) with the video upsampler.

        Same frame count, ``scale_factor`` (4) times the size. The low-resolution frames are
        noise-augmented to ``noise_level`` (0..``max_noise_level``), the level the upsampler is told;
        ``image_only=True`` switches its temporal layers off (the per-frame upsampler, a baseline).
        Long videos run in overlapping windows of ``window_frames``; ``tile_size`` (pixels of the
        output) also cuts frames into overlapping tiles, bounding memory; ``"auto"`` cuts them only
        where a whole frame would take more than 2 GB, None never (:mod:`videoldm.pipelines.upsample`).
        ``segment_frames`` bounds the sampler's state: ``"auto"`` runs the video in segments only past
        ``DEFAULT_MAX_STATE_BYTES``, an int in segments of that many frames, None in one run.
        ``output_type`` as in :meth:`__call__` but ``"latent"``.
        """
        if output_type not in OUTPUT_TYPES or output_type == "latent":
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES[:-1]}, got {output_type!r}")
        upsampler = self.upsampler_pipeline()
        video = torch.as_tensor(self._as_pixel_frames(video))
        video = video[None] if video.ndim == 4 else video
        frames = upsampler(video, noise_level=noise_level, num_inference_steps=num_inference_steps, image_only=image_only,
                           window_frames=window_frames, tile_size=tile_size, segment_frames=segment_frames,
                           generator=generator, callback_on_step_end=callback_on_step_end)
        return self._output(frames, output_type, return_dict)

    def decode_frames(self, latents: torch.Tensor, chunk_size: int = 8, decoder: str = "video") -> Iterator[torch.Tensor]:
        """Decode latents ``(B, T, c, h, w)`` piece by piece: yields pixels ``(B, k, C, H, W)`` in [-1, 1], memory bounded in ``T``.

        The pieces together equal :func:`decode_latents` of the whole video (the temporal decoder's
        overlapping windows run across pieces, :class:`~videoldm.pipelines.prediction.StreamingDecoder`).
        """
        stream = StreamingDecoder(self.vae, lambda z: decode_latents(self.vae, z, chunk_size, decoder), chunk_size, decoder)
        for piece in latents.split(chunk_size, dim=1):
            pixels = stream.push(piece.to(self._execution_device))
            if pixels is not None:
                yield pixels
        rest = stream.flush()
        if rest is not None:
            yield rest
