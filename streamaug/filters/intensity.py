"""Bone-content filter: drop patches too dark to contain bone (Gupta et al. §3.2, 0.15)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from streamaug.filters.stats import AcceptanceStats


def site_means(images: torch.Tensor, boxes: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
    """Mean of every box's pixels, exactly, from one integral image per image (batched).

    Args:
        images: ``(B, C, H, W)`` images.
        boxes: ``(K, 4)`` ``x0 y0 x1 y1`` in pixels, end-exclusive (clipped to the image; float values
            are rounded).
        batch_index: ``(K,)`` image of each box.

    Returns:
        ``(K,)`` float32 means over the clipped box and the channels (0 for an empty box).

    Examples:
        >>> img = torch.arange(16.).view(1, 1, 4, 4)
        >>> site_means(img, torch.tensor([[1, 1, 3, 3], [0, 0, 4, 1]]), torch.tensor([0, 0])).tolist()
        [7.5, 1.5]
    """
    if len(boxes) == 0:
        return torch.zeros(0, device=images.device)
    _, ch, height, width = images.shape
    used, local = torch.unique(batch_index.to(images.device).long(), return_inverse=True)
    ii = F.pad(images[used].double().sum(1).cumsum(-2).cumsum(-1), (1, 0, 1, 0))  # (U, H+1, W+1)
    b = boxes.to(images.device).round().long()
    x0, x1 = b[:, 0].clamp(0, width), b[:, 2].clamp(0, width)
    y0, y1 = b[:, 1].clamp(0, height), b[:, 3].clamp(0, height)
    total = ii[local, y1, x1] - ii[local, y0, x1] - ii[local, y1, x0] + ii[local, y0, x0]
    area = ((x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0) * ch).double()
    return (total / area.clamp(min=1)).float()


class BoneContent:
    """Keep patches (or image boxes) whose mean normalized intensity is at least ``min_intensity``.

    The CPU site proposer (:class:`streamaug.SiteProposer`) applies the same rule with integral
    images before anything reaches the device; this batched version serves patches and sites from
    elsewhere (a user's loader, translated patches).

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

    def _keep(self, means: torch.Tensor) -> torch.Tensor:
        keep = means >= self.min_intensity
        self.stats.update(keep.numel(), int(keep.sum()))
        return keep

    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` patches -> ``(B,)`` bool keep mask."""
        return self._keep(patches.flatten(1).float().mean(1))

    def boxes(self, images: torch.Tensor, boxes: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        """``(K,)`` bool keep mask of the boxes of ``images`` (exact box means, see :func:`site_means`)."""
        return self._keep(site_means(images, boxes, batch_index))
