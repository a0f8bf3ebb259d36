"""PSNR, SSIM and flicker error against closed forms and known properties."""

import math

import torch

from videoldm.metrics.consistency import flicker_error, psnr, ssim


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
