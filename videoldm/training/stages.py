"""The training recipes, one stage each, all run by :class:`videoldm.training.trainer.Trainer`.

Stages of the embedded model, in order (each reads the previous stage's ``final`` directory):
``autoencoder`` (image AutoencoderKL) -> ``image_ldm`` (label-conditional image UNet) -> ``video``
(inflate, freeze spatial, train temporal layers on clips) -> ``decoder`` (inflate the autoencoder's
decoder, train its temporal layers against a video discriminator; exported into the video
pipeline as its ``vae``).

Every stage reads its data from the recipe's ``data:`` section (:mod:`videoldm.data.build`): the
moving digits by default, or users' videos, images or cached latents. The ``video`` stage also
fine-tunes an existing video pipeline (``model:``, e.g. ``configs/video_finetune.yaml``), with
text (captions) or label conditioning, whichever the pipeline has.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from torch.utils.data import Dataset

from ..config import RecipeError, check_arguments, options_section
from ..defaults import DEFAULT_MAX_NOISE_LEVEL, DEFAULT_NUM_INFERENCE_STEPS
from ..data.build import DataError, build_source
from ..data.latents import CachedLatents
from ..data.moving_digits import MovingDigitsConfig, MovingDigitsVideos
from ..embedded import embedded_model_dir
from ..models.autoencoder import TemporalDecoder, encode_video, image_vae_of, scale_latents
from ..models.conditioning import LabelEncoder
from ..models.configs import frame_size_multiple
from ..models.discriminator import VideoDiscriminator
from ..models.lora import TemporalLoraOptions, add_temporal_lora, merge_temporal_lora, save_temporal_lora
from ..models.context import key_frame_mask
from ..models.unet import VideoUNet, VideoUNetOutput
from ..models.upsampler import VideoUpsampler, downsample_frames, noise_augment
from ..pipelines.components import load_components
from ..pipelines.cascade import CascadePipeline
from ..pipelines.conditioning import encode_prompts
from ..pipelines.decoding import decode_latents
from ..pipelines.directory import UPSAMPLER_COMPONENTS, frame_format, inspect_pipeline_directory
from ..pipelines.upsample import VideoUpsamplerPipeline, latent_decoder_scale
from ..pipelines.video import VideoLDMPipeline
from .decoder_losses import DecoderFinetuneObjective
from .draws import DRAW_SEED, rand_per_sample, randint_per_sample, randn_per_sample, sample_generators
from .objective import DiffusionObjective, TimestepSampling
from .perceptual import PerceptualLoss
from .trainer import Trainer, TrainSettings, parameters_of
from .validation import ValidationSettings, check_stage_validates, video_names


# A recipe's ``model: embedded`` is the moving-digits pipeline shipped in the package.
EMBEDDED_MODEL = "embedded"
# where a LoRA run exports its adapters alone, inside the exported pipeline directory
LORA_DIRECTORY = "temporal_lora"


def _require_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {path} does not exist: train the previous stage first")
    return path


def drop_labels(labels: torch.Tensor, probability: float, draw_seeds: torch.Tensor) -> torch.Tensor:
    """Replace all labels of a sample by -1 (null) with ``probability``: ``(B, K)`` -> ``(B, K)``.

    Each sample's coin comes from its ``draw_seeds (B,)`` entry.
    """
    keep = rand_per_sample(draw_seeds, "label_dropout", labels.device) >= probability
    return torch.where(keep[:, None], labels, torch.full_like(labels, -1))


def posterior_sample(distribution: Any, draw_seeds: torch.Tensor) -> torch.Tensor:
    """A sample of a diagonal Gaussian posterior over ``(B*T, c, h, w)`` (``T`` frames per draw), noise per draw."""
    mean, std = distribution.mean, distribution.std
    per_draw = (mean.shape[0] // len(draw_seeds), *mean.shape[1:])
    noise = randn_per_sample(draw_seeds, "posterior", per_draw, mean.device, mean.dtype).flatten(0, 1)
    return mean + std * noise


def denoising_loss(
    objective: DiffusionObjective, model: torch.nn.Module, latents: torch.Tensor, model_kwargs: dict[str, Any],
    draw_seeds: torch.Tensor,
) -> torch.Tensor:
    """The objective's loss on latents ``(B, T, C, H, W)`` with each sample's diffusion time and noise from its draw."""
    timesteps = objective.timestep_sampling.per_sample(draw_seeds, objective.num_train_timesteps, latents.device)
    noise = randn_per_sample(draw_seeds, "noise", latents.shape[1:], latents.device, latents.dtype)
    return objective.loss(model, latents, model_kwargs, timesteps=timesteps, noise=noise)


def sample_training_latents(vae: AutoencoderKL | TemporalDecoder, pixels: torch.Tensor, draw_seeds: torch.Tensor) -> torch.Tensor:
    """Frames ``(B*T, C, H, W)`` of ``B`` draws -> posterior-sampled scaled latents ``(B*T, c, h, w)``.

    The frozen image encoder (a :class:`TemporalDecoder`'s encoder is its image autoencoder's);
    latents are ``(z - shift_factor) * scaling_factor``; the posterior noise comes from each draw.
    """
    image_vae = image_vae_of(vae)
    with torch.no_grad():
        posterior = image_vae.encode(pixels.to(image_vae.dtype)).latent_dist
        latents = posterior_sample(posterior, draw_seeds).float()
    return scale_latents(image_vae, latents)


class CaptionConditioning:
    """Text conditioning of a training batch through a frozen text encoder: the batch's captions (or
    their cached embeddings), each replaced by the empty caption with probability ``dropout`` (for
    classifier-free guidance; data without captions trains the unconditional model).

    ``empty_states`` ``(1, L, D)``: the empty caption's states, cached beside embedded captions; with
    them, batches of cached states need no ``text_encoder`` (None)."""

    def __init__(self, text_encoder: torch.nn.Module | None, tokenizer: Any, dropout: float,
                 empty_states: torch.Tensor | None = None) -> None:
        self.text_encoder, self.tokenizer, self.dropout = text_encoder, tokenizer, dropout
        self._empty_states = empty_states

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any], batch_size: int, draw_seeds: torch.Tensor) -> torch.Tensor:
        """``(B, L, D)`` encoder states of the batch's ``caption`` list or ``encoder_hidden_states`` ``(B, L, D)``."""
        keep = rand_per_sample(draw_seeds, "caption_dropout", torch.device("cpu")) >= self.dropout
        if "encoder_hidden_states" in batch:
            if self._empty_states is None:
                self._empty_states = encode_prompts(self.text_encoder, self.tokenizer, [""], self.text_encoder.device)
            device, dtype = ((self.text_encoder.device, self._empty_states.dtype) if self.text_encoder is not None
                             else (batch["encoder_hidden_states"].device, batch["encoder_hidden_states"].dtype))
            states = batch["encoder_hidden_states"].to(device, dtype)
            return torch.where(keep.to(device)[:, None, None], states, self._empty_states.to(device, dtype))
        if self.text_encoder is None:
            raise ValueError("captions as text need the text encoder; this model trains on cached caption states")
        device = self.text_encoder.device
        captions = batch.get("caption") or [""] * batch_size
        return encode_prompts(self.text_encoder, self.tokenizer, [c if k else "" for c, k in zip(captions, keep)], device)


class _DataStage:
    """Shared by every stage: the source of the recipe's ``data:`` section (:func:`~videoldm.data.build.build_source`).

    ``frames_only`` (read by the trainer): an image stage on moving digits, whose videos the
    trainer caches and cuts into frames; other image sources give frames themselves.
    """

    frames_only = False

    def _use_data(self, data: dict[str, Any], vae_config: dict[str, Any], unet_config: dict[str, Any] | None = None,
                  images: bool = False) -> None:
        frames = frame_format(vae_config, unet_config)
        self.source = build_source(data, height=frames.height, width=frames.width, channels=frames.channels, images=images,
                                   size_multiple=frame_size_multiple(vae_config, unet_config))
        self.frames_only = images and isinstance(self.source, MovingDigitsVideos)
        self.data_config = getattr(self.source, "config", None)

    def dataset(self) -> Dataset:
        return self.source


class AutoencoderStage(_DataStage):
    """Image autoencoder: L1 reconstruction + a small KL term, on single frames."""

    def __init__(self, data: dict[str, Any], model: dict[str, Any], kl_weight: float = 1e-6) -> None:
        self.vae = AutoencoderKL(**model)
        self._use_data(data, dict(self.vae.config), images=True)
        self.kl_weight = kl_weight

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"vae": self.vae}

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return parameters_of([self.vae])

    def loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch["image"]
        posterior = self.vae.encode(images).latent_dist
        reconstruction = self.vae.decode(posterior_sample(posterior, batch[DRAW_SEED])).sample
        l1 = F.l1_loss(reconstruction, images)
        kl = posterior.kl().mean()
        return l1 + self.kl_weight * kl, {"l1": l1.item(), "kl": kl.item()}

    @torch.no_grad()
    def export(self, output_dir: Path) -> None:
        # The LDM convention: scale latents to unit variance so the diffusion prior fits them.
        samples = [self.source[index] for index in range(min(len(self.source), 256))]
        frames = torch.cat([s["video"] if "video" in s else s["image"][None] for s in samples]).to(self.vae.device)
        latents = self.vae.encode(frames).latent_dist.mode()
        self.vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
        self.vae.save_pretrained(output_dir)


class _LatentStage(_DataStage):
    """Shared by the diffusion stages: a frozen autoencoder and the image model's noise schedule."""

    label_dropout: float

    def _conditioning(self, labels: torch.Tensor | None, batch_size: int, draw_seeds: torch.Tensor) -> torch.Tensor | None:
        if self.label_encoder is None:  # an unconditional model
            return None
        if labels is None:  # data without labels: the null label (the unconditional model)
            return self.label_encoder(self.label_encoder.null_labels(batch_size, self.label_encoder.device))
        return self.label_encoder(drop_labels(labels, self.label_dropout, draw_seeds))

    def export(self, output_dir: Path) -> None:
        # A pipeline directory: sampled by `videoldm generate` (video stage) or inflated by
        # `videoldm inflate` (image stage, whose unet is a plain image UNet).
        pipe = VideoLDMPipeline(
            unet=self.unet,
            vae=self.vae,
            scheduler=DPMSolverMultistepScheduler.from_config(self.noise_scheduler.config),
            label_encoder=self.label_encoder,
        )
        pipe.save_pretrained(output_dir)


class ImageLDMStage(_LatentStage):
    """Image LDM on single frames: label-conditional, with label dropout for classifier-free guidance, or
    unconditional (``labels: false``, for data without labels such as a film; the UNet then needs no
    cross-attention blocks)."""

    def __init__(
        self,
        data: dict[str, Any],
        model: dict[str, Any],
        autoencoder: str,
        scheduler: dict[str, Any],
        label_dropout: float = 0.1,
        label_embedding_dim: int = 64,
        labels: bool = True,
    ) -> None:
        self.vae = AutoencoderKL.from_pretrained(_require_dir(autoencoder, "autoencoder")).requires_grad_(False)
        self.unet = UNet2DConditionModel(**model)
        self._use_data(data, dict(self.vae.config), dict(self.unet.config), images=True)
        self.label_encoder = LabelEncoder(
            num_classes=10, max_labels=getattr(self.data_config, "max_digits", 1), embedding_dim=label_embedding_dim
        ) if labels else None
        self.noise_scheduler = DDPMScheduler(**scheduler)
        self.objective = DiffusionObjective(self.noise_scheduler)
        self.label_dropout = label_dropout

    def modules(self) -> dict[str, torch.nn.Module]:
        labels = {} if self.label_encoder is None else {"label_encoder": self.label_encoder}
        return {"unet": self.unet, **labels, "vae": self.vae}

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return parameters_of([self.unet] if self.label_encoder is None else [self.unet, self.label_encoder])

    def loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        draw_seeds = batch[DRAW_SEED]
        latents = sample_training_latents(self.vae, batch["image"], draw_seeds)
        context = self._conditioning(batch.get("labels"), len(latents), draw_seeds)
        loss = denoising_loss(self.objective, _ImageAsVideo(self.unet), latents[:, None],
                              {"encoder_hidden_states": context}, draw_seeds)
        return loss, {"loss": loss.item()}


class _ImageAsVideo(torch.nn.Module):
    """Runs an image UNet on one-frame videos ``(B, 1, C, H, W)`` so the image stage shares the objective."""

    def __init__(self, unet: UNet2DConditionModel) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> VideoUNetOutput:
        return VideoUNetOutput(sample=self.unet(sample[:, 0], timestep, encoder_hidden_states).sample[:, None])


class VideoStage(_LatentStage):
    """Video fine-tuning: freeze a Video LDM's spatial layers and train its temporal layers on clips.

    The model is either ``image_model`` (an image pipeline directory: its UNet is inflated here
    with ``temporal`` options) or ``model`` (a video pipeline, e.g. made by ``videoldm inflate``
    or an earlier run, whose temporal layers go on training; ``embedded``: the shipped model). Its conditioning is its own: class
    labels (null labels where the data has none, ``label_dropout``), or captions through its
    text encoder and tokenizer, replaced by the empty caption with probability
    ``caption_dropout`` for classifier-free guidance (an unconditional model where the data has
    no captions). Batches hold pixel clips (encoded here, a posterior sample) or latents cached
    by ``videoldm encode`` (with captions or their embeddings). ``gradient_checkpointing``
    trades compute for activation memory. ``lora`` (``{rank, alpha, target}``,
    :class:`~videoldm.models.lora.TemporalLoraOptions`) trains low-rank adapters on the temporal
    attention instead of the temporal layers themselves; the export is then the pipeline with the
    adapters merged, and the adapters alone in ``temporal_lora/``. ``timestep_sampling``
    (``{kind, mean, std}``, :class:`~videoldm.training.objective.TimestepSampling`; uniform by default)
    draws the diffusion times, e.g. more at high noise, where frames settle their shared layout.
    """

    def __init__(
        self,
        data: dict[str, Any],
        image_model: str | None = None,
        model: str | None = None,
        temporal: dict[str, Any] | None = None,
        label_dropout: float = 0.1,
        caption_dropout: float = 0.1,
        gradient_checkpointing: bool = False,
        lora: dict[str, Any] | None = None,
        timestep_sampling: dict[str, Any] | None = None,
    ) -> None:
        if (image_model is None) == (model is None):
            raise RecipeError("give either image_model (an image pipeline to inflate) or model (a video pipeline)")
        if model is not None and temporal is not None:
            raise RecipeError("temporal options apply when inflating image_model; model already has its temporal layers")
        if model == EMBEDDED_MODEL:
            model = str(embedded_model_dir())
        self.lora_options = None if lora is None else options_section(TemporalLoraOptions, lora, "lora")
        sampling = TimestepSampling() if timestep_sampling is None else options_section(
            TimestepSampling, timestep_sampling, "timestep_sampling")
        directory = _require_dir(image_model or model, "image model" if image_model else "model")
        info = inspect_pipeline_directory(directory)
        self._use_data(data, info.configs["vae"], info.configs["unet"])
        # Captions embedded in a latent cache beside the empty caption's states need no text encoder to
        # train; the export takes it from the model directory.
        null_states = getattr(self.source, "null_states", None) if info.conditioning == "text" else None
        text_parts = ("text_encoder", "tokenizer") if null_states is None else ()
        parts = load_components(info, ("unet", "vae", "scheduler", "label_encoder", *text_parts))
        self.model_dir = directory
        self.vae = parts["vae"].requires_grad_(False)
        self.text_encoder = parts.get("text_encoder")
        self.tokenizer = parts.get("tokenizer") if self.text_encoder is not None else None
        if self.text_encoder is not None:
            self.text_encoder.requires_grad_(False)
        self.label_encoder = parts.get("label_encoder")
        if self.label_encoder is not None:
            self.label_encoder.requires_grad_(False)
        unet = parts["unet"]
        if isinstance(unet, VideoUNet):
            if image_model is not None:
                raise RecipeError(f"image_model {directory} is already a video pipeline; give it as model")
            self.unet = unet.freeze_spatial()
        else:
            if model is not None:
                raise RecipeError(f"model {directory} has an image UNet; give it as image_model (or inflate it first)")
            self.unet = VideoUNet.from_image_unet(unet, **(temporal or {})).freeze_spatial()
        self.lora_parameters = None if self.lora_options is None else add_temporal_lora(self.unet, self.lora_options)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        # Sampling keeps the pipeline's own scheduler and step count; an image model gets the multistep solver.
        self.sampling_scheduler = parts["scheduler"] if model is not None else DPMSolverMultistepScheduler.from_config(parts["scheduler"].config)
        self.default_num_inference_steps = (info.default_steps if model is not None
                                            else DEFAULT_NUM_INFERENCE_STEPS)
        # the export plays at the rate its clips were taken at (where the data fixes one)
        self.default_fps = float(getattr(getattr(self.source, "clip", None), "fps", None) or info.default_fps)
        self.noise_scheduler = DDPMScheduler.from_config(parts["scheduler"].config)
        self.objective = DiffusionObjective(self.noise_scheduler, sampling)
        self.label_dropout = label_dropout
        self.captions = (None if self.text_encoder is None and null_states is None
                         else CaptionConditioning(self.text_encoder, self.tokenizer, caption_dropout, null_states))
        self._clip_frames: int | None = None
        self._check_latent_source()

    def _check_latent_source(self) -> None:
        if not isinstance(self.source, CachedLatents):
            return
        sample = self.source[0]
        channels = self.unet.spatial_config.in_channels
        if sample["latents"].shape[1] != channels:
            raise DataError(f"{self.source.path}: cached latents have {sample['latents'].shape[1]} channels, "
                             f"the model takes {channels}; encode with this model's autoencoder")
        states = sample.get("encoder_hidden_states")
        width = self.unet.spatial_config.cross_attention_dim
        if states is not None and (self.captions is None or states.shape[-1] != width):
            raise DataError(f"{self.source.path}: cached caption embeddings of width {states.shape[-1]} "
                             "do not fit this model's text conditioning; encode with this model")

    def modules(self) -> dict[str, torch.nn.Module]:
        encoders = {"text_encoder": self.text_encoder, "label_encoder": self.label_encoder}
        return {"unet": self.unet, "vae": self.vae, **{k: v for k, v in encoders.items() if v is not None}}

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.unet.temporal_parameters()) if self.lora_parameters is None else self.lora_parameters

    def _extra_inputs(self, latents: torch.Tensor, draw_seeds: torch.Tensor) -> dict[str, Any]:
        """More VideoUNet inputs for the stage's loss (none here; the prediction stage's context frames)."""
        return {}

    def _select_frames(self, clips: torch.Tensor, draw_seeds: torch.Tensor) -> torch.Tensor:
        """The frames of each clip ``(B, T, ...)`` that the stage trains on (all here; the interpolation stage strides)."""
        return clips

    def loss(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        draw_seeds = batch[DRAW_SEED]
        if "latents" in batch:
            latents = self._select_frames(batch["latents"], draw_seeds)
        else:
            video = self._select_frames(batch["video"], draw_seeds)
            latents = sample_training_latents(self.vae, video.flatten(0, 1), draw_seeds).unflatten(0, video.shape[:2])
        if self.captions is not None:
            context = self.captions(batch, len(latents), draw_seeds)
        elif self.label_encoder is not None:
            context = self._conditioning(batch.get("labels"), len(latents), draw_seeds)
        else:
            context = None
        # No image-only samples (alpha forced to 1) are mixed in: with the spatial layers frozen they
        # would give the temporal layers no gradient, only cost compute.
        kwargs = {"encoder_hidden_states": context, **self._extra_inputs(latents, draw_seeds)}
        loss = denoising_loss(self.objective, self.unet, latents, kwargs, draw_seeds)
        return loss, {"loss": loss.item()}

    def _pipeline(self, unet: VideoUNet, scheduler: Any) -> VideoLDMPipeline:
        """The stage's model as a sampling pipeline around ``unet`` (the trained one, or its merged copy)."""
        text_encoder, tokenizer = self.text_encoder, self.tokenizer
        if text_encoder is None and self.captions is not None:  # trained on cached caption states
            parts = load_components(self.model_dir, ("text_encoder", "tokenizer"))
            text_encoder, tokenizer = parts["text_encoder"].to(self.unet.device), parts["tokenizer"]
        return VideoLDMPipeline(
            unet=unet,
            vae=self.vae,
            scheduler=scheduler,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            label_encoder=self.label_encoder,
            default_num_inference_steps=self.default_num_inference_steps,
            default_fps=self.default_fps,
        )

    def export(self, output_dir: Path) -> None:
        unet = self.unet
        if self.lora_options is not None:
            save_temporal_lora(self.unet, self.lora_options, output_dir / LORA_DIRECTORY)
            unet = merge_temporal_lora(copy.deepcopy(self.unet))
        self._pipeline(unet, self.sampling_scheduler).save_pretrained(output_dir)

    def check_validation(self, validation: ValidationSettings) -> None:
        """Raise ValueError if the model cannot take ``validation``'s conditions (prompts need text, labels labels)."""
        if validation.prompts is not None and self.captions is None:
            raise ValueError("validation: prompts need a text-conditional model; this one takes "
                             + ("labels" if self.label_encoder is not None else "no condition"))
        if validation.labels is not None:
            if self.label_encoder is None:
                raise ValueError("validation: labels need a label-conditional model; this one takes "
                                 + ("prompts" if self.captions is not None else "no condition"))
            for labels in validation.labels:
                try:
                    self.label_encoder(torch.tensor([labels]))
                except ValueError as error:
                    raise ValueError(f"validation: labels {labels}: {error}") from None

    @torch.no_grad()
    def validation_videos(self, validation: ValidationSettings) -> dict[str, torch.Tensor]:
        """The validation videos of the model as it is now: name -> pixels ``(T, C, H, W)`` in [-1, 1].

        Sampled as ``videoldm generate`` samples (the pipeline's scheduler, steps and guidance), one video
        per condition, video ``i`` from ``seed + i``; ``num_frames`` defaults to the training clips' length.
        """
        if validation.num_frames is None and self._clip_frames is None:
            sample = self.source[0]
            self._clip_frames = len(sample["latents"] if "latents" in sample else sample["video"])
        # sampling sets the scheduler's timesteps: validation works on a copy of the exported one
        pipe = self._pipeline(self.unet, type(self.sampling_scheduler).from_config(self.sampling_scheduler.config))
        pipe.set_progress_bar_config(disable=True)
        videos = {}
        for index, (name, condition) in enumerate(zip(video_names(validation), validation.conditions())):
            generator = torch.Generator().manual_seed(validation.seed + index)
            frames = pipe.generate_frames(validation.num_frames or self._clip_frames, **condition, generator=generator,
                                          num_inference_steps=validation.steps, guidance_scale=validation.guidance_scale)
            videos[name] = torch.cat(list(frames), dim=1)[0].cpu()
        return videos


class DecoderStage(_DataStage):
    """Temporal decoder fine-tuning (Sec. 3.2): the image autoencoder's decoder gets temporal layers,
    trained (the image autoencoder frozen) on clips with L1 + an adversarial term from a patch-wise
    3D-conv :class:`VideoDiscriminator`, whose own hinge loss the trainer optimises in turn.

    ``video_model`` (a pipeline directory, e.g. the video stage's ``final``) makes the export a
    copy of that pipeline with this decoder as its ``vae``; its autoencoder must be the one
    fine-tuned here (checked). Without it the export is the :class:`TemporalDecoder` alone.
    ``perceptual`` (``{vgg16_weights: path, lpips_weights: path (optional), weight: 1.0}``) adds
    an LPIPS-style term (:class:`~videoldm.training.perceptual.PerceptualLoss`) from local weights.
    """

    def __init__(
        self,
        data: dict[str, Any],
        autoencoder: str,
        video_model: str | None = None,
        temporal: dict[str, Any] | None = None,
        discriminator: dict[str, Any] | None = None,
        disc_start: int = 0,
        disc_weight: float = 0.5,
        perceptual: dict[str, Any] | None = None,
    ) -> None:
        autoencoder_dir = _require_dir(autoencoder, "autoencoder")
        if (autoencoder_dir / "vae").is_dir():
            autoencoder_dir = autoencoder_dir / "vae"
        image_vae = AutoencoderKL.from_pretrained(autoencoder_dir)
        self.video_model = None if video_model is None else _require_dir(video_model, "video model")
        if self.video_model is not None:
            _check_same_autoencoder(image_vae, AutoencoderKL.from_pretrained(self.video_model / "vae"), self.video_model)
        self._use_data(data, dict(image_vae.config))
        self.decoder = TemporalDecoder.from_autoencoder(image_vae, **(temporal or {}))
        self.discriminator = VideoDiscriminator(in_channels=image_vae.config.out_channels, **(discriminator or {}))
        perceptual = dict(perceptual or {})
        perceptual_weight = float(perceptual.pop("weight", 1.0))
        self.perceptual_loss = PerceptualLoss.from_files(**perceptual) if perceptual else None
        self.objective = DecoderFinetuneObjective(
            self.decoder,
            self.discriminator,
            disc_start=disc_start,
            disc_weight=disc_weight,
            perceptual_loss=self.perceptual_loss,
            perceptual_weight=perceptual_weight,
        )

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"decoder": self.decoder, "discriminator": self.discriminator}

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.objective.trainable_parameters())

    def discriminator_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.objective.discriminator_parameters())

    def loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        video = batch["video"]
        if self.perceptual_loss is not None:
            # a fixed metric network: not a trained module, so the trainer neither moves nor checkpoints it
            self.perceptual_loss.to(video.device)
        with torch.no_grad():
            # Posterior samples, as the LDM's latents were: the decoder must handle that spread.
            generators = sample_generators(batch[DRAW_SEED], "posterior")
            latents = torch.cat([self.decoder.encode(clip[None], sample_posterior=True, generator=generator)
                                 for clip, generator in zip(video, generators)])
        return self.objective.generator_loss(video, latents, step)

    def discriminator_loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return self.objective.discriminator_loss(batch["video"], self.objective.last_reconstruction, step)

    def check_validation(self, validation: ValidationSettings) -> None:
        """Raise ValueError for conditions: the decoder's validation videos are reconstructions of data clips."""
        if validation.prompts is not None or validation.labels is not None:
            raise ValueError("validation: the decoder stage reconstructs data clips; give num_videos, not prompts or labels")

    @torch.no_grad()
    def validation_videos(self, validation: ValidationSettings) -> dict[str, torch.Tensor]:
        """The first ``num_videos`` clips of the data beside their reconstructions, the image decoder's and
        this decoder's (posterior modes, the whole clip in one window): name -> ``(T, C, H, 3W)`` in [-1, 1]."""
        videos = {}
        for index in range(validation.num_videos):
            clip = self.source[index % len(self.source)]["video"][None].to(self.decoder.device)
            if validation.num_frames is not None:
                clip = clip[:, : validation.num_frames]
            latents = encode_video(self.decoder, clip, sample=False)
            decoded = [decode_latents(self.decoder, latents, chunk_size=clip.shape[1], decoder=decoder)
                       for decoder in ("image", "video")]
            videos[f"{index:02d}_real-image-temporal"] = torch.cat([clip, *decoded], dim=-1)[0].cpu()
        return videos

    def export(self, output_dir: Path) -> None:
        if self.video_model is None:
            self.decoder.save_pretrained(output_dir)
            return
        pipe = CascadePipeline.from_pretrained(self.video_model, dtype=self.decoder.dtype)
        pipe.register_modules(vae=self.decoder)
        pipe.save_pretrained(output_dir)


def context_frame_mask(num_context: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The prediction model's ``context_mask`` ``(B, T)``: true at the first ``S`` frames, ``S = num_context (B,)``."""
    return torch.arange(num_frames, device=num_context.device)[None] < num_context[:, None]


class PredictionStage(VideoStage):
    """Prediction model (Sec. 3.1.1): a video model learns to continue ``S`` given frames.

    A :class:`VideoStage` on a video pipeline (``model``: a directory, or ``"embedded"`` for the
    shipped model, the default) or on an image pipeline inflated here (``image_model``, with
    ``temporal`` options: the Video LDM trained as a prediction model from the start, S = 0 its
    plain generation) whose UNet gets context conditioning
    (:meth:`VideoUNet.with_context_conditioning`) unless it has it; the spatial layers stay
    frozen, the temporal layers and the context encoder train, on any data source, with the
    pipeline's own labels or captions. Each clip gets ``S`` context frames, its first ``S``, with
    ``S`` drawn from {0, 1, 2, ...} with ``context_probabilities``; S = 0 is the unconditional
    branch that context guidance subtracts. The context frames enter the conditioning path as
    clean latents; the noisy input holds every frame at the clip's one noise level, and the loss
    covers every frame, context frames included: reproducing a given frame is easy, and it keeps
    the sampler's trajectory at the context positions consistent with the given frames (the
    pipeline then puts the given latents back there exactly).
    """

    def __init__(
        self,
        data: dict[str, Any],
        model: str | None = None,
        image_model: str | None = None,
        temporal: dict[str, Any] | None = None,
        context_channels: int = 64,
        context_probabilities: list[float] = (0.2, 0.2, 0.6),
        label_dropout: float = 0.1,
        caption_dropout: float = 0.1,
        gradient_checkpointing: bool = False,
        timestep_sampling: dict[str, Any] | None = None,
    ) -> None:
        probabilities = torch.tensor(list(context_probabilities), dtype=torch.float64)
        if probabilities.ndim != 1 or len(probabilities) < 2 or (probabilities < 0).any() or probabilities.sum() <= 0:
            raise RecipeError(f"context_probabilities must list P(S=0), P(S=1), ... (non-negative), got {context_probabilities}")
        self.context_probabilities = probabilities / probabilities.sum()
        if model is None and image_model is None:
            model = EMBEDDED_MODEL
        super().__init__(data, image_model=image_model, model=model, temporal=temporal, label_dropout=label_dropout,
                         caption_dropout=caption_dropout, timestep_sampling=timestep_sampling)
        if not self.unet.has_context_conditioning:
            self.unet = self.unet.with_context_conditioning(context_channels).freeze_spatial()
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()

    def _extra_inputs(self, latents: torch.Tensor, draw_seeds: torch.Tensor) -> dict[str, Any]:
        """The context of each clip: its first ``S`` latents, ``S`` from the draw (inverse of the cumulative P(S))."""
        num_frames = latents.shape[1]
        if len(self.context_probabilities) > num_frames:
            raise RecipeError(f"context_probabilities allow more context frames than the clips' {num_frames}")
        uniform = rand_per_sample(draw_seeds, "context_frames", torch.device("cpu")).double()
        num_context = torch.searchsorted(self.context_probabilities.cumsum(0), uniform, right=True)
        num_context = num_context.clamp_max(len(self.context_probabilities) - 1).to(latents.device)
        return {"context_mask": context_frame_mask(num_context, num_frames), "context_latents": latents}


class InterpolationStage(VideoStage):
    """Interpolation model (Sec. 3.1.2): fill ``factor - 1`` frames between consecutive key frames.

    Starts from a video pipeline (``model``; the shipped one by default), whose UNet gets (or keeps)
    context conditioning plus a ``frame_rate_regime`` flag with one value per entry of
    ``frame_strides``; spatial layers stay frozen. A training window is ``key_frames`` key frames and
    the ``factor - 1`` frames between each pair, ``T = factor * (key_frames - 1) + 1`` frames taken
    from a clip with regime ``r``'s stride ``frame_strides[r]`` (regime and start drawn per clip): with
    clips at the finest frame rate and strides ``[4, 1]``, regime 0 learns key rate -> x4 and
    regime 1 x4 -> x16, so one model serves both passes of x16. The key frames are the context
    (:func:`~videoldm.models.context.key_frame_mask`); with ``overlap_probability`` every frame up
    to the second key frame is given too (how the pipeline's overlapping windows continue the
    previous window's frames); with ``unconditional_probability`` nothing is given (the branch
    context guidance subtracts). The loss covers every frame, as in the prediction stage.
    The export is the ``model`` pipeline with the trained model's temporal and context weights as
    its ``interpolator`` component (the spatial UNet is the pipeline's own, not stored twice).
    """

    def __init__(
        self,
        data: dict[str, Any],
        model: str = EMBEDDED_MODEL,
        factor: int = 4,
        key_frames: int = 5,
        frame_strides: list[int] = (4, 1),
        context_channels: int = 64,
        overlap_probability: float = 0.3,
        unconditional_probability: float = 0.1,
        label_dropout: float = 0.1,
        caption_dropout: float = 0.1,
        gradient_checkpointing: bool = False,
        timestep_sampling: dict[str, Any] | None = None,
    ) -> None:
        if factor < 2 or key_frames < 2:
            raise RecipeError(f"factor and key_frames must be >= 2, got {factor} and {key_frames}")
        strides = list(frame_strides)
        if not strides or any(not isinstance(k, int) or k < 1 for k in strides):
            raise RecipeError(f"frame_strides must list positive integers (one per frame-rate regime), got {frame_strides}")
        for name, value in (("overlap_probability", overlap_probability), ("unconditional_probability", unconditional_probability)):
            if not 0.0 <= value <= 1.0:
                raise RecipeError(f"{name} must be in [0, 1], got {value}")
        self.factor, self.frame_strides = factor, strides
        self.window_frames = factor * (key_frames - 1) + 1
        self.overlap_probability, self.unconditional_probability = overlap_probability, unconditional_probability
        clip_frames = data.get("num_frames")
        super().__init__(data, model=model, label_dropout=label_dropout, caption_dropout=caption_dropout,
                         timestep_sampling=timestep_sampling)
        clip_frames = getattr(self.data_config, "num_frames", clip_frames)
        needed = (self.window_frames - 1) * max(strides) + 1
        if clip_frames is not None and clip_frames < needed:
            raise RecipeError(f"data num_frames {clip_frames}: {self.window_frames}-frame windows at stride {max(strides)} "
                              f"need clips of at least {needed} frames")
        self.unet = self.unet.with_context_conditioning(
            self.unet.config.context_channels or context_channels, frame_rate_regimes=len(strides)
        ).freeze_spatial()
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()

    # interpolation fills in given key frames, which a validation section does not give
    check_validation = validation_videos = None

    def _regimes(self, draw_seeds: torch.Tensor) -> torch.Tensor:
        return randint_per_sample(draw_seeds, "frame_rate_regime", len(self.frame_strides), torch.device("cpu"))

    def _select_frames(self, clips: torch.Tensor, draw_seeds: torch.Tensor) -> torch.Tensor:
        """``window_frames`` frames of each clip ``(B, L, ...)`` at its regime's stride, from a drawn start."""
        strides = torch.tensor(self.frame_strides)[self._regimes(draw_seeds)]
        spans = (self.window_frames - 1) * strides + 1
        if int(spans.max()) > clips.shape[1]:
            raise RecipeError(f"clips of {clips.shape[1]} frames are too short for {self.window_frames}-frame windows at "
                              f"stride {max(self.frame_strides)}: set data num_frames >= {(self.window_frames - 1) * max(self.frame_strides) + 1}")
        starts = (rand_per_sample(draw_seeds, "window_start", torch.device("cpu")) * (clips.shape[1] - spans + 1)).long()
        indices = starts[:, None] + torch.arange(self.window_frames)[None] * strides[:, None]
        return torch.stack([clip[index.to(clip.device)] for clip, index in zip(clips, indices)])

    def _extra_inputs(self, latents: torch.Tensor, draw_seeds: torch.Tensor) -> dict[str, Any]:
        """Key frames (plus, for some clips, the whole first gap) as context; the regime flag."""
        batch, num_frames = latents.shape[:2]
        cpu = torch.device("cpu")
        mask = key_frame_mask(num_frames, self.factor)[None].repeat(batch, 1)
        overlap = rand_per_sample(draw_seeds, "overlap", cpu) < self.overlap_probability
        mask[:, : self.factor + 1] |= overlap[:, None]
        mask &= (rand_per_sample(draw_seeds, "no_context", cpu) >= self.unconditional_probability)[:, None]
        return {"context_mask": mask.to(latents.device), "context_latents": latents,
                "frame_rate_regime": self._regimes(draw_seeds).to(latents.device)}

    def export(self, output_dir: Path) -> None:
        pipe = CascadePipeline.from_pretrained(self.model_dir, dtype=self.unet.dtype)
        pipe.register_modules(interpolator=self.unet.temporal_weights())
        pipe.save_pretrained(output_dir)


def _high_resolution_size(data: dict[str, Any]) -> tuple[int, int]:
    """``(height, width)`` of the high-resolution frames an upsampler recipe's ``data:`` gives: the digits'
    ``canvas_size``, or a video source's ``size`` (which it must give: there is no model to take it from)."""
    kind = data.get("kind", "digits")
    if kind == "latents":
        raise RecipeError("data: the upsampler trains on pixel videos, not on a latent cache")
    size = data.get("canvas_size", MovingDigitsConfig.canvas_size) if kind == "digits" else data.get("size")
    if size is None:
        raise RecipeError("data: give size ([height, width] or one number), the high-resolution frame size to train on")
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class UpsamplerStage:
    """Video upsampler (Sec. 3.4), trained on patches of high-resolution clips, in two phases.

    Image phase (``model``: the image UNet's diffusers config, whose ``in_channels`` is twice the
    frame channels and ``num_class_embeds > max_noise_level``): a :class:`VideoUpsampler` with
    ``temporal`` options is built and its spatial UNet trained with every frame image-only (the
    per-frame upsampler); use one-frame clips. Video phase (``image_upsampler``: the image phase's
    ``final`` directory): spatial weights frozen, the temporal layers trained on clips.

    Each clip is cut to a random ``patch_size`` square (at the same place in every frame, aligned
    to ``scale_factor``); its low-resolution input is the patch area-downsampled ``scale_factor``
    times (:func:`~videoldm.models.upsampler.downsample_frames`) and noise-augmented to a level
    drawn per clip from ``0..max_noise_level`` of ``low_res_scheduler``, the level given to the UNet.
    The denoising target follows ``scheduler`` (the training noise schedule and prediction type); the
    diffused sample is the patch or, with ``bicubic_residual_scale``, its scaled bicubic residual.
    Export: a :class:`~videoldm.pipelines.upsample.VideoUpsamplerPipeline` directory (image phase, or
    video phase without ``pipeline``), or the ``pipeline`` directory (``embedded``: the shipped model)
    with the upsampler as its ``upsampler`` components (video phase).

    Latent space (the paper's setup: Stable Diffusion's x4 upscaler, inflated with ``videoldm inflate``):
    a video phase whose ``image_upsampler`` directory has a ``vae`` (and optionally a text encoder and
    tokenizer). The denoised sample is then the patch's posterior-sampled latents, the low-resolution
    input is the patch area-downsampled to the latent grid (pixels, as the x4 upscaler takes them),
    and captions condition it as in the video stage (``caption_dropout``; data without captions: the
    empty caption). The export is an upsampler pipeline directory with that ``vae`` and text encoder.
    ``gradient_checkpointing`` trades compute for activation memory (Stable Diffusion's x4 UNet).
    """

    def __init__(
        self,
        data: dict[str, Any],
        model: dict[str, Any] | None = None,
        image_upsampler: str | None = None,
        temporal: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        low_res_scheduler: dict[str, Any] | None = None,
        max_noise_level: int = DEFAULT_MAX_NOISE_LEVEL,
        scale_factor: int = 4,
        bicubic_residual_scale: float | None = None,
        patch_size: int = 64,
        pipeline: str | None = None,
        caption_dropout: float = 0.1,
        gradient_checkpointing: bool = False,
    ) -> None:
        if (model is None) == (image_upsampler is None):
            raise RecipeError("give either model (image phase: a UNet config) or image_upsampler (video phase: "
                              "the image phase's final directory)")
        self.image_phase = model is not None
        self.vae: AutoencoderKL | TemporalDecoder | None = None
        self.text_encoder, self.tokenizer, self.captions = None, None, None
        if self.image_phase:
            if pipeline is not None:
                raise RecipeError("pipeline: only the video phase exports into a pipeline")
            if scheduler is None or low_res_scheduler is None:
                raise RecipeError("the image phase needs scheduler and low_res_scheduler settings")
            channels = model.get("out_channels", 4)
            self.upsampler = VideoUpsampler(unet_config=UNet2DConditionModel(**model).config, **(temporal or {}),
                                            low_res_channels=channels, max_noise_level=max_noise_level,
                                            scale_factor=scale_factor, bicubic_residual_scale=bicubic_residual_scale)
            self.noise_scheduler = DDPMScheduler(**scheduler)
            self.low_res_scheduler = DDPMScheduler(**low_res_scheduler)
        else:
            if temporal is not None or scheduler is not None or low_res_scheduler is not None or bicubic_residual_scale:
                raise RecipeError("the video phase keeps the image phase's temporal options, schedulers and residual "
                                  "scale; remove temporal, scheduler, low_res_scheduler and bicubic_residual_scale")
            parts = load_components(_require_dir(image_upsampler, "image upsampler"),
                                    UPSAMPLER_COMPONENTS + ("vae", "text_encoder", "tokenizer"), required=UPSAMPLER_COMPONENTS)
            self.upsampler = parts["upsampler"].freeze_spatial()
            self.noise_scheduler = DDPMScheduler.from_config(parts["scheduler"].config)
            self.low_res_scheduler = parts["low_res_scheduler"]
            self.vae = parts.get("vae")
            if self.vae is not None:
                self.vae.requires_grad_(False)
                if pipeline is not None:
                    raise RecipeError("pipeline: a latent-space upsampler exports as its own upsampler pipeline "
                                      "(with its autoencoder); remove pipeline")
            if "text_encoder" in parts and "tokenizer" in parts:
                self.text_encoder, self.tokenizer = parts["text_encoder"].requires_grad_(False), parts["tokenizer"]
                self.captions = CaptionConditioning(self.text_encoder, self.tokenizer, caption_dropout)
        if gradient_checkpointing:
            self.upsampler.enable_gradient_checkpointing()
        self.pipeline_dir = None
        if pipeline is not None:
            self.pipeline_dir = embedded_model_dir() if pipeline == EMBEDDED_MODEL else _require_dir(pipeline, "pipeline")
        self.objective = DiffusionObjective(self.noise_scheduler)
        # pixels per cell of the denoised sample's grid: the upscale factor, or the autoencoder's
        self.scale_factor = self.upsampler.config.scale_factor if self.vae is None else latent_decoder_scale(self.vae)
        if patch_size < self.scale_factor or patch_size % self.scale_factor:
            raise RecipeError(f"patch_size ({patch_size}) must be a multiple of {self.scale_factor}, the pixels per "
                              "cell of the upsampler's sample")
        self.patch_size = patch_size
        height, width = _high_resolution_size(data)
        if min(height, width) < patch_size:
            raise RecipeError(f"patch_size {patch_size} is larger than the data's {width}x{height} frames")
        self.source = build_source(data, height=height, width=width, channels=self.upsampler.config.low_res_channels)

    def dataset(self) -> Dataset:
        return self.source

    def modules(self) -> dict[str, torch.nn.Module]:
        frozen = {"vae": self.vae, "text_encoder": self.text_encoder}
        return {"upsampler": self.upsampler, **{name: module for name, module in frozen.items() if module is not None}}

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        if self.image_phase:
            return list(self.upsampler.spatial_parameters())
        return list(self.upsampler.temporal_parameters())

    def _patches(self, video: torch.Tensor, draw_seeds: torch.Tensor) -> torch.Tensor:
        """A ``patch_size`` square of each clip ``(B, T, C, H, W)``, the same in all its frames, aligned to the scale."""
        cpu, size, step = torch.device("cpu"), self.patch_size, self.scale_factor
        tops = randint_per_sample(draw_seeds, "patch_top", (video.shape[-2] - size) // step + 1, cpu) * step
        lefts = randint_per_sample(draw_seeds, "patch_left", (video.shape[-1] - size) // step + 1, cpu) * step
        return torch.stack([clip[..., top:top + size, left:left + size]
                            for clip, top, left in zip(video, tops.tolist(), lefts.tolist())])

    def loss(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        draw_seeds = batch[DRAW_SEED]
        high_res = self._patches(batch["video"], draw_seeds)
        low_res = downsample_frames(high_res, self.scale_factor)
        levels = randint_per_sample(draw_seeds, "noise_level", self.upsampler.config.max_noise_level + 1, high_res.device)
        noise = randn_per_sample(draw_seeds, "low_res_noise", low_res.shape[1:], low_res.device, low_res.dtype)
        batch_size, num_frames = high_res.shape[:2]
        kwargs = {
            "low_res_video": noise_augment(self.low_res_scheduler, low_res, levels, noise),
            "noise_level": levels,
            "image_only_indicator": torch.full((batch_size, num_frames), self.image_phase, device=high_res.device),
        }
        if self.vae is None:
            target = self.upsampler.sample_from_video(high_res, low_res)
        else:
            target = sample_training_latents(self.vae, high_res.flatten(0, 1), draw_seeds).unflatten(0, high_res.shape[:2])
        if self.captions is not None:
            kwargs["encoder_hidden_states"] = self.captions(batch, batch_size, draw_seeds)
        loss = denoising_loss(self.objective, self.upsampler, target, kwargs, draw_seeds)
        return loss, {"loss": loss.item()}

    def export(self, output_dir: Path) -> None:
        sampling_scheduler = DPMSolverMultistepScheduler.from_config(self.noise_scheduler.config)
        if self.pipeline_dir is None:
            VideoUpsamplerPipeline(upsampler=self.upsampler, scheduler=sampling_scheduler,
                                   low_res_scheduler=self.low_res_scheduler, vae=self.vae, text_encoder=self.text_encoder,
                                   tokenizer=self.tokenizer).save_pretrained(output_dir)
            return
        pipe = CascadePipeline.from_pretrained(self.pipeline_dir, dtype=self.upsampler.dtype)
        pipe.register_modules(upsampler=self.upsampler, upsampler_scheduler=sampling_scheduler,
                              low_res_scheduler=self.low_res_scheduler)
        pipe.save_pretrained(output_dir)


def _check_same_autoencoder(trained: AutoencoderKL, in_pipeline: AutoencoderKL, pipeline_dir: Path) -> None:
    # A decoder fine-tuned for another autoencoder's latents would decode this pipeline's wrongly.
    expected, actual = trained.state_dict(), in_pipeline.state_dict()
    if expected.keys() != actual.keys() or any(not torch.equal(expected[k], actual[k].to(expected[k].dtype)) for k in expected):
        raise ValueError(f"the autoencoder of {pipeline_dir} differs from the one being fine-tuned; use the same one")


STAGES = {
    "autoencoder": AutoencoderStage,
    "image_ldm": ImageLDMStage,
    "video": VideoStage,
    "decoder": DecoderStage,
    "prediction": PredictionStage,
    "interpolation": InterpolationStage,
    "upsampler": UpsamplerStage,
}


def build_trainer(recipe: dict[str, Any], overrides: dict[str, Any] | None = None) -> Trainer:
    """A :class:`Trainer` for a recipe dict; ``overrides`` replace ``train:`` settings or ``output_dir``, and
    ``validate_every`` the ``validation:`` section's ``every`` (adding the section with its defaults)."""
    recipe = dict(recipe)
    overrides = dict(overrides or {})
    output_dir = overrides.pop("output_dir", None) or recipe.pop("output_dir")
    recipe.pop("output_dir", None)
    validation = recipe.pop("validation", None)
    validate_every = overrides.pop("validate_every", None)
    if validate_every is not None:
        validation = {**(validation or {}), "every": validate_every}
    settings = TrainSettings.from_dict({**recipe.pop("train", {}), **overrides})
    stage_class = STAGES[recipe.pop("stage")]
    check_arguments(stage_class.__init__, recipe, f"recipe of stage {stage_class.__name__}")
    if validation is not None:
        try:
            check_stage_validates(stage_class)  # before the stage's models are built
        except ValueError as error:
            raise RecipeError(str(error)) from None
    torch.manual_seed(settings.seed)
    return Trainer(stage_class(**recipe), settings, output_dir,
                   None if validation is None else ValidationSettings(**validation))
