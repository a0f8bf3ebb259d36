"""Temporal layers of Video LDM: the parts that turn an image model into a video model.

Every temporal layer follows a spatial layer and is mixed with it by an :class:`AlphaBlender`::

    out = alpha * spatial + (1 - alpha) * temporal(spatial),   alpha = sigmoid(m)

This is the one blending convention of the whole project (the public peers use both directions).
Temporal layers are residual with a zero-initialised last projection, so ``temporal(x) == x`` at
initialisation and an inflated model reproduces its image model exactly, whatever alpha is.

How the layers are attached: a :class:`TemporalInflation` holds the temporal layers and registers
one forward hook (a :class:`TemporalHook` object, not a closure) on each spatial module they
follow; the hook holds the owning ``TemporalInflation`` and a key, so ``copy.deepcopy`` of the
whole model maps it to the copy's own layers and ``torch.save(model)`` can pickle it. The video
model sets a :class:`FrameContext` only for the duration of its forward
(:meth:`TemporalInflation.run_in_context`); gradient-checkpoint recomputation during backward gets
the context of its own forward from :class:`FrameContextCheckpoint`, so no tensors stay on the
model between forwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange
from torch import nn

from .context import ContextFeatures, ContextProjection

# The most sequences one scaled_dot_product_attention call takes (a CUDA grid axis limit).
MAX_ATTENTION_SEQUENCES = 65535


@dataclass
class FrameContext:
    """What temporal layers need to know about the video batch being processed.

    Spatial layers only see ``(B*T, C, H, W)``; the owning model sets this during each forward so
    temporal layers can recover ``(B, T)``. ``encoder_hidden_states`` is per video ``(B, L, D)``;
    ``image_only_indicator`` is ``(B, T)`` bool; ``frame_positions`` is ``(T,)``;
    ``context_features`` are the :class:`~videoldm.models.context.ContextEncoder`'s feature maps
    ``(B*T, D, h, w)`` keyed by ``(h, w)`` (prediction/interpolation models only).
    """

    num_frames: int
    image_only_indicator: torch.Tensor | None = None
    encoder_hidden_states: torch.Tensor | None = None
    frame_positions: torch.Tensor | None = None
    context_features: ContextFeatures | None = None

    def __post_init__(self) -> None:
        # Decided once per forward (one host sync) rather than in every layer.
        self.all_image_only = bool(self.image_only_indicator is not None and self.image_only_indicator.all())


class AlphaBlender(nn.Module):
    """Learned mix of a spatial and a temporal path: ``alpha*spatial + (1-alpha)*temporal``."""

    def __init__(self, alpha_init: float = 0.5) -> None:
        super().__init__()
        if not 0.0 < alpha_init < 1.0:
            raise ValueError(f"alpha_init must lie strictly between 0 and 1, got {alpha_init}")
        self.mix_logit = nn.Parameter(torch.tensor(math.log(alpha_init / (1.0 - alpha_init))))

    def alpha(self, image_only_indicator: torch.Tensor | None = None) -> torch.Tensor:
        """Return alpha: a scalar, or ``(B, T)`` with 1 where ``image_only_indicator`` is true."""
        alpha = torch.sigmoid(self.mix_logit)
        if image_only_indicator is None:
            return alpha
        return torch.where(image_only_indicator.bool(), torch.ones_like(alpha), alpha)

    def forward(
        self,
        spatial: torch.Tensor,
        temporal: torch.Tensor,
        image_only_indicator: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Blend two ``(B*T, ...)`` tensors; ``image_only_indicator`` is ``(B, T)`` bool."""
        alpha = self.alpha(image_only_indicator)
        if alpha.ndim:
            alpha = alpha.reshape(-1, *([1] * (spatial.ndim - 1))).to(spatial.dtype)
        return alpha * spatial + (1.0 - alpha) * temporal


def sinusoidal_embedding(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (frame) positions ``(N,)`` -> ``(N, dim)`` (cos half, then sin half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=positions.device) / half)
    angles = positions.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def _group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    groups = math.gcd(channels, max_groups)
    return nn.GroupNorm(groups, channels, eps=1e-6)


class TemporalAttention(nn.Module):
    """Self-attention across frames at every spatial position, with frame-index embeddings.

    Input and output are ``(B*T, C, H, W)``; attention runs on ``(B*H*W, T, C)``. Optional
    cross-attention to the per-video conditioning ``(B, L, D)``; then a GEGLU-free feed-forward.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int | None = None,
        head_dim: int = 64,
        cross_attention_dim: int | None = None,
        frame_embedding_dim: int | None = None,
        ff_mult: int = 4,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.num_heads = num_heads or max(1, channels // head_dim)
        if channels % self.num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({self.num_heads})")
        self.frame_embedding_dim = frame_embedding_dim or channels
        self.frame_mlp = nn.Sequential(
            nn.Linear(self.frame_embedding_dim, channels), nn.SiLU(), nn.Linear(channels, channels)
        )
        self.norm_in = _group_norm(channels)
        self.proj_in = nn.Linear(channels, channels)
        self.norm_self = nn.LayerNorm(channels)
        self.to_qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.self_out = nn.Linear(channels, channels)
        self.cross_attention_dim = cross_attention_dim
        if cross_attention_dim is not None:
            self.norm_cross = nn.LayerNorm(channels)
            self.to_q_cross = nn.Linear(channels, channels, bias=False)
            self.to_kv_cross = nn.Linear(cross_attention_dim, 2 * channels, bias=False)
            self.cross_out = nn.Linear(channels, channels)
        self.norm_ff = nn.LayerNorm(channels)
        self.ff = nn.Sequential(
            nn.Linear(channels, ff_mult * channels), nn.GELU(), nn.Linear(ff_mult * channels, channels)
        )
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        heads = self.num_heads
        query, key, value = (rearrange(x, "n s (h d) -> n h s d", h=heads) for x in (query, key, value))
        # CUDA's attention kernels put the sequence count on a grid axis of at most 65535 blocks
        # ("CUDA error: invalid argument" beyond), and temporal self-attention has one sequence per
        # pixel: 16 clips of 64x64 are already 65536. Chunks of sequences are independent.
        if query.shape[0] <= MAX_ATTENTION_SEQUENCES:
            out = F.scaled_dot_product_attention(query, key, value)  # no copy through cat in the usual case
        else:
            out = torch.cat([F.scaled_dot_product_attention(*chunk) for chunk in
                             zip(*(x.split(MAX_ATTENTION_SEQUENCES) for x in (query, key, value)))])
        return rearrange(out, "n h s d -> n s (h d)")

    def forward(
        self, hidden_states: torch.Tensor, context: FrameContext, temb: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B*T, C, H, W)`` -> same shape. ``temb`` is unused (uniform temporal-layer signature)."""
        num_frames, encoder_hidden_states = context.num_frames, context.encoder_hidden_states
        frame_positions = context.frame_positions
        batch_frames, channels, height, width = hidden_states.shape
        batch = batch_frames // num_frames
        if frame_positions is None:
            frame_positions = torch.arange(num_frames, device=hidden_states.device)
        frame_embedding = self.frame_mlp(
            sinusoidal_embedding(frame_positions, self.frame_embedding_dim).to(hidden_states.dtype)
        )

        x = self.norm_in(hidden_states)
        x = rearrange(x, "(b t) c h w -> (b h w) t c", t=num_frames)
        x = self.proj_in(x) + frame_embedding[None]

        q, k, v = self.to_qkv(self.norm_self(x)).chunk(3, dim=-1)
        x = x + self.self_out(self._attend(q, k, v))
        if self.cross_attention_dim is not None and encoder_hidden_states is not None:
            # Every position of a video attends to the same (B, L, D) conditioning, so the queries of
            # a video form one sequence (b, h*w*t): keys and values are projected once per video
            # instead of once per position (at SD-1.5 sizes that projection dominated the layer).
            q = self.to_q_cross(self.norm_cross(x)).reshape(batch, height * width * num_frames, channels)
            k, v = self.to_kv_cross(encoder_hidden_states).chunk(2, dim=-1)
            x = x + self.cross_out(self._attend(q, k, v)).reshape(batch * height * width, num_frames, channels)
        x = x + self.ff(self.norm_ff(x))
        x = self.proj_out(x)

        x = rearrange(x, "(b h w) t c -> (b t) c h w", b=batch, h=height, w=width)
        return hidden_states + x


def same_padding(kernel_size: Sequence[int]) -> tuple[int, ...]:
    """Padding that keeps every dimension of a ``(t, h, w)`` convolution; the sizes must be odd and positive."""
    kernel_size = tuple(kernel_size)
    if len(kernel_size) != 3 or any(not isinstance(k, int) or k < 1 or k % 2 == 0 for k in kernel_size):
        # An even size cannot be padded symmetrically: the output would gain a frame (or a pixel).
        raise ValueError(f"kernel_size must be three odd positive integers (t, h, w), got {kernel_size}")
    return tuple(k // 2 for k in kernel_size)


class TemporalConvBlock(nn.Module):
    """Residual block of (GroupNorm, SiLU, Conv3d) x2 with the diffusion-time embedding in between.

    Input and output are ``(B*T, C, H, W)``; the convolutions run on ``(B, C, T, H, W)``.
    ``kernel_size`` is ``(3, 3, 3)`` as in the paper, or ``(3, 1, 1)`` for a purely temporal block.
    """

    def __init__(
        self,
        channels: int,
        temb_channels: int | None = None,
        kernel_size: tuple[int, int, int] = (3, 3, 3),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.channels = channels
        padding = same_padding(kernel_size)
        self.norm1 = _group_norm(channels)
        self.conv1 = nn.Conv3d(channels, channels, kernel_size, padding=padding)
        self.time_proj = nn.Linear(temb_channels, channels) if temb_channels else None
        self.norm2 = _group_norm(channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv3d(channels, channels, kernel_size, padding=padding)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(
        self, hidden_states: torch.Tensor, context: FrameContext, temb: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B*T, C, H, W)`` -> same shape; ``temb`` is the per-frame time embedding ``(B*T, D)``."""
        num_frames = context.num_frames
        x = rearrange(hidden_states, "(b t) c h w -> b c t h w", t=num_frames)
        h = conv_video(self.conv1, F.silu(self.norm1(x)))
        if self.time_proj is not None and temb is not None:
            time = self.time_proj(F.silu(temb))
            h = h + rearrange(time, "(b t) c -> b c t 1 1", t=num_frames)
        h = conv_video(self.conv2, self.dropout(F.silu(self.norm2(h))))
        return rearrange(x + h, "b c t h w -> (b t) c h w")


def conv_video(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """``conv`` on ``(B, C, T, H, W)``; a purely temporal ``(k, 1, 1)`` kernel runs as a 2D convolution.

    torch's CPU Conv3d has no fast kernel for a ``(k, 1, 1)`` shape (up to 1.8x slower for a block
    at SD-1.5 widths, docs/results/speed.md); the same weights as a ``(k, 1)`` Conv2d over
    ``(B, C, T, H*W)`` compute the same sums, with no copy of the input.
    """
    if conv.kernel_size[1:] != (1, 1):
        return conv(x)
    batch, _, frames, height, width = x.shape
    weight = conv.weight.squeeze(-1)  # (C_out, C_in, k, 1)
    out = F.conv2d(x.reshape(batch, -1, frames, height * width), weight, conv.bias, padding=(conv.padding[0], 0))
    return out.reshape(batch, -1, frames, height, width)


class BlendedTemporalLayer(nn.Module):
    """A temporal layer and its :class:`AlphaBlender`, applied to a spatial layer's output.

    With ``context_channels`` the layer's input also gets the context features of its resolution
    through a zero-initialised :class:`~videoldm.models.context.ContextProjection`.
    """

    def __init__(
        self, layer: TemporalConvBlock | TemporalAttention, alpha_init: float = 0.5, context_channels: int | None = None
    ) -> None:
        super().__init__()
        self.layer = layer
        self.blender = AlphaBlender(alpha_init)
        self.context_projection = ContextProjection(context_channels, layer.channels) if context_channels else None

    def forward(
        self, spatial: torch.Tensor, context: FrameContext, temb: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B*T, C, H, W)`` -> same shape: ``alpha*spatial + (1-alpha)*layer(spatial [+ context])``."""
        if context.all_image_only:
            # alpha is 1 for every frame, so the temporal path contributes exactly nothing: skip it.
            return spatial
        layer_input = spatial
        if self.context_projection is not None and context.context_features is not None:
            layer_input = self.context_projection(spatial, context.context_features)
        return self.blender(spatial, self.layer(layer_input, context, temb), context.image_only_indicator)


def temporal_key(spatial_path: str) -> str:
    """ModuleDict key of the temporal layers that follow the spatial module at ``spatial_path``."""
    return spatial_path.replace(".", "__")


def _replace_main_output(output, new_hidden_states: torch.Tensor):
    # diffusers modules return a tensor, a tuple (return_dict=False) or an output dataclass.
    if isinstance(output, torch.Tensor):
        return new_hidden_states
    if isinstance(output, tuple):
        return (new_hidden_states, *output[1:])
    output.sample = new_hidden_states
    return output


def _main_output(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output.sample


_Result = TypeVar("_Result")


class TemporalHook:
    """Forward hook running ``inflation[key]``'s temporal layers on one spatial module's output.

    An object rather than a closure: ``copy.deepcopy`` of the whole model maps ``inflation`` to the
    copy's own temporal layers (through the copy's memo), and pickling finds the class by name.
    """

    def __init__(self, inflation: "TemporalInflation", key: str) -> None:
        self.inflation = inflation
        self.key = key

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """Replace the main output ``(B*T, C, H, W)`` by the blended temporal layers' output."""
        context = self.inflation.frame_context
        if context is None:
            raise RuntimeError(
                "frame_context is not set: call the video model, not its spatial network, and enable "
                "gradient checkpointing on the video model, not on its spatial network"
            )
        temb = args[1] if len(args) > 1 else kwargs.get("temb")
        hidden_states = _main_output(output)
        for layer in self.inflation[self.key]:
            hidden_states = layer(hidden_states, context, temb)
        return _replace_main_output(output, hidden_states)


class TemporalInflation(nn.ModuleDict):
    """Temporal layers attached after spatial modules of a frozen image network, by forward hooks.

    The spatial network keeps its exact module tree (so its state-dict keys are unchanged); this
    dict maps :func:`temporal_key` of a spatial module path to an ``nn.ModuleList`` of temporal
    layers applied in order after that module, by a :class:`TemporalHook`. :attr:`frame_context`
    is set only while the owner's forward (:meth:`run_in_context`) or a checkpointed recomputation
    (:class:`FrameContextCheckpoint`) runs; it is None otherwise.
    """

    def __init__(self, layers: dict[str, list[BlendedTemporalLayer]]) -> None:
        super().__init__({key: nn.ModuleList(value) for key, value in layers.items()})
        self.frame_context: FrameContext | None = None
        # Pickled and deep-copied with the model: a handle's state names the hook dict it removes
        # from, and unpickling advances torch's hook-id counter past it, so later hooks never collide.
        self._hook_handles: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self, spatial_root: nn.Module) -> None:
        """Register hooks on ``spatial_root``'s modules named by the temporal-layer keys (replacing earlier ones)."""
        for handle in self._hook_handles:
            handle.remove()
        modules = {temporal_key(name): module for name, module in spatial_root.named_modules()}
        missing = sorted(set(self.keys()) - set(modules))
        if missing:
            raise ValueError(f"spatial network has no modules for temporal layers {missing[:5]}")
        self._hook_handles = [
            modules[key].register_forward_hook(TemporalHook(self, key), with_kwargs=True) for key in self.keys()
        ]

    def run_in_context(
        self, context: FrameContext | None, function: Callable[..., _Result], *args: Any, **kwargs: Any
    ) -> _Result:
        """Call ``function(*args, **kwargs)`` with :attr:`frame_context` set to ``context``, restored after."""
        previous, self.frame_context = self.frame_context, context
        try:
            return function(*args, **kwargs)
        finally:
            # The context holds the batch's conditioning tensors: keeping it would pin them in memory
            # and hand a stale (B, T) to any later direct call of the spatial network.
            self.frame_context = previous


class FrameContextCheckpoint:
    """diffusers' ``gradient_checkpointing_func`` for a spatial network with temporal hooks.

    Non-reentrant checkpointing recomputes a block during backward, after the forward has cleared
    :attr:`TemporalInflation.frame_context`. The context current at forward time is bound into the
    checkpointed function, so the recomputation sees the context of its own forward (even when
    other forwards ran in between), and the context lives exactly as long as the autograd graph
    that may recompute it. ``checkpoint_function`` is a user's ``(module, *args)`` function;
    by default ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``.
    """

    def __init__(
        self, inflation: TemporalInflation, checkpoint_function: Callable[..., Any] | None = None
    ) -> None:
        self.inflation = inflation
        self.checkpoint_function = checkpoint_function

    def __call__(self, module: nn.Module, *args: Any) -> Any:
        """Run ``module(*args)`` checkpointed, with this forward's frame context."""
        bound = partial(self.inflation.run_in_context, self.inflation.frame_context, module)
        if self.checkpoint_function is None:
            return torch.utils.checkpoint.checkpoint(bound, *args, use_reentrant=False)
        return self.checkpoint_function(bound, *args)


class InflatedModelMixin:
    """Parameter handling shared by models made of a spatial network plus a :class:`TemporalInflation`.

    The model keeps its image network in the attribute named by ``spatial_attribute`` and its
    temporal layers in ``self.temporal``; the paper trains the latter only. Gradient checkpointing
    goes through :class:`FrameContextCheckpoint`.
    """

    spatial_attribute: str
    temporal: TemporalInflation

    def video_modules(self) -> list[nn.Module]:
        """The modules added to the image network (trained; saved by ``save_temporal``)."""
        return [self.temporal]

    def temporal_parameters(self) -> Iterator[nn.Parameter]:
        """The trainable video parameters: temporal layers, their blend logits and any context encoder."""
        return (parameter for module in self.video_modules() for parameter in module.parameters())

    def spatial_parameters(self) -> Iterator[nn.Parameter]:
        """The image network's parameters."""
        return getattr(self, self.spatial_attribute).parameters()

    def freeze_spatial(self):
        """Stop gradients to the image network; the temporal layers stay trainable. Returns ``self``."""
        getattr(self, self.spatial_attribute).requires_grad_(False)
        for module in self.video_modules():
            module.requires_grad_(True)
        return self

    def enable_gradient_checkpointing(self, gradient_checkpointing_func: Callable[..., Any] | None = None) -> None:
        """diffusers' gradient checkpointing of the spatial blocks, recomputing them with their frame context."""
        super().enable_gradient_checkpointing(FrameContextCheckpoint(self.temporal, gradient_checkpointing_func))
