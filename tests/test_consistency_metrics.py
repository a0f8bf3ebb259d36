"""PSNR, SSIM, flicker and warping error against closed forms and known properties."""

import math

import torch

from videoldm.metrics.consistency import backward_warp, flicker_error, psnr, ssim, warping_error


def test_psnr_closed_form():
    target = torch.zeros(2, 3, 1, 8, 8)
    prediction = target + 0.1  # MSE 0.01 everywhere -> 20 dB
    assert torch.allclose(psnr(prediction, target), torch.full((2, 3), 20.0))
    assert torch.allclose(psnr(prediction, target, peak=2.0), torch.full((2, 3), 20.0 + 20 * math.log10(2)))
    assert psnr(target, target).min() > 100


def test_ssim_identity_and_known_cases():
    generator = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 4, 1, 16, 16, generator=generator)
    assert torch.allclose(ssim(frames, frames), torch.ones(2, 4), atol=1e-6)
    # A constant offset keeps the structure and contrast terms at 1: only the luminance term drops,
    # (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1) with mu_y = mu_x + d, per window.
    flat = torch.full((1, 1, 16, 16), 0.5)
    shifted = flat + 0.2
    expected = (2 * 0.5 * 0.7 + 1e-4) / (0.25 + 0.49 + 1e-4)
    assert abs(ssim(shifted, flat).item() - expected) < 1e-5
    noisy = (frames + 0.3 * torch.randn(frames.shape, generator=generator)).clamp(0, 1)
    score = ssim(noisy, frames)
    assert (score < 0.9).all() and (score > -1).all()
    assert torch.allclose(ssim(noisy, frames), ssim(frames, noisy))  # symmetric


def test_flicker_error_ignores_static_errors_and_sees_flicker():
    target = torch.rand(1, 6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    assert flicker_error(target + 0.1, target).item() < 1e-6  # the same offset in every frame
    flickering = target.clone()
    flickering[:, 3] += 0.2
    assert abs(flicker_error(flickering, target).item() - 2 * 0.2 / 5) < 1e-5  # two of five steps off by 0.2


def test_backward_warp_convention_and_warping_error_of_a_shifting_pattern():
    pattern = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    flow = torch.zeros(1, 2, 12, 12)
    flow[:, 0], flow[:, 1] = 2.0, -1.0  # output (i, j) reads input (i - 1, j + 2)
    warped = backward_warp(pattern, flow)
    assert torch.allclose(warped[..., 1:, :10], pattern[..., :11, 2:], atol=1e-6)
    assert (warped[..., :, 10:] == 0).all()  # sources beyond the right edge

    # Frame t+1 is frame t moved 1 px right, so its backward flow is dx = -1 everywhere.
    frames = torch.stack([pattern.roll(t, dims=-1) for t in range(4)], dim=1)  # (1, 4, 1, 12, 12)
    flow = torch.zeros(1, 3, 2, 12, 12)
    flow[:, :, 0] = -1.0
    valid = torch.ones(1, 3, 12, 12, dtype=torch.bool)
    valid[..., 0] = False  # the wrapped-around column comes from outside the frame
    assert warping_error(frames, flow, valid).item() < 1e-6
    assert warping_error(frames, torch.zeros_like(flow), valid).item() > 0.1
    flickering = frames.clone()
    flickering[:, 2] += 0.3  # one frame off: the pairs into and out of it
    assert abs(warping_error(flickering, flow, valid).item() - 2 * 0.3 / 3) < 1e-5
