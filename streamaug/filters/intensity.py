"""Bone-content filter: drop patches too dark to contain bone (Gupta et al. §3.2, 0.15)."""
from __future__ import annotations

import torch

from streamaug.filters.stats import AcceptanceStats


class BoneContent:
    """Keep patches whose mean normalized intensity is at least ``min_intensity``.

    The CPU site proposer (:class:`streamaug.SiteProposer`) applies the same rule with integral
    images before anything reaches the device; this batched version serves patches from elsewhere
    (a user's loader, translated patches).

    Args:
        min_intensity: threshold on the mean of each ``[0, 1]`` patch (paper: 0.15).

    Examples:
        >>> f = BoneContent(0.15)
        >>> f(torch.stack([torch.full((1, 4, 4), 0.1), torch.full((1, 4, 4), 0.5)])).tolist()
        [False, True]
    """

    def __init__(self, min_intensity: float = 0.15) -> None:
        self.min_intensity = float(min_intensity)
        self.stats = AcceptanceStats()

    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` patches -> ``(B,)`` bool keep mask."""
        keep = patches.flatten(1).float().mean(1) >= self.min_intensity
        self.stats.update(keep.numel(), int(keep.sum()))
        return keep
