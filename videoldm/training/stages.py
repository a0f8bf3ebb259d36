"""The training recipes, one stage each, all run by :class:`videoldm.training.trainer.Trainer`.

Stages of the embedded model, in order (each reads the previous stage's ``final`` directory):
``autoencoder`` (image AutoencoderKL) -> ``image_ldm`` (label-conditional image UNet) -> ``video``
(inflate, freeze spatial, train temporal layers on clips) -> ``decoder`` (inflate the autoencoder's
decoder, train its temporal layers against a video discriminator; exported into the video
pipeline as its ``vae``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from torch.utils.data import Dataset

from ..data.moving_digits import MovingDigitsConfig, MovingDigitsVideos
from ..models.autoencoder import TemporalDecoder
from ..models.conditioning import LabelEncoder
from ..models.discriminator import VideoDiscriminator
from ..models.unet import VideoUNet, VideoUNetOutput
from ..pipelines.text_to_video import VideoLDMPipeline
from .decoder_losses import DecoderFinetuneObjective
from .draws import DRAW_SEED, rand_per_sample, randint_per_sample, randn_per_sample, sample_generators
from .objective import DiffusionObjective
from .perceptual import PerceptualLoss
from .recipes import check_arguments
from .trainer import Trainer, TrainSettings, parameters_of


def _digits_config(data: dict[str, Any], split: str = "train") -> MovingDigitsConfig:
    fields = {key: value for key, value in data.items() if key in MovingDigitsConfig.__dataclass_fields__}
    return MovingDigitsConfig(**fields, **({"split": split} if "split" not in fields else {}))


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
    num_train_timesteps = objective.noise_scheduler.config.num_train_timesteps
    timesteps = randint_per_sample(draw_seeds, "timestep", num_train_timesteps, latents.device)
    noise = randn_per_sample(draw_seeds, "noise", latents.shape[1:], latents.device, latents.dtype)
    return objective.loss(model, latents, model_kwargs, timesteps=timesteps, noise=noise)


class _DigitsDataStage:
    """Shared by every stage: the moving-digits videos described by the recipe's ``data:`` section."""

    def _use_data(self, data: dict[str, Any]) -> None:
        self.data_config = _digits_config(data)
        self.num_videos = data.get("num_videos", 20000)

    def dataset(self) -> Dataset:
        return MovingDigitsVideos(self.data_config, self.num_videos)


class AutoencoderStage(_DigitsDataStage):
    """Image autoencoder: L1 reconstruction + a small KL term, on single frames."""

    frames_only = True

    def __init__(self, data: dict[str, Any], model: dict[str, Any], kl_weight: float = 1e-6) -> None:
        self._use_data(data)
        self.vae = AutoencoderKL(**model)
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
        videos = [self.dataset()[index]["video"] for index in range(min(self.num_videos, 256))]
        frames = torch.cat(videos).to(self.vae.device)
        latents = self.vae.encode(frames).latent_dist.mode()
        self.vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
        self.vae.save_pretrained(output_dir)


class _LatentStage(_DigitsDataStage):
    """Shared by the diffusion stages: a frozen autoencoder and the image model's noise schedule."""

    label_dropout: float

    def _encode(self, pixels: torch.Tensor, draw_seeds: torch.Tensor) -> torch.Tensor:
        """Frames ``(B*T, C, H, W)`` of ``B`` draws -> posterior-sampled scaled latents ``(B*T, c, h, w)``."""
        with torch.no_grad():
            return posterior_sample(self.vae.encode(pixels).latent_dist, draw_seeds) * self.vae.config.scaling_factor

    def _conditioning(self, labels: torch.Tensor, draw_seeds: torch.Tensor) -> torch.Tensor:
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
    """Label-conditional image LDM on single frames, with label dropout for classifier-free guidance."""

    frames_only = True

    def __init__(
        self,
        data: dict[str, Any],
        model: dict[str, Any],
        autoencoder: str,
        scheduler: dict[str, Any],
        label_dropout: float = 0.1,
        label_embedding_dim: int = 64,
    ) -> None:
        self._use_data(data)
        self.vae = AutoencoderKL.from_pretrained(_require_dir(autoencoder, "autoencoder")).requires_grad_(False)
        self.unet = UNet2DConditionModel(**model)
        self.label_encoder = LabelEncoder(
            num_classes=10, max_labels=self.data_config.max_digits, embedding_dim=label_embedding_dim
        )
        self.noise_scheduler = DDPMScheduler(**scheduler)
        self.objective = DiffusionObjective(self.noise_scheduler)
        self.label_dropout = label_dropout

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet, "label_encoder": self.label_encoder, "vae": self.vae}

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return parameters_of([self.unet, self.label_encoder])

    def loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        draw_seeds = batch[DRAW_SEED]
        latents = self._encode(batch["image"], draw_seeds)
        context = self._conditioning(batch["labels"], draw_seeds)
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
    """Video fine-tuning: inflate the image LDM, freeze its spatial layers, train temporal layers on clips."""

    def __init__(
        self,
        data: dict[str, Any],
        image_model: str,
        temporal: dict[str, Any] | None = None,
        label_dropout: float = 0.1,
    ) -> None:
        image_model_dir = _require_dir(image_model, "image model")
        self._use_data(data)
        self.vae = AutoencoderKL.from_pretrained(image_model_dir / "vae").requires_grad_(False)
        self.label_encoder = LabelEncoder.from_pretrained(image_model_dir / "label_encoder").requires_grad_(False)
        image_unet = UNet2DConditionModel.from_pretrained(image_model_dir / "unet")
        self.unet = VideoUNet.from_image_unet(image_unet, **(temporal or {})).freeze_spatial()
        self.noise_scheduler = DDPMScheduler.from_pretrained(image_model_dir / "scheduler")
        self.objective = DiffusionObjective(self.noise_scheduler)
        self.label_dropout = label_dropout

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet, "label_encoder": self.label_encoder, "vae": self.vae}

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.unet.temporal_parameters())

    def loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        video, draw_seeds = batch["video"], batch[DRAW_SEED]
        batch_size, num_frames = video.shape[:2]
        latents = self._encode(video.flatten(0, 1), draw_seeds).unflatten(0, (batch_size, num_frames))
        context = self._conditioning(batch["labels"], draw_seeds)
        # No image-only samples (alpha forced to 1) are mixed in: with the spatial layers frozen they
        # would give the temporal layers no gradient, only cost compute.
        loss = denoising_loss(self.objective, self.unet, latents, {"encoder_hidden_states": context}, draw_seeds)
        return loss, {"loss": loss.item()}


class DecoderStage(_DigitsDataStage):
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
        self._use_data(data)
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

    def export(self, output_dir: Path) -> None:
        if self.video_model is None:
            self.decoder.save_pretrained(output_dir)
            return
        pipe = VideoLDMPipeline.from_pretrained(self.video_model, dtype=self.decoder.dtype)
        pipe.register_modules(vae=self.decoder)
        pipe.save_pretrained(output_dir)


def context_frame_mask(num_context: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The prediction model's ``context_mask`` ``(B, T)``: true at the first ``S`` frames, ``S = num_context (B,)``."""
    return torch.arange(num_frames, device=num_context.device)[None] < num_context[:, None]


class PredictionStage(_LatentStage):
    """Prediction model (Sec. 3.1.1): the video model learns to continue ``S`` given frames.

    Starts from a video pipeline (``video_model``: a directory, or ``"embedded"`` for the shipped
    model), adds context conditioning (:meth:`VideoUNet.with_context_conditioning`) unless it has
    it, freezes the spatial layers and trains the temporal layers and the context encoder. Each
    clip gets ``S`` context frames, the first ``S``, with ``S`` drawn from {0, 1, 2, ...} with
    ``context_probabilities``; S = 0 is the unconditional branch that context guidance subtracts.
    The context frames enter the conditioning path as clean latents; the noisy input holds every
    frame at the clip's one noise level, and the loss covers every frame, context frames
    included: reproducing a given frame is easy, and it keeps the sampler's trajectory at the
    context positions consistent with the given frames (the pipeline then puts the given latents
    back there exactly).
    """

    def __init__(
        self,
        data: dict[str, Any],
        video_model: str = "embedded",
        context_channels: int = 64,
        context_probabilities: list[float] = (0.1, 0.3, 0.6),
        label_dropout: float = 0.1,
    ) -> None:
        probabilities = torch.tensor(list(context_probabilities), dtype=torch.float64)
        if probabilities.ndim != 1 or len(probabilities) < 2 or (probabilities < 0).any() or probabilities.sum() <= 0:
            raise ValueError(f"context_probabilities must list P(S=0), P(S=1), ... (non-negative), got {context_probabilities}")
        self.context_probabilities = probabilities / probabilities.sum()
        self._use_data(data)
        if len(self.context_probabilities) > self.data_config.num_frames:
            raise ValueError(f"context_probabilities allow more context frames than the clips' {self.data_config.num_frames}")
        if video_model == "embedded":
            from ..embedded import embedded_model_dir

            video_model = embedded_model_dir()
        self.video_pipeline = VideoLDMPipeline.from_pretrained(_require_dir(video_model, "video model"), dtype=torch.float32)
        unet = self.video_pipeline.unet
        self.unet = (unet if unet.has_context_conditioning else unet.with_context_conditioning(context_channels)).freeze_spatial()
        vae = self.video_pipeline.vae
        self.vae = (vae.image_autoencoder() if isinstance(vae, TemporalDecoder) else vae).requires_grad_(False)
        self.label_encoder = self.video_pipeline.label_encoder.requires_grad_(False)
        self.noise_scheduler = DDPMScheduler.from_config(self.video_pipeline.scheduler.config)
        self.objective = DiffusionObjective(self.noise_scheduler)
        self.label_dropout = label_dropout

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet, "label_encoder": self.label_encoder, "vae": self.vae}

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.unet.temporal_parameters())

    def loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        video, draw_seeds = batch["video"], batch[DRAW_SEED]
        batch_size, num_frames = video.shape[:2]
        latents = self._encode(video.flatten(0, 1), draw_seeds).unflatten(0, (batch_size, num_frames))
        context = self._conditioning(batch["labels"], draw_seeds)
        # S per sample by inverting the cumulative distribution at a uniform draw
        uniform = rand_per_sample(draw_seeds, "context_frames", torch.device("cpu")).double()
        num_context = torch.searchsorted(self.context_probabilities.cumsum(0), uniform, right=True)
        num_context = num_context.clamp_max(len(self.context_probabilities) - 1).to(latents.device)
        kwargs = {
            "encoder_hidden_states": context,
            "context_mask": context_frame_mask(num_context, num_frames),
            "context_latents": latents,
        }
        loss = denoising_loss(self.objective, self.unet, latents, kwargs, draw_seeds)
        return loss, {"loss": loss.item()}

    def export(self, output_dir: Path) -> None:
        # The video pipeline with this unet: its temporal decoder and scheduler are kept as they were.
        self.video_pipeline.register_modules(unet=self.unet)
        self.video_pipeline.save_pretrained(output_dir)


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
}


def build_trainer(recipe: dict[str, Any], overrides: dict[str, Any] | None = None) -> Trainer:
    """A :class:`Trainer` for a recipe dict; ``overrides`` replace ``train:`` settings or ``output_dir``."""
    recipe = dict(recipe)
    overrides = dict(overrides or {})
    output_dir = overrides.pop("output_dir", None) or recipe.pop("output_dir")
    recipe.pop("output_dir", None)
    settings = TrainSettings.from_dict({**recipe.pop("train", {}), **overrides})
    stage_class = STAGES[recipe.pop("stage")]
    check_arguments(stage_class.__init__, recipe, f"recipe of stage {stage_class.__name__}")
    torch.manual_seed(settings.seed)
    return Trainer(stage_class(**recipe), settings, output_dir)
