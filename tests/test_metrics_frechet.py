import numpy as np
import pytest
import scipy.linalg
import torch

from videoldm.metrics import FeatureStatistics, frechet_distance


def _random_cov(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, 2 * d))
    return a @ a.T / (2 * d)


def test_diagonal_closed_form():
    # For commuting (diagonal) covariances tr((S1 S2)^1/2) = sum sqrt(a_i b_i).
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_scaled_gaussians_closed_form():
    # N(0, s^2 S) vs N(m, t^2 S): |m|^2 + (s - t)^2 tr(S).
    rng = np.random.default_rng(1)
    cov, m = _random_cov(rng, 8), rng.standard_normal(8)
    expected = m @ m + (1.5 - 0.5) ** 2 * np.trace(cov)
    assert frechet_distance(np.zeros(8), 1.5**2 * cov, m, 0.5**2 * cov) == pytest.approx(expected, rel=1e-10)


def test_matches_scipy_sqrtm_formula_and_is_symmetric():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    s1, s2 = _random_cov(rng, 16), _random_cov(rng, 16)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    d12 = frechet_distance(mu1, s1, mu2, s2)
    assert d12 == pytest.approx(reference, rel=1e-9)
    assert d12 == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-12)


def test_zero_for_equal_sets_even_when_rank_deficient():
    feats = np.random.default_rng(3).standard_normal((5, 32))  # N < D: singular covariance
    stats = FeatureStatistics().update(feats)
    assert abs(frechet_distance(stats.mean, stats.covariance, stats.mean, stats.covariance)) < 1e-9


def test_streaming_equals_batch_and_numpy():
    feats = torch.randn(50, 7, dtype=torch.float64)
    streamed = FeatureStatistics()
    for chunk in feats.split(8):
        streamed.update(chunk)
    assert streamed.count == 50
    np.testing.assert_allclose(streamed.mean, feats.mean(0).numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(streamed.covariance, np.cov(feats.numpy(), rowvar=False), rtol=1e-10, atol=1e-13)


def test_merge_equals_union():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((10, 5)), rng.standard_normal((13, 5)) + 2
    merged = FeatureStatistics().update(a).merge(FeatureStatistics().update(b))
    union = FeatureStatistics().update(np.concatenate([a, b]))
    np.testing.assert_allclose(merged.mean, union.mean, rtol=1e-12)
    np.testing.assert_allclose(merged.covariance, union.covariance, rtol=1e-12)
    assert FeatureStatistics().merge(merged).count == 23


def test_too_few_samples_and_bad_shapes():
    stats = FeatureStatistics().update(np.ones((1, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        stats.covariance
    with pytest.raises(ValueError, match="at least 1"):
        FeatureStatistics().mean
    with pytest.raises(ValueError, match="dimension"):
        stats.update(np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        stats.update(np.ones(3))
