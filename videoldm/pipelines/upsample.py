"""Video upsampling (Sec. 3.4): a :class:`~videoldm.models.upsampler.VideoUpsampler` sampled over a whole video.

The upsampler is trained on patches of short clips and applied convolutionally: a long or large
video is denoised in overlapping pieces, frame windows of ``window_frames`` (overlap
``window_overlap``) times, optionally, spatial tiles of ``tile_size`` (overlap ``tile_overlap``),
all sharing one noise tensor. At every denoising step each piece's prediction is computed and the
pieces are blended with weights that ramp linearly across their overlaps (MultiDiffusion-style),
so the result has no seams. The UNet's activations, most of the memory, are bounded by the piece;
by default (``tile_size="auto"``) frames are cut into tiles only when a whole-frame piece would
take more than ``DEFAULT_MAX_PIECE_BYTES`` (:func:`auto_tile_size`).

The sampler's own state (the sample, its noise, the scheduler's history, the output) grows with
the frames it denoises together. A video whose state would pass ``DEFAULT_MAX_STATE_BYTES`` is
upsampled in *segments* (``segment_frames="auto"``, :func:`resolve_segment_frames`), one sampler
run each, yielded as they are made: each segment after the first starts with the last
``window_overlap`` frames of the one before, given as a prediction model's context frames are
(the noisy input holds them noised to each step's level, ``denoise(given_latents=...)``), so its
temporal layers continue that detail and the shared frames come out exactly as already yielded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from ..defaults import (
    DEFAULT_MAX_NOISE_LEVEL,
    DEFAULT_NOISE_LEVEL,
    DEFAULT_UPSAMPLER_STEPS,
    DEFAULT_UPSAMPLER_WINDOW_FRAMES,
    DEFAULT_UPSAMPLER_WINDOW_OVERLAP,
)
from ..models.autoencoder import TemporalDecoder, vae_scale_factor
from ..models.unet import VideoUNetOutput
from ..models.upsampler import VideoUpsampler, noise_augment, resize_frames
from .conditioning import encode_prompts, per_video
from .decoding import stream_decode
from .planning import (
    SegmentFrames,
    TileSize,
    guidance_branches,
    plan_pieces,
    plan_segments,
    resolve_segment_frames,
    resolve_tile_size,
)
from .sampling import Generator, Guidance, StepCallback, denoise, options_from


def blend_ramp(piece: slice, length: int, overlap: int) -> torch.Tensor:
    """Blending weights ``(piece length,)`` of one piece: 1 inside, ramping linearly over ``overlap``
    at each edge that is not the video's own edge (strictly positive everywhere)."""
    size = piece.stop - piece.start
    weights = torch.ones(size)
    ramp = torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)
    if overlap and piece.start > 0:
        weights[:overlap] = torch.minimum(weights[:overlap], ramp)
    if overlap and piece.stop < length:
        weights[size - overlap:] = torch.minimum(weights[size - overlap:], ramp.flip(0))
    return weights


@dataclass
class WindowedUpsampler:
    """Runs ``upsampler`` on overlapping frame windows and spatial tiles of a video and blends their predictions.

    A drop-in model for :func:`~videoldm.pipelines.sampling.denoise`: called like the upsampler with
    ``low_res_video`` already at the sample's size, it returns a :class:`VideoUNetOutput` of the whole
    sample ``(B, T, C, H, W)``.
    """

    upsampler: VideoUpsampler
    window_frames: int | None = DEFAULT_UPSAMPLER_WINDOW_FRAMES
    window_overlap: int = DEFAULT_UPSAMPLER_WINDOW_OVERLAP
    tile_size: int | None = None
    tile_overlap: int = 8

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, **inputs: Any) -> VideoUNetOutput:
        num_frames, height, width = sample.shape[1], sample.shape[-2], sample.shape[-1]
        windows = plan_pieces(num_frames, self.window_frames, self.window_overlap)
        rows = plan_pieces(height, self.tile_size, self.tile_overlap)
        columns = plan_pieces(width, self.tile_size, self.tile_overlap)
        if len(windows) * len(rows) * len(columns) == 1:
            return self.upsampler(sample, timestep, **inputs)
        total = torch.zeros_like(sample)
        weight_sum = sample.new_zeros((1, num_frames, 1, height, width))
        for window in windows:
            frame_weights = blend_ramp(window, num_frames, self.window_overlap).to(sample)
            for row in rows:
                row_weights = blend_ramp(row, height, self.tile_overlap).to(sample)
                for column in columns:
                    weights = (frame_weights[:, None, None] * row_weights[None, :, None]
                               * blend_ramp(column, width, self.tile_overlap).to(sample)[None, None, :])
                    piece = {key: _piece(value, window, row, column) for key, value in inputs.items()}
                    prediction = self.upsampler(sample[:, window, :, row, column], timestep, **piece).sample
                    total[:, window, :, row, column] += prediction * weights[None, :, None]
                    weight_sum[:, window, :, row, column] += weights[None, :, None]
        return VideoUNetOutput(sample=total / weight_sum)


def _piece(value: Any, window: slice, row: slice, column: slice) -> Any:
    """The part of one upsampler input that a piece sees: video tensors are cut, per-video ones kept."""
    if isinstance(value, torch.Tensor) and value.ndim == 5:
        return value[:, window, :, row, column]
    if isinstance(value, torch.Tensor) and value.ndim == 2 and value.dtype == torch.bool:  # image_only_indicator (B, T)
        return value[:, window]
    return value


@dataclass(frozen=True)
class UpsamplingOptions:
    """How the video upsampler samples: ``noise_level`` of the low-resolution frames' augmentation (the level
    the upsampler is told), ``num_inference_steps``, ``guidance_scale`` over a prompt, ``image_only`` (the
    temporal layers off: the per-frame image upsampler), frame windows of ``window_frames`` overlapping by
    ``window_overlap``, tiles of ``tile_size`` sample cells (``"auto"``: :func:`~videoldm.pipelines.planning.auto_tile_size`
    of a window; None: whole frames) overlapping by ``tile_overlap``, sampler runs of ``segment_frames``
    (``"auto"``: one run unless the whole video's state would pass ``DEFAULT_MAX_STATE_BYTES``; an int;
    None: one run), the ``generator`` and ``callback_on_step_end`` as in :func:`~videoldm.pipelines.sampling.denoise`."""

    noise_level: int = DEFAULT_NOISE_LEVEL
    num_inference_steps: int = DEFAULT_UPSAMPLER_STEPS
    guidance_scale: float = 1.0
    image_only: bool = False
    window_frames: int | None = DEFAULT_UPSAMPLER_WINDOW_FRAMES
    window_overlap: int = DEFAULT_UPSAMPLER_WINDOW_OVERLAP
    tile_size: TileSize = "auto"
    tile_overlap: int = 8
    segment_frames: SegmentFrames = "auto"
    generator: Generator = None
    callback_on_step_end: StepCallback | None = None


def upsample_video_segments(
    upsampler: VideoUpsampler,
    scheduler: SchedulerMixin,
    low_res_scheduler: DDPMScheduler,
    low_res_video: torch.Tensor,
    *,
    sample_size: tuple[int, int],
    options: UpsamplingOptions,
    encoder_hidden_states: torch.Tensor | None = None,
    negative_encoder_hidden_states: torch.Tensor | None = None,
    progress_bar: Callable[..., Any] | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the high-resolution video ``(B, k, C, *sample_size)`` (pixels, or latents of a latent upsampler)
    of ``low_res_video`` ``(B, T, c, h, w)`` in [-1, 1], one segment's new frames at a time (an upsampler
    of bicubic residuals adds them to the bicubic upsampling of ``low_res_video``,
    :meth:`~videoldm.models.upsampler.VideoUpsampler.video_from_sample`).

    Each segment of ``options.segment_frames`` (resolved: an int or None for the whole video;
    :func:`~videoldm.pipelines.planning.resolve_segment_frames`) is one sampler run: its low-resolution
    frames are noise-augmented to ``options.noise_level`` (one noise draw from the generator), resized
    to ``sample_size`` once, and every denoising step runs the upsampler piecewise
    (:class:`WindowedUpsampler`); the frames it shares with the segment before are given (the module
    docstring). ``encoder_hidden_states`` (and ``negative_...`` with ``options.guidance_scale``)
    condition a text-conditional upsampler.
    """
    noise_level, generator, window_frames, window_overlap = (options.noise_level, options.generator,
                                                             options.window_frames, options.window_overlap)
    if not 0 <= noise_level <= upsampler.config.max_noise_level:
        raise ValueError(f"noise_level must be in 0..{upsampler.config.max_noise_level}, got {noise_level}")
    batch, num_frames = low_res_video.shape[:2]
    branches = guidance_branches(negative_encoder_hidden_states is not None, options.guidance_scale)
    segments = plan_segments(num_frames, options.segment_frames, window_overlap)
    tile_size = resolve_tile_size(options.tile_size, upsampler.config.unet_config["block_out_channels"][0],
                                  batch * branches, segments[0].stop - segments[0].start, window_frames, sample_size)
    device, dtype = low_res_video.device, upsampler.dtype
    levels = torch.full((batch,), noise_level, dtype=torch.long, device=device)
    model = WindowedUpsampler(upsampler, window_frames, window_overlap, tile_size, options.tile_overlap)
    previous: tuple[slice, torch.Tensor] | None = None  # the last segment and its sample
    for segment in segments:
        low_res = low_res_video[:, segment].to(dtype)
        frames = segment.stop - segment.start
        noise = randn_tensor(low_res.shape, generator=generator, device=device, dtype=dtype)
        augmented = noise_augment(low_res_scheduler, low_res, levels, noise)
        inputs: dict[str, Any] = {
            "encoder_hidden_states": encoder_hidden_states,
            "low_res_video": resize_frames(augmented, sample_size),
            "noise_level": levels,
            "image_only_indicator": torch.full((batch, frames), options.image_only, dtype=torch.bool, device=device),
        }
        guidance = []
        if negative_encoder_hidden_states is not None:
            guidance.append(Guidance(inputs | {"encoder_hidden_states": negative_encoder_hidden_states},
                                     options.guidance_scale))
        start = randn_tensor((batch, frames, upsampler.sample_channels, *sample_size), generator=generator,
                             device=device, dtype=dtype)
        shared = 0 if previous is None else previous[0].stop - segment.start
        given = {}
        if shared:
            given_sample = torch.zeros_like(start)
            given_sample[:, :shared] = previous[1][:, -shared:]
            given = {"given_latents": given_sample,
                     "given_mask": (torch.arange(frames, device=device) < shared)[None].expand(batch, frames)}
        sample = denoise(model, scheduler, start, inputs, guidance, num_inference_steps=options.num_inference_steps,
                         generator=generator, progress_bar=progress_bar,
                         callback_on_step_end=options.callback_on_step_end, **given)
        yield upsampler.video_from_sample(sample[:, shared:], low_res[:, shared:])
        previous = (segment, sample)


def latent_decoder_scale(vae: torch.nn.Module | None) -> int:
    """Pixels per sample cell of an upsampler's output: 1 in pixel space, the autoencoder's downsampling otherwise."""
    return 1 if vae is None else vae_scale_factor(vae)


class VideoUpsamplerPipeline(DiffusionPipeline):
    """The video upsampler as a pipeline of its own: ``upsampler``, ``scheduler``, ``low_res_scheduler`` and,
    for a latent upsampler (Stable Diffusion's x4 upscaler inflated with
    :meth:`~videoldm.models.upsampler.VideoUpsampler.from_image_unet`), ``vae`` plus an optional
    ``text_encoder`` / ``tokenizer``. A pixel-space upsampler has no ``vae``.
    """

    _optional_components = ["vae", "text_encoder", "tokenizer"]

    def __init__(
        self,
        upsampler: VideoUpsampler,
        scheduler: SchedulerMixin,
        low_res_scheduler: DDPMScheduler,
        vae: AutoencoderKL | TemporalDecoder | None = None,
        text_encoder: torch.nn.Module | None = None,
        tokenizer: Any | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(upsampler=upsampler, scheduler=scheduler, low_res_scheduler=low_res_scheduler, vae=vae,
                              text_encoder=text_encoder, tokenizer=tokenizer)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> "VideoUpsamplerPipeline":
        """:meth:`DiffusionPipeline.from_pretrained`, refusing a Video LDM pipeline directory that holds an
        upsampler: loaded by name, its ``scheduler`` and ``vae`` would be the key-frame model's."""
        index = Path(pretrained_model_name_or_path) / "model_index.json"
        if index.is_file() and "upsampler_scheduler" in json.loads(index.read_text()):
            raise ValueError(f"{pretrained_model_name_or_path} is a Video LDM pipeline with an upsampler: load its "
                             "upsampler with CascadePipeline.from_pretrained(path).upsampler_pipeline()")
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_image_pipeline(cls, image_pipe: DiffusionPipeline, **temporal_options: Any) -> "VideoUpsamplerPipeline":
        """Inflate a Stable-Diffusion-x4-upscaler-style pipeline (``unet`` taking ``[latents, low-res pixels]``,
        ``vae``, ``low_res_scheduler``, ``scheduler``, text encoder, its ``max_noise_level``).

        The UNet becomes a :class:`VideoUpsampler` with ``temporal_options`` (exact at init: its
        temporal layers start as the identity); every other component is shared.
        """
        vae = image_pipe.vae
        upsampler = VideoUpsampler.from_image_unet(
            image_pipe.unet, low_res_channels=image_pipe.unet.config.in_channels - vae.config.latent_channels,
            max_noise_level=int(image_pipe.config.get("max_noise_level", DEFAULT_MAX_NOISE_LEVEL)),
            scale_factor=latent_decoder_scale(vae), **temporal_options)
        return cls(upsampler=upsampler, scheduler=image_pipe.scheduler, low_res_scheduler=image_pipe.low_res_scheduler,
                   vae=vae, text_encoder=getattr(image_pipe, "text_encoder", None),
                   tokenizer=getattr(image_pipe, "tokenizer", None))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Pixel size of the upsampled frames for low-resolution frames of ``height`` x ``width``."""
        factor = self.upsampler.config.scale_factor
        return height * factor, width * factor

    def segment_frames(self, num_videos: int, num_frames: int, low_res_size: tuple[int, int],
                       segment_frames: SegmentFrames = "auto",
                       window_frames: int | None = DEFAULT_UPSAMPLER_WINDOW_FRAMES,
                       window_overlap: int = DEFAULT_UPSAMPLER_WINDOW_OVERLAP) -> int | None:
        """Frames per sampler run (None: one run) for ``num_videos`` videos of ``num_frames`` frames of
        ``low_res_size`` (height, width): :func:`resolve_segment_frames` at this upsampler's sizes."""
        output_size = self.output_size(*low_res_size)
        cell = latent_decoder_scale(self.vae)
        return resolve_segment_frames(segment_frames, num_videos, num_frames, self.upsampler.sample_channels,
                                      (output_size[0] // cell, output_size[1] // cell), output_size, window_frames,
                                      window_overlap)

    def plan_segments(self, num_videos: int, num_frames: int, low_res_size: tuple[int, int],
                      segment_frames: SegmentFrames = "auto",
                      window_frames: int | None = DEFAULT_UPSAMPLER_WINDOW_FRAMES,
                      window_overlap: int = DEFAULT_UPSAMPLER_WINDOW_OVERLAP) -> list[slice]:
        """The sampler runs (frame slices) of :meth:`segment_frames` (:func:`plan_segments`)."""
        frames = self.segment_frames(num_videos, num_frames, low_res_size, segment_frames, window_frames, window_overlap)
        return plan_segments(num_frames, frames, window_overlap)

    @torch.no_grad()
    def upsample_frames(
        self,
        video: torch.Tensor,
        *,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        decode_chunk_size: int = 8,
        output_type: str = "pt",
        options: UpsamplingOptions | None = None,
        **option_fields: Any,
    ) -> Iterator[torch.Tensor]:
        """Upsample ``video`` ``(B, T, C, h, w)`` in [-1, 1] by the upsampler's ``scale_factor``, yielding the
        frames ``(B, k, C, s*h, s*w)`` as each segment is made (pixels in [-1, 1], or for a latent
        upsampler its latents with ``output_type="latent"``).

        ``options`` / ``option_fields``: :class:`UpsamplingOptions` (its fields as keywords); segments bound
        the sampler's memory, tiles and windows the UNet's. ``prompt`` (and ``negative_prompt``, with
        ``guidance_scale``) for an upsampler with a text encoder.
        """
        options = options_from(UpsamplingOptions, options, option_fields)
        if output_type not in ("pt", "latent"):
            raise ValueError(f"output_type must be 'pt' or 'latent', got {output_type!r}")
        video = torch.as_tensor(video)
        channels = self.upsampler.config.low_res_channels
        if video.ndim != 5 or video.shape[2] != channels:
            raise ValueError(f"video must be (B, T, {channels}, h, w) in [-1, 1], got shape {tuple(video.shape)}")
        if not torch.isfinite(video).all():
            raise ValueError("video holds NaN or inf values")
        height, width = self.output_size(*video.shape[-2:])
        cell = latent_decoder_scale(self.vae)
        if height % cell or width % cell:
            raise ValueError(f"upsampled frames of {height}x{width} are not multiples of the autoencoder's {cell}")
        options = replace(options, segment_frames=self.segment_frames(
            video.shape[0], video.shape[1], tuple(video.shape[-2:]), options.segment_frames, options.window_frames,
            options.window_overlap))
        states = negative = None
        if prompt is not None or self.text_encoder is not None:
            if self.text_encoder is None:
                raise ValueError("this upsampler has no text encoder; it takes no prompt")
            batch = video.shape[0]
            prompts, negatives = per_video(prompt, batch), per_video(negative_prompt, batch)
            device = self._execution_device
            states = encode_prompts(self.text_encoder, self.tokenizer, prompts, device)
            negative = (None if options.guidance_scale == 1.0
                        else encode_prompts(self.text_encoder, self.tokenizer, negatives, device))
        pieces = upsample_video_segments(
            self.upsampler, self.scheduler, self.low_res_scheduler, video.to(self._execution_device).float(),
            sample_size=(height // cell, width // cell), options=options, encoder_hidden_states=states,
            negative_encoder_hidden_states=negative, progress_bar=self.progress_bar,
        )
        if self.vae is None:
            for piece in pieces:
                yield piece.clamp(-1, 1)
        elif output_type == "latent":
            yield from pieces
        else:
            yield from stream_decode(self.vae, pieces, decode_chunk_size)
        self.maybe_free_model_hooks()

    @torch.no_grad()
    def __call__(self, video: torch.Tensor, **options: Any) -> torch.Tensor:
        """The whole upsampled video ``(B, T, C, s*h, s*w)`` of :meth:`upsample_frames` (same arguments)."""
        return torch.cat(list(self.upsample_frames(video, **options)), dim=1)
