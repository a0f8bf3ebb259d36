"""Fréchet distance between Gaussians fitted to feature sets (the core of FID and FVD)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["FeatureStatistics", "frechet_distance"]

ArrayLike = np.ndarray | torch.Tensor


def _as_float64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


class FeatureStatistics:
    """Streaming mean and covariance of feature vectors, accumulated in float64.

    Keeps the running sum, the running sum of outer products and the count, so batches can be
    added one at a time (``update``) and statistics from several workers combined (``merge``)
    without storing the features.
    """

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim
        self.count = 0
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None

    def _init(self, dim: int) -> None:
        if self.dim is not None and self.dim != dim:
            raise ValueError(f"features have dimension {dim}, statistics were started with {self.dim}")
        self.dim = dim
        if self._sum is None:
            self._sum = np.zeros(dim, dtype=np.float64)
            self._outer = np.zeros((dim, dim), dtype=np.float64)

    def update(self, features: ArrayLike) -> "FeatureStatistics":
        """Add a batch of features of shape (N, D); returns self."""
        feats = _as_float64(features)
        if feats.ndim != 2:
            raise ValueError(f"features must be (N, D), got shape {feats.shape}")
        self._init(feats.shape[1])
        self._sum += feats.sum(axis=0)
        self._outer += feats.T @ feats
        self.count += feats.shape[0]
        return self

    def merge(self, other: "FeatureStatistics") -> "FeatureStatistics":
        """Add the samples accumulated in ``other`` (e.g. from another process); returns self."""
        if other.count == 0:
            return self
        self._init(other.dim)
        self._sum += other._sum
        self._outer += other._outer
        self.count += other.count
        return self

    def _require(self, minimum: int) -> None:
        if self.count < minimum:
            raise ValueError(
                f"need at least {minimum} feature vectors for this statistic, got {self.count}"
            )

    @property
    def mean(self) -> np.ndarray:
        """Mean feature vector (D,), float64."""
        self._require(1)
        return self._sum / self.count

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased (N - 1) covariance matrix (D, D), float64; needs at least 2 samples."""
        self._require(2)
        mu = self._sum / self.count
        cov = (self._outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        # Summation order makes the result asymmetric in the last bits; FD expects symmetric input.
        return (cov + cov.T) / 2


def _clip_eigenvalues(eigvals: np.ndarray) -> np.ndarray:
    # Zero eigenvalues of a PSD matrix come out as +-1e-16-sized round-off, whose square roots
    # (1e-8) would add up to a visible error; treat everything below the numerical rank as zero.
    tol = max(eigvals.max(initial=0.0), 0.0) * eigvals.size * np.finfo(np.float64).eps
    return np.where(eigvals > tol, eigvals, 0.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigvals, eigvecs = np.linalg.eigh(matrix)
    return (eigvecs * np.sqrt(_clip_eigenvalues(eigvals))) @ eigvecs.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`` with means (D,) and covariances
    (D, D). The trace term is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix ``S1^(1/2) S2 S1^(1/2)`` (similar to ``S1 S2``), so unlike a general
    ``sqrtm`` it never produces imaginary parts; eigenvalues below the numerical rank (round-off,
    including small negatives) count as zero.
    """
    mu1, mu2 = _as_float64(mu1), _as_float64(mu2)
    s1, s2 = _as_float64(sigma1), _as_float64(sigma2)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    root1 = _psd_sqrt((s1 + s1.T) / 2)
    middle = root1 @ s2 @ root1
    eigvals = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(_clip_eigenvalues(eigvals)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)
