"""LPIPS-style perceptual distance from local VGG16 weights (nothing is downloaded).

The distance of Zhang et al. (2018) on a VGG16 backbone: images are shifted and scaled to the
backbone's input statistics, features are taken after the last ReLU of each of the five stages,
unit-normalised over channels, their squared differences weighted per channel, averaged over space
and summed over stages. The per-channel weights are LPIPS's learned linear layers when their file
is given (the ``lpips`` package ships it as ``lpips/weights/v0.1/vgg.pth``), uniform otherwise.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# torchvision's VGG16 ``features``: channel counts, "M" for max-pooling.
_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# Index (in ``features``) of the ReLU ending each stage: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
_STAGE_ENDS = (3, 8, 15, 22, 29)
_STAGE_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS's input normalisation for [-1, 1] images.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)

VGG16_SOURCE = "torchvision's ImageNet VGG16 weights, vgg16-397923af.pth (download.pytorch.org/models/)"
LPIPS_SOURCE = "the lpips package's lpips/weights/v0.1/vgg.pth (`pip download --no-deps lpips`, unzip)"


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for entry in _VGG16_LAYOUT:
        if entry == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, entry, 3, padding=1), nn.ReLU(inplace=False)]
            channels = entry
    return nn.Sequential(*layers)


def _load_weights(path: str | Path, source: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"perceptual-loss weights {path} not found: it should be {source}")
    return torch.load(path, map_location="cpu", weights_only=True)


class PerceptualLoss(nn.Module):
    """``(N, C, H, W), (N, C, H, W)`` in [-1, 1] (C in {1, 3}) -> per-image distance ``(N,)``; frozen."""

    def __init__(self, channel_weights: list[torch.Tensor] | None = None) -> None:
        super().__init__()
        self.features = _vgg16_features()
        weights = channel_weights or [torch.full((c,), 1.0 / c) for c in _STAGE_CHANNELS]
        for index, (weight, channels) in enumerate(zip(weights, _STAGE_CHANNELS)):
            if weight.numel() != channels:
                raise ValueError(f"stage {index} needs {channels} channel weights, got {weight.numel()}")
            self.register_buffer(f"channel_weight{index}", weight.reshape(1, channels, 1, 1).float())
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    @classmethod
    def from_files(cls, vgg16_weights: str | Path, lpips_weights: str | Path | None = None) -> "PerceptualLoss":
        """Backbone from torchvision's VGG16 state dict; channel weights from LPIPS's ``vgg.pth`` if given."""
        state = _load_weights(vgg16_weights, VGG16_SOURCE)
        features = {key[len("features."):]: value for key, value in state.items() if key.startswith("features.")}
        channel_weights = None
        if lpips_weights is not None:
            lpips = _load_weights(lpips_weights, LPIPS_SOURCE)
            channel_weights = [lpips[f"lin{index}.model.1.weight"].flatten() for index in range(len(_STAGE_CHANNELS))]
        model = cls(channel_weights)
        model.features.load_state_dict(features)
        return model

    def train(self, mode: bool = True) -> "PerceptualLoss":
        # A frozen metric network: batch-independent and deterministic whatever mode its owner is in.
        return super().train(False)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Distance per image ``(N,)``; gradients flow to ``prediction``."""
        if prediction.shape != target.shape or prediction.ndim != 4 or prediction.shape[1] not in (1, 3):
            raise ValueError(f"expected two (N, 1|3, H, W) batches, got {tuple(prediction.shape)} and {tuple(target.shape)}")
        both = torch.cat([prediction, target]).to(self.shift.dtype)
        if both.shape[1] == 1:
            both = both.expand(-1, 3, -1, -1)
        hidden = (both - self.shift) / self.scale
        distance = torch.zeros(prediction.shape[0], device=prediction.device, dtype=hidden.dtype)
        start = 0
        for stage, end in enumerate(_STAGE_ENDS):
            hidden = self.features[start : end + 1](hidden)
            start = end + 1
            normalised = hidden / (hidden.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            ours, theirs = normalised.chunk(2)
            weighted = (ours - theirs).pow(2) * getattr(self, f"channel_weight{stage}")
            distance = distance + weighted.sum(dim=1).mean(dim=(1, 2))
        return distance
