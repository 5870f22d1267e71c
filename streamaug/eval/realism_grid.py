"""The sample grid of the realism report: real and synthetic positives, each beside a zoom on its lesion.

Both zooms show the lesion at the same scale: a real positive's box is its lesion box, a synthetic
one's the site it was made at, ``margin`` times the lesion's side (the site proposer's ``s``, a lesion
swap's crop margin, 1 for an inpainter's sites or a real positive), so the site is divided by that
margin first (:func:`zoom_boxes`).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_realism_grid", "zoom_boxes"]


def zoom_boxes(boxes: Sequence[Any], height: int, width: int, margin: float = 1.0) -> torch.Tensor:
    """The zoom square of each sample: centred on its largest box, of side twice the box's larger
    side divided by ``margin`` (the box's side per lesion side), at least a quarter of the image's.

    Args:
        boxes: per sample, its boxes ``(k, 4)`` (or anything :func:`torch.as_tensor` reads as such).
        height, width: the images' size.
        margin: how many times the lesion's side a box's side is (a synthetic sample's site: its
            site factor; a lesion box: 1).

    Returns:
        ``(K, 4)`` float32 ``x0 y0 x1 y1`` zoom boxes.

    Examples:
        >>> lesion = zoom_boxes([[[40, 40, 56, 56]]], 128, 128)  # a 16-pixel lesion box
        >>> site = zoom_boxes([[[32, 32, 64, 64]]], 128, 128, margin=2.0)  # its site at s = 2
        >>> lesion.tolist() == site.tolist() == [[32.0, 32.0, 64.0, 64.0]]
        True
    """
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    if not len(boxes):
        return torch.zeros(0, 4)
    boxes = [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes]
    largest = torch.stack([b[((b[:, 2:] - b[:, :2]).prod(1)).argmax()] for b in boxes])
    side = (largest[:, 2:] - largest[:, :2]).max(1).values / margin
    half = side.clamp(min=max(height, width) / 8)[:, None]
    centre = (largest[:, :2] + largest[:, 2:]) / 2
    return torch.cat([centre - half, centre + half], 1)


def save_realism_grid(path: str | os.PathLike, real: list[dict[str, Any]], synthetic: list[dict[str, Any]],
                      k: int = 8, zoom: int = 64, other: str = "synthetic", site_margin: float = 1.0) -> Path:
    """Four rows of ``k``: real images, zooms on their lesions, synthetic images (row title
    ``other``), zooms on their sites.

    A zoom is :func:`zoom_boxes` of the sample's boxes (real: its lesion boxes, margin 1; synthetic:
    the blended site, margin ``site_margin``), shown at ``zoom x zoom`` pixels: a lesion of either row
    fills the same share of its zoom.
    """
    from streamaug.eval.plots import save_sample_grid
    from streamaug.synth.ops import crop_sites

    rows, names = [], []
    for kind, samples, margin in (("real", real[:k], 1.0), (other, synthetic[:k], site_margin)):
        images = torch.stack([s["image"].float() for s in samples])
        boxes = zoom_boxes([s["boxes"] for s in samples], *images.shape[-2:], margin=margin)
        rows += [images, crop_sites(images, boxes, torch.arange(len(samples)), zoom)]
        names += [kind, f"{kind} zoom"]
    return save_sample_grid(path, rows, (), row_titles=names)
