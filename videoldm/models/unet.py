"""VideoUNet: a diffusers ``UNet2DConditionModel`` inflated with temporal layers (Video LDM, Sec. 3.1).

The image UNet is kept whole as ``self.unet`` and sees the video as a batch of images
``(B*T, C, H, W)``. After every spatial ResNet block a :class:`TemporalConvBlock` and after every
spatial attention/transformer block a :class:`TemporalAttention` is attached, each blended with the
spatial output through its own :class:`AlphaBlender`. The layers live in ``self.temporal`` and run
through forward hooks on the UNet's modules (:class:`~videoldm.models.temporal.TemporalHook`
objects that follow deep copies and pickle with the model), so the image UNet's module tree and
state-dict keys are untouched. The frame context is set only during :meth:`VideoUNet.forward`;
:meth:`VideoUNet.enable_gradient_checkpointing` makes recomputation in backward use the context
of its own forward.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from diffusers import ConfigMixin, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.utils import BaseOutput
from einops import rearrange
from torch import nn

from ..defaults import TEMPORAL_KINDS
from .context import ContextEncoder, masked_context
from .temporal import (
    BlendedTemporalLayer,
    FrameContext,
    InflatedModelMixin,
    TemporalAttention,
    TemporalConvBlock,
    TemporalInflation,
    temporal_key,
)

SPATIAL_PREFIX = "unet."
TEMPORAL_PREFIX = "temporal."
_BLOCK_MEMBER = re.compile(r"^(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.(resnets|attentions)\.\d+$")


@dataclass
class VideoUNetOutput(BaseOutput):
    """``sample``: the model prediction ``(B, T, C, H, W)``."""

    sample: torch.Tensor


def _public_config(config: dict) -> dict:
    return {key: value for key, value in dict(config).items() if not key.startswith("_")}


def _repeat_per_frame(per_video: torch.Tensor | None, num_frames: int) -> torch.Tensor | None:
    return None if per_video is None else per_video.repeat_interleave(num_frames, dim=0)


def expand_timesteps(timestep: torch.Tensor | float | int, batch: int, num_frames: int, device) -> torch.Tensor:
    """Timesteps given as a scalar, ``(B,)`` or ``(B, T)`` -> one per frame ``(B*T,)``."""
    timestep = torch.as_tensor(timestep, device=device)
    if timestep.ndim == 0:
        return timestep.expand(batch * num_frames)
    if timestep.shape == (batch,):
        return timestep.repeat_interleave(num_frames)
    if timestep.shape == (batch, num_frames):
        return timestep.reshape(-1)
    raise ValueError(
        f"timestep must be a scalar, ({batch},) or ({batch}, {num_frames}); got shape {tuple(timestep.shape)}"
    )


@dataclass(frozen=True)
class TemporalOptions:
    """The temporal layers an inflated UNet gets: its config entries beside ``unet_config``, defined once.

    ``temporal_kinds`` picks the layer kinds (``"conv"``, ``"attention"``); ``attention_everywhere``
    also gives ResNet blocks of attention-free UNet blocks a temporal attention; ``conv_kernel_size`` is
    ``(3, 3, 3)`` (paper) or ``(3, 1, 1)``; ``alpha_init`` is the initial ``alpha = sigmoid(m)`` of every
    blender. ``context_channels`` makes a prediction / interpolation model: a
    :class:`~videoldm.models.context.ContextEncoder` of that width turns ``context_mask`` and
    ``context_latents`` into features for every temporal layer (zero-initialised, so the model first
    equals the one without context). ``frame_rate_regimes`` (interpolation models) adds a per-video
    ``frame_rate_regime`` flag to the context encoder.
    """

    temporal_kinds: Sequence[str] = TEMPORAL_KINDS
    attention_everywhere: bool = False
    conv_kernel_size: Sequence[int] = (3, 3, 3)
    alpha_init: float = 0.5
    attention_head_dim: int = 64
    context_channels: int | None = None
    frame_rate_regimes: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.temporal_kinds) - set(TEMPORAL_KINDS)
        if unknown or not self.temporal_kinds:
            raise ValueError(f"temporal_kinds must be a non-empty subset of {TEMPORAL_KINDS}, got {list(self.temporal_kinds)}")
        if self.context_channels is not None and self.context_channels < 1:
            raise ValueError(f"context_channels must be a positive number of channels or None, got {self.context_channels}")
        if self.frame_rate_regimes < 0 or (self.frame_rate_regimes and not self.context_channels):
            raise ValueError(f"frame_rate_regimes ({self.frame_rate_regimes}) needs context conditioning (context_channels)")


def takes_temporal_options(init: Callable[..., None]) -> Callable[..., None]:
    """Show ``init(self, unet_config, ..., **temporal_options)``'s :class:`TemporalOptions` as keyword parameters of
    its signature: diffusers builds a model's config, and reads it back, from its ``__init__`` signature."""
    signature = inspect.signature(init)
    own = [parameter for parameter in signature.parameters.values() if parameter.kind is not parameter.VAR_KEYWORD]
    options = [inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=field.default, annotation=field.type)
               for field in fields(TemporalOptions)]
    init.__signature__ = signature.replace(parameters=own + options)
    return init


def _video_layers(unet: UNet2DConditionModel, options: TemporalOptions) -> tuple[TemporalInflation, ContextEncoder | None]:
    """The temporal layers (unattached) and context encoder a :class:`VideoUNet` with ``options`` puts on ``unet``.

    Only the UNet's module tree and sizes are read, so ``unet`` may live on the meta device.
    """
    temporal_kinds, attention_everywhere = options.temporal_kinds, options.attention_everywhere
    conv_kernel_size, alpha_init, attention_head_dim = options.conv_kernel_size, options.alpha_init, options.attention_head_dim
    context_channels, frame_rate_regimes = options.context_channels, options.frame_rate_regimes
    blocks_with_attention = {
        name.rsplit(".attentions.", 1)[0] for name, _ in unet.named_modules() if ".attentions." in name
    }
    plan: dict[str, list[BlendedTemporalLayer]] = {}
    for name, module in unet.named_modules():
        match = _BLOCK_MEMBER.match(name)
        if match is None:
            continue
        layers = []
        if isinstance(module, ResnetBlock2D):
            channels = module.out_channels
            if "conv" in temporal_kinds:
                temb_channels = module.time_emb_proj.in_features if module.time_emb_proj is not None else None
                layers.append(TemporalConvBlock(channels, temb_channels, tuple(conv_kernel_size)))
            wants_attention = attention_everywhere and match.group(1) not in blocks_with_attention
            if "attention" in temporal_kinds and wants_attention:
                layers.append(TemporalAttention(channels, head_dim=attention_head_dim))
        elif isinstance(module, (Transformer2DModel, Attention)) and "attention" in temporal_kinds:
            if isinstance(module, Transformer2DModel):
                channels, cross_dim = module.config.in_channels, module.config.cross_attention_dim
            else:
                channels, cross_dim = module.query_dim, None
            layers.append(TemporalAttention(channels, head_dim=attention_head_dim, cross_attention_dim=cross_dim))
        if layers:
            plan[temporal_key(name)] = [BlendedTemporalLayer(layer, alpha_init, context_channels) for layer in layers]
    context_encoder = None
    if context_channels:
        context_encoder = ContextEncoder(
            unet.config.in_channels, len(unet.config.block_out_channels), context_channels, frame_rate_regimes
        )
    return TemporalInflation(plan), context_encoder


class VideoUNet(InflatedModelMixin, ModelMixin, ConfigMixin):
    """An image UNet plus temporal layers; ``forward`` maps ``(B, T, C, H, W)`` to the same shape.

    ``unet_config`` is the image UNet's; the temporal layers are given by :class:`TemporalOptions`' fields.
    """

    _supports_gradient_checkpointing = True

    spatial_attribute = "unet"

    @register_to_config
    @takes_temporal_options
    def __init__(self, unet_config: dict, **temporal_options: Any) -> None:
        super().__init__()
        self.unet = UNet2DConditionModel.from_config(_public_config(unet_config))
        # The options given, not self.config: a subclass (VideoUpsampler) registers more entries.
        self.temporal, self.context_encoder = _video_layers(self.unet, TemporalOptions(**temporal_options))
        self.temporal.attach(self.unet)

    @classmethod
    def from_image_unet(cls, image_unet: UNet2DConditionModel, **temporal_options) -> "VideoUNet":
        """Inflate ``image_unet``: spatial weights are bit-exact copies, temporal layers are new."""
        model = cls(unet_config=_public_config(image_unet.config), **temporal_options)
        model.unet.load_state_dict(image_unet.state_dict())
        if image_unet.dtype != model.dtype:
            model = model.to(dtype=image_unet.dtype)
        return model.to(image_unet.device)

    def with_context_conditioning(self, context_channels: int = 64, frame_rate_regimes: int = 0) -> "VideoUNet":
        """A copy made into a prediction (or, with ``frame_rate_regimes``, interpolation) model.

        Same weights plus a fresh, zero-initialised context path (or, for a model that already has
        one of ``context_channels``, a fresh frame-rate-regime embedding): the copy's outputs equal
        this model's, whatever context it is given, until it is trained.
        """
        current = self.config.context_channels
        if current is not None and (current != context_channels or self.config.frame_rate_regimes):
            raise ValueError(f"this VideoUNet already has context conditioning ({current} channels, "
                             f"{self.config.frame_rate_regimes} frame-rate regimes)")
        if current is not None and not frame_rate_regimes:
            raise ValueError("this VideoUNet already has context conditioning")
        config = {**_public_config(self.config), "context_channels": context_channels, "frame_rate_regimes": frame_rate_regimes}
        model = type(self)(**config)
        result = model.load_state_dict(self.state_dict(), strict=False)
        if result.unexpected_keys or any(".context_" not in key and not key.startswith("context_encoder.")
                                         for key in result.missing_keys):
            raise RuntimeError(f"context conditioning changed non-context weights: {result}")
        if model.dtype != self.dtype:
            model = model.to(dtype=self.dtype)
        return model.to(self.device)

    @property
    def spatial_config(self):
        """The image UNet's diffusers config (``in_channels``, ``sample_size``, ...)."""
        return self.unet.config

    @property
    def has_context_conditioning(self) -> bool:
        """Whether the model takes ``context_mask`` / ``context_latents`` (a prediction model)."""
        return self.context_encoder is not None

    # ----------------------------------------------------------------------------- parameters
    def video_modules(self) -> list[nn.Module]:
        """Temporal layers and, for a prediction model, the context encoder."""
        return [self.temporal] + ([self.context_encoder] if self.context_encoder is not None else [])

    def temporal_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict of the temporal layers (keys without the ``temporal.`` prefix) and the context
        encoder (keys under ``context_encoder.``): everything the image UNet lacks."""
        state = self.temporal.state_dict()
        if self.context_encoder is not None:
            state.update({f"context_encoder.{key}": value for key, value in self.context_encoder.state_dict().items()})
        return state

    def load_image_state_dict(self, state_dict: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
        """Load an image UNet's state dict (its own keys); returns ``(missing, unexpected)`` keys.

        ``missing`` lists the temporal keys; ``unexpected`` is empty for a compatible image UNet.
        """
        prefixed = {SPATIAL_PREFIX + key: value for key, value in state_dict.items()}
        result = self.load_state_dict(prefixed, strict=False)
        return list(result.missing_keys), list(result.unexpected_keys)

    def load_spatial(self, image_unet: UNet2DConditionModel) -> "VideoUNet":
        """Swap in another compatible image backbone (e.g. a DreamBooth fine-tune), keeping temporal layers."""
        missing, unexpected = self.load_image_state_dict(image_unet.state_dict())
        spatial_missing = [key for key in missing if key.startswith(SPATIAL_PREFIX)]
        if spatial_missing or unexpected:
            raise ValueError(
                "image UNet is not compatible with this VideoUNet: "
                f"missing {spatial_missing[:3]}, unexpected {unexpected[:3]}"
            )
        return self

    def save_temporal(self, directory: str | Path) -> Path:
        """Write the temporal weights alone to ``directory``: a :class:`TemporalWeights` model (config.json and
        safetensors), the one format temporal weights take, in a pipeline (``interpolator``) or on their own."""
        self.temporal_weights().save_pretrained(directory)
        return Path(directory)

    def load_temporal(self, directory: str | Path) -> "VideoUNet":
        """Load temporal weights written by :meth:`save_temporal`; they must match this model's layers."""
        return self._load_temporal_weights(_read_temporal_weights(directory))

    def _load_temporal_weights(self, weights: "TemporalWeights") -> "VideoUNet":
        state = weights.state_dict()
        expected = {key for key in self.state_dict() if not key.startswith(SPATIAL_PREFIX)}
        if set(state) != expected:
            raise ValueError(
                f"these temporal weights do not match this model's temporal layers: missing {sorted(expected - set(state))[:3]},"
                f" unexpected {sorted(set(state) - expected)[:3]}"
            )
        self.load_state_dict(state, strict=False)
        return self

    @classmethod
    def from_image_unet_and_temporal(
        cls, image_unet: UNet2DConditionModel, temporal_directory: str | Path
    ) -> "VideoUNet":
        """Attach saved temporal layers to any compatible image UNet (the paper's DreamBooth transfer)."""
        weights = _read_temporal_weights(temporal_directory)
        options = {key: value for key, value in _public_config(weights.config).items() if key != "unet_config"}
        return cls.from_image_unet(image_unet, **options)._load_temporal_weights(weights)

    # ----------------------------------------------------------------------------- forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor | None = None,
        *,
        class_labels: torch.Tensor | None = None,
        image_only_indicator: torch.Tensor | None = None,
        frame_positions: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        context_latents: torch.Tensor | None = None,
        frame_rate_regime: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> VideoUNetOutput | tuple[torch.Tensor]:
        """Predict noise (or v) for a noisy latent video.

        Args:
            sample: ``(B, T, C, H, W)`` noisy latents.
            timestep: scalar, ``(B,)`` or ``(B, T)``.
            encoder_hidden_states: per-video conditioning ``(B, L, D)``, repeated per frame inside.
            class_labels: ``(B,)`` for UNets with class embeddings.
            image_only_indicator: ``(B, T)`` bool; where true alpha is 1 (pure image model).
            frame_positions: ``(T,)`` frame indices for the temporal attention's embedding
                (default ``0..T-1``; interpolation passes the real time positions).
            context_mask: prediction models only: ``(B, T)`` or ``(B, T, 1, h, w)``, nonzero at the
                given (context) frames; ``None`` is S = 0, the unconditional branch.
            context_latents: ``(B, T, C, H, W)`` clean latents of the given frames (other frames
                are ignored: the model sees exact zeros there).
            frame_rate_regime: interpolation models only: ``(B,)`` long, the frame-rate regime of
                each video (e.g. 0: key rate -> x4, 1: x4 -> x16).
        Returns:
            :class:`VideoUNetOutput` with ``sample`` ``(B, T, C, H, W)``.
        """
        if sample.ndim != 5:
            raise ValueError(f"sample must be (B, T, C, H, W), got shape {tuple(sample.shape)}")
        batch, num_frames = sample.shape[:2]
        if image_only_indicator is not None and image_only_indicator.shape != (batch, num_frames):
            raise ValueError(
                f"image_only_indicator must be ({batch}, {num_frames}), got {tuple(image_only_indicator.shape)}"
            )
        context_features = None
        if self.context_encoder is not None:
            context_features = self.context_encoder(*masked_context(context_mask, context_latents, sample),
                                                    frame_rate_regime)
        elif context_mask is not None or context_latents is not None or frame_rate_regime is not None:
            raise ValueError("this VideoUNet has no context conditioning; make one with with_context_conditioning()")
        context = FrameContext(
            num_frames=num_frames,
            image_only_indicator=image_only_indicator,
            encoder_hidden_states=encoder_hidden_states,
            frame_positions=frame_positions,
            context_features=context_features,
        )
        # Latents from an AutoencoderKL can come channels-last strided; torch 2.13's CPU backward
        # through the temporal layers crashes (segfault) on such input, so normalise the layout.
        frames = rearrange(sample, "b t c h w -> (b t) c h w").contiguous()
        output = self.temporal.run_in_context(
            context,
            self.unet,
            frames,
            expand_timesteps(timestep, batch, num_frames, sample.device),
            _repeat_per_frame(encoder_hidden_states, num_frames),
            class_labels=_repeat_per_frame(class_labels, num_frames),
            return_dict=False,
        )[0]
        output = rearrange(output, "(b t) c h w -> b t c h w", t=num_frames)
        return VideoUNetOutput(sample=output) if return_dict else (output,)

    # ----------------------------------------------------------------------------- variants
    def temporal_weights(self) -> "TemporalWeights":
        """This model's temporal layers and context encoder alone (a copy), to ship beside a spatial UNet."""
        weights = TemporalWeights(**_public_config(self.config))
        weights.load_state_dict({key: value for key, value in self.state_dict().items()
                                 if not key.startswith(SPATIAL_PREFIX)})
        return weights.to(self.device) if weights.dtype == self.dtype else weights.to(self.device, self.dtype)

    def with_temporal_weights(self, weights: "TemporalWeights") -> "VideoUNet":
        """The VideoUNet of ``weights`` on this model's spatial UNet, sharing its tensors (no copy).

        The paper's interpolation model is such a variant: the frozen image backbone of the key-frame
        model with its own temporal layers and context encoder. Both must be on one device and dtype.
        """
        def comparable(config: dict) -> str:  # tuples and lists alike, as after a JSON round trip
            return json.dumps(_public_config(config), sort_keys=True, default=list)

        if comparable(weights.config["unet_config"]) != comparable(self.config.unet_config):
            raise ValueError("these temporal weights were trained on another spatial UNet (unet_config differs)")
        with torch.device("meta"):
            model = type(self)(**_public_config(weights.config))
        spatial = {key: value for key, value in self.state_dict().items() if key.startswith(SPATIAL_PREFIX)}
        model.load_state_dict({**spatial, **weights.state_dict()}, assign=True)
        left = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
        if left:
            raise RuntimeError(f"tensors not set when attaching temporal weights: {left[:3]}")
        return model.requires_grad_(False).eval()


class TemporalWeights(ModelMixin, ConfigMixin):
    """A :class:`VideoUNet`'s temporal layers and context encoder without its spatial UNet.

    Same config and same state-dict keys (``temporal.*``, ``context_encoder.*``) as the VideoUNet it
    came from, so it saves and loads as a diffusers model (a pipeline component: the interpolation
    model's weights ship beside the key-frame model and share its spatial UNet through
    :meth:`VideoUNet.with_temporal_weights`). The spatial UNet is only planned on the meta device.
    """

    @register_to_config
    @takes_temporal_options
    def __init__(self, unet_config: dict, **temporal_options: Any) -> None:
        super().__init__()
        with torch.device("meta"):
            spatial = UNet2DConditionModel.from_config(_public_config(unet_config))
        self.temporal, self.context_encoder = _video_layers(spatial, TemporalOptions(**temporal_options))


def _read_temporal_weights(directory: str | Path) -> TemporalWeights:
    if not (Path(directory) / "config.json").is_file():
        raise FileNotFoundError(f"no temporal weights at {directory} (write them with VideoUNet.save_temporal)")
    return TemporalWeights.from_pretrained(directory)
