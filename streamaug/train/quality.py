"""Held-out translation quality: how far translated normal patches lie from real lesion patches.

The score is the kernel distance KID (Binkowski et al. 2018, "Demystifying MMD GANs": the unbiased
squared MMD with the cubic polynomial kernel ``k(a, b) = (a.b / d + 1)^3``) between the features
of ``translate(held-out normal patches)`` and of held-out real lesion patches. Lower is better.

Why this and not the reconstruction or cycle error on held-out patches: those measure how well the
translator undoes itself, and an identity translator is perfect at it while painting no lesion. We
want translated patches distributed like real lesions, which a two-sample distance measures. Why
KID and not FID: KID is unbiased at any sample size; FID's bias at the few hundred held-out patches
we have is larger than the differences we look for, and its ``d x d`` covariance is singular below
``d`` samples.

Features: a fixed random conv net (3 stride-2 3x3 convs, 16/32/64 channels, leaky ReLU, Kaiming
weights from a seeded generator: no weights to download or train, the same in every run and
process); per layer the per-channel mean and standard deviation over space (224 numbers), so
intensity, contrast and texture at three scales count and position does not. Each feature is
standardised by the held-out real patches' (lesion and normal) mean and deviation, fixed when the
score is built, so scores of one held-out set compare across steps and runs.

Reported beside it: ``kid_identity``, the distance of the untranslated normal patches, and the
ratio ``kid / kid_identity``: below 1, translation moved normal patches towards real lesions.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["PatchFeatures", "kid", "TranslationScore"]


class PatchFeatures:
    """A fixed random conv net: ``(B, 1, P, P)`` patches in ``[0, 1]`` -> ``(B, 2 * sum(widths))`` features.

    Args:
        seed: seeds the weights (drawn from a private generator: the global RNG is untouched).
        widths: output channels of the stride-2 conv layers.

    Examples:
        >>> PatchFeatures()(torch.rand(3, 1, 32, 32)).shape
        torch.Size([3, 224])
    """

    def __init__(self, seed: int = 0, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        g = torch.Generator().manual_seed(seed)
        self.weights, cin = [], 1
        for cout in widths:
            std = math.sqrt(2.0 / (cin * 9))
            self.weights.append(torch.randn(cout, cin, 3, 3, generator=g) * std)
            cin = cout

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x, feats = x.float() * 2 - 1, []
        for w in self.weights:
            x = F.leaky_relu(F.conv2d(x, w.to(x.device), stride=2, padding=1), 0.2)
            feats += [x.mean((-2, -1)), x.std((-2, -1))]
        return torch.cat(feats, 1)


def kid(a: torch.Tensor, b: torch.Tensor) -> float:
    """Unbiased squared MMD of two feature sets with the kernel ``(a.b / d + 1)^3``.

    Args:
        a: ``(m, d)`` features, ``m >= 2``.
        b: ``(n, d)`` features, ``n >= 2``.

    Returns:
        The estimate (may be slightly negative when the sets are alike).

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g)
        >>> kid(x, y) < 0.1 < kid(x, y + 1)
        True
    """
    m, n = len(a), len(b)
    if m < 2 or n < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {m} and {n}")
    a, b = a.double(), b.double()
    d = a.shape[1]
    k_aa, k_bb, k_ab = ((x @ y.T / d + 1) ** 3 for x, y in ((a, a), (b, b), (a, b)))
    within_a = (k_aa.sum() - k_aa.diagonal().sum()) / (m * (m - 1))
    within_b = (k_bb.sum() - k_bb.diagonal().sum()) / (n * (n - 1))
    return float(within_a + within_b - 2 * k_ab.mean())


class TranslationScore:
    """The held-out quality score of a translator (see the module docstring); lower is better.

    Args:
        normal: ``(N, 1, P, P)`` held-out normal patches in ``[0, 1]`` (these get translated).
        lesion: ``(M, 1, P, P)`` held-out real lesion patches in ``[0, 1]``.
        seed: seeds the feature net.
        batch: patches translated per call.

    Attributes:
        kid_identity: the score of the untranslated normal patches (an identity translator's).

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> normal, lesion = torch.rand(16, 1, 32, 32, generator=g), torch.rand(16, 1, 32, 32, generator=g) * 0.5
        >>> score = TranslationScore(normal, lesion)
        >>> score(lambda x: x * 0.5)["kid"] < score.kid_identity
        True
    """

    def __init__(self, normal: torch.Tensor, lesion: torch.Tensor, *, seed: int = 0, batch: int = 256) -> None:
        self.features, self.batch = PatchFeatures(seed), batch
        self.normal = normal.cpu()
        raw_lesion, raw_normal = self.features(lesion.cpu()), self.features(self.normal)
        pooled = torch.cat([raw_lesion, raw_normal])
        self.mean, self.std = pooled.mean(0), pooled.std(0).clamp_min(1e-6)
        self.lesion = (raw_lesion - self.mean) / self.std
        self.kid_identity = kid((raw_normal - self.mean) / self.std, self.lesion)

    @torch.no_grad()
    def __call__(self, translate: Any, device: torch.device | str = "cpu") -> dict[str, float]:
        """Score a translator.

        Args:
            translate: a callable ``(B, 1, P, P) -> (B, 1, P, P)`` in ``[0, 1]`` (e.g. a translator's
                ``translate``, with the model in eval mode).
            device: where the normal patches are sent before translating.

        Returns:
            ``kid`` and ``kid_ratio`` (``kid / kid_identity``).
        """
        out = [translate(self.normal[i:i + self.batch].to(device)).float().cpu().clamp(0, 1)
               for i in range(0, len(self.normal), self.batch)]
        value = kid((self.features(torch.cat(out)) - self.mean) / self.std, self.lesion)
        return {"kid": value, "kid_ratio": value / self.kid_identity if self.kid_identity > 0 else float("nan")}
