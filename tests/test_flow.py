"""The warping error on real footage along OpenCV's DIS flow: zero for a pure translation warped exactly, positive for
flicker, and the flow of a translated texture is that translation."""

from __future__ import annotations

import pytest
import torch

from videoldm.metrics.consistency import warping_error

pytest.importorskip("cv2")

from videoldm.metrics.flow import dis_flow, flow_warping_error, video_flow  # noqa: E402


def panning(frames: int = 5, shift: int = 2) -> torch.Tensor:
    """A smooth random texture moving ``shift`` pixels right per frame: ``(frames, 3, 48, 64)`` in [0, 1]."""
    texture = torch.rand(1, 3, 16, 40, generator=torch.Generator().manual_seed(0))
    texture = torch.nn.functional.interpolate(texture, size=(48, 120), mode="bicubic", align_corners=False)[0].clamp(0, 1)
    return torch.stack([texture[:, :, 40 - shift * t : 104 - shift * t] for t in range(frames)])


def test_a_pure_translation_warped_exactly_has_zero_warping_error():
    video = panning()
    flow = torch.zeros(1, 4, 2, 48, 64)
    flow[:, :, 0] = -2.0  # frame t+1 at x shows frame t at x - 2
    valid = torch.ones(1, 4, 48, 64, dtype=torch.bool)
    valid[..., :2] = False  # entering from the left edge
    assert warping_error(video[None], flow, valid).item() < 1e-6  # float rounding of the resampling grid
    flickering = video * torch.tensor([1.0, 0.8, 1.0, 0.8, 1.0])[:, None, None, None]
    assert warping_error(flickering[None], flow, valid).item() > 0.01


def test_dis_flow_finds_the_translation():
    video = panning()
    flow = dis_flow(video[1], video[0])  # backward: frame 1 -> frame 0
    interior = flow[:, 8:-8, 8:-8]
    assert torch.allclose(interior[0].median(), torch.tensor(-2.0), atol=0.1)
    assert interior[1].abs().median() < 0.1
    backward, valid = video_flow(video)
    assert backward.shape == (4, 2, 48, 64) and valid.shape == (4, 48, 64)
    assert valid[:, :, 8:].float().mean() > 0.9 and not valid[:, :, 0].any()  # the entering column has no source


def test_the_flow_warping_error_is_near_zero_for_motion_and_positive_for_flicker():
    video = panning()
    flickering = video * torch.tensor([1.0, 0.8, 1.0, 0.8, 1.0])[:, None, None, None]
    steady, flicker = flow_warping_error(torch.stack([video, flickering]), torch.stack([video, video]))
    assert steady < 0.01 and flicker > 5 * steady
    assert flow_warping_error(video[None]).item() < 0.01  # a video's own flow
