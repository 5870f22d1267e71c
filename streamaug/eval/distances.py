"""Distances between two sets of feature vectors: Fréchet (FID-style) and kernel (KID-style), used by
the realism report (:mod:`streamaug.eval.realism`) and the translator-quality benchmark."""
from __future__ import annotations

import numpy as np

__all__ = ["frechet_distance", "gaussian_frechet", "kernel_distance"]


def gaussian_frechet(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    r"""Fréchet (2-Wasserstein squared) distance of two Gaussians.

    .. math:: \lVert\mu_a-\mu_b\rVert^2 + \operatorname{Tr}(\Sigma_a + \Sigma_b - 2(\Sigma_a\Sigma_b)^{1/2})

    ``Tr((Σa Σb)^½)`` is the sum of the square roots of the eigenvalues of the symmetric
    ``Σa^½ Σb Σa^½`` (same spectrum), so no complex matrix square root is needed.

    Args:
        mean_a, mean_b: means ``(D,)``.
        cov_a, cov_b: covariances ``(D, D)``, symmetric positive semi-definite.

    Returns:
        The distance, ``>= 0`` (float64 arithmetic).

    Examples:
        >>> round(gaussian_frechet(np.zeros(1), np.eye(1) * 4, np.ones(1), np.eye(1)), 6)  # 1 + (2 - 1)^2
        2.0
    """
    mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
    cov_a, cov_b = np.atleast_2d(np.asarray(cov_a, np.float64)), np.atleast_2d(np.asarray(cov_b, np.float64))
    w, v = np.linalg.eigh((cov_a + cov_a.T) / 2)
    root_a = (v * np.sqrt(w.clip(min=0))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a).clip(min=0)
    value = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(cross).sum()
    return float(max(value, 0.0))


def _pair(feats_a: np.ndarray, feats_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need (N, D) feature arrays with N >= 2 and one D, got {a.shape} and {b.shape}")
    return a, b


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance of the Gaussians fitted to two feature sets (FID's formula, any features).

    Args:
        feats_a: ``(N_a, D)`` features; ``N_a >= 2``.
        feats_b: ``(N_b, D)`` features; ``N_b >= 2``.

    Returns:
        :func:`gaussian_frechet` of the sample means and (unbiased, ``N - 1``) covariances.
    """
    a, b = _pair(feats_a, feats_b)
    return gaussian_frechet(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def kernel_distance(feats_a: np.ndarray, feats_b: np.ndarray, *, degree: int = 3, gamma: float | None = None,
                    coef0: float = 1.0) -> float:
    r"""Unbiased MMD² with the polynomial kernel ``k(x, y) = (gamma x·y + coef0)^degree`` (KID).

    .. math:: \frac{\sum_{i\ne j} k(a_i,a_j)}{m(m-1)} + \frac{\sum_{i\ne j} k(b_i,b_j)}{n(n-1)}
              - \frac{2\sum_{i,j} k(a_i,b_j)}{mn}

    The defaults (``degree`` 3, ``gamma = 1 / D``, ``coef0`` 1) are KID's (Bińkowski et al. 2018);
    computed on all samples at once (KID's average over subsets is only for large sets). Its
    expectation is 0 when both sets come from one distribution, so a small negative value can occur.

    Args:
        feats_a: ``(m, D)`` features, ``m >= 2``.
        feats_b: ``(n, D)`` features, ``n >= 2``.
        degree, gamma, coef0: the kernel; ``gamma`` None means ``1 / D``.

    Returns:
        The estimate (float64 arithmetic).

    Examples:
        >>> x = np.random.default_rng(0).normal(size=(200, 4))
        >>> kernel_distance(x[:100], x[100:]) < 0.05 < kernel_distance(x[:100], x[100:] + 1)
        True
    """
    a, b = _pair(feats_a, feats_b)
    g = 1.0 / a.shape[1] if gamma is None else gamma
    m, n = len(a), len(b)
    kaa, kbb, kab = ((g * x @ y.T + coef0) ** degree for x, y in ((a, a), (b, b), (a, b)))
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
                 - 2 * kab.mean())
