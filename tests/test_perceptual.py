"""LPIPS-style perceptual loss from local VGG16 weights (random weights here: no download)."""

from __future__ import annotations

import pytest
import torch

from videoldm.training.perceptual import PerceptualLoss


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("perceptual")
    backbone = PerceptualLoss().features
    # torchvision's file layout: the backbone under "features.", plus a classifier the loss ignores
    state = {f"features.{key}": value for key, value in backbone.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)
    torch.save(state, directory / "vgg16.pth")
    lpips = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(lpips, directory / "vgg.pth")
    return directory


def test_distance_is_zero_for_equal_images_positive_otherwise_and_differentiable(weight_files):
    loss = PerceptualLoss.from_files(weight_files / "vgg16.pth", weight_files / "vgg.pth")
    generator = torch.Generator().manual_seed(1)
    target = torch.rand(3, 1, 32, 32, generator=generator) * 2 - 1
    prediction = (target + 0.3 * torch.randn(3, 1, 32, 32, generator=generator)).clamp(-1, 1).requires_grad_(True)
    assert loss(target, target).abs().max() < 1e-6
    distance = loss(prediction, target)
    assert distance.shape == (3,) and (distance > 0).all()
    distance.sum().backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss.parameters())


def test_missing_weight_file_names_it_and_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vgg16\.pth.*vgg16-397923af"):
        PerceptualLoss.from_files(tmp_path / "vgg16.pth")
