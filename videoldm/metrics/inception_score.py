"""Video Inception Score with C3D, as in the UCF-101 protocol of TGAN / TGANv2 / Video LDM.

Clips of 16 frames are resized to 112x112, mapped to [0, 255] pixels (RGB), the dataset's mean clip
is subtracted, and C3D (trained on UCF-101, 101 classes) gives class probabilities whose
Inception Score is reported. The C3D weights are given by path, a state dict with the usual names
(``conv1 ... conv5b``, ``fc6 ... fc8``) and optionally the mean clip under the key ``"mean"``,
loaded with ``torch.load(weights_only=True)``; nothing is downloaded. Note that C3D checkpoints
converted from Caffe may expect BGR channel order; convert such a checkpoint's ``conv1`` weights
(flip input channels) before use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ._weights import require_file

__all__ = ["C3D", "inception_score_from_probs", "inception_score", "load_c3d"]

C3D_FRAMES = 16
C3D_RESOLUTION = 112


def inception_score_from_probs(probs: torch.Tensor | np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Inception Score of class probabilities (N, K): exp E_x[KL(p(y|x) || p(y))].

    The samples are cut into ``splits`` consecutive parts at ``i * N // splits`` (every sample is
    used, parts differ in size by at most one, as in Salimans et al.'s reference code); returns the
    mean and (population) standard deviation of the per-part scores, in float64.
    """
    p = probs.detach().cpu().double().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs, np.float64)
    if p.ndim != 2 or not 1 <= splits <= p.shape[0]:
        raise ValueError(f"probs must be (N, K) with N >= splits={splits} >= 1, got shape {p.shape}")
    n = p.shape[0]
    scores = []
    for i in range(splits):
        chunk = p[i * n // splits:(i + 1) * n // splits]
        marginal = chunk.mean(axis=0, keepdims=True)
        # 0 * log 0 = 0: where p is zero the term vanishes.
        kl = np.where(chunk > 0, chunk * (np.log(np.clip(chunk, 1e-300, None)) - np.log(np.clip(marginal, 1e-300, None))), 0.0)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


class C3D(nn.Module):
    """C3D (Tran et al. 2015): (B, 3, 16, 112, 112) mean-subtracted pixels -> (B, num_classes) logits."""

    def __init__(self, num_classes: int = 101) -> None:
        super().__init__()
        widths = [("conv1", 3, 64), ("conv2", 64, 128), ("conv3a", 128, 256), ("conv3b", 256, 256),
                  ("conv4a", 256, 512), ("conv4b", 512, 512), ("conv5a", 512, 512), ("conv5b", 512, 512)]
        for name, cin, cout in widths:
            self.add_module(name, nn.Conv3d(cin, cout, 3, padding=1))
        self.fc6 = nn.Linear(8192, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool3d(F.relu(self.conv1(x)), (1, 2, 2))
        x = F.max_pool3d(F.relu(self.conv2(x)), 2)
        x = F.max_pool3d(F.relu(self.conv3b(F.relu(self.conv3a(x)))), 2)
        x = F.max_pool3d(F.relu(self.conv4b(F.relu(self.conv4a(x)))), 2)
        x = F.max_pool3d(F.relu(self.conv5b(F.relu(self.conv5a(x)))), 2, padding=(0, 1, 1))
        x = F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))
        return self.fc8(x)


def load_c3d(weights: str | Path, device: torch.device | str = "cpu") -> tuple[C3D, torch.Tensor | None]:
    """C3D in eval mode and the mean clip (3, 16, 112, 112) in pixels if the file holds one."""
    path = require_file(weights, "give the path of a UCF-101 C3D state dict (conv1..fc8, optional 'mean')")
    state = dict(torch.load(path, map_location="cpu", weights_only=True))
    mean = state.pop("mean", None)
    model = C3D(num_classes=state["fc8.weight"].shape[0])
    model.load_state_dict(state)
    return model.eval().requires_grad_(False).to(device), mean


def _c3d_input(videos: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
    n = videos.shape[0]
    clips = videos[:, :C3D_FRAMES].float()
    if clips.shape[2] == 1:
        clips = clips.expand(-1, -1, 3, -1, -1)
    frames = rearrange(clips, "n t c h w -> (n t) c h w")
    frames = F.interpolate(frames, size=(C3D_RESOLUTION,) * 2, mode="bilinear", align_corners=False)
    x = rearrange((frames.clamp(-1, 1) + 1) * 127.5, "(n t) c h w -> n c t h w", n=n)
    return x - mean.to(x) if mean is not None else x


@torch.inference_mode()
def inception_score(videos: torch.Tensor, weights: str | Path | nn.Module, *, mean: torch.Tensor | None = None,
                    splits: int = 10, batch_size: int = 8, device: torch.device | str = "cpu") -> tuple[float, float]:
    """Video IS of (N, T, C, H, W) videos in [-1, 1] with T >= 16; returns (mean, std) over splits.

    ``weights``: a C3D state-dict path (see module docstring) or a loaded network; ``mean``: the
    (3, 16, 112, 112) pixel mean clip, overriding one stored in the weights file.
    """
    if videos.ndim != 5 or videos.shape[1] < C3D_FRAMES:
        raise ValueError(f"videos must be (N, T>={C3D_FRAMES}, C, H, W), got {tuple(videos.shape)}")
    if isinstance(weights, nn.Module):
        model = weights.eval()
    else:
        model, stored_mean = load_c3d(weights, device)
        mean = stored_mean if mean is None else mean
    dev = next(model.parameters()).device
    probs = [torch.softmax(model(_c3d_input(videos[s:s + batch_size], mean).to(dev)).double(), dim=-1).cpu()
             for s in range(0, videos.shape[0], batch_size)]
    return inception_score_from_probs(torch.cat(probs), splits)
