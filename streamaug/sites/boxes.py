"""Box geometry of patch sites: parsing, integral images, crop means, lesion crops.

Boxes are ``x0 y0 x1 y1`` in pixels, end-exclusive (see ``docs/ARCHITECTURE.md``). These functions
validate and normalise their inputs, then call the compiled kernels of :mod:`streamaug.sites._kernels`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from streamaug.sites._kernels import (
    box_means_kernel,
    crop_means_kernel,
    direct_is_cheaper_kernel,
    integral_image_kernel,
    place_crops_kernel,
)

__all__ = ["box_means", "box_problem", "crop_means", "direct_is_cheaper", "integral_image", "lesion_crops",
           "parse_boxes"]

_EMPTY = np.zeros((0, 4), dtype=np.int64)


def integral_image(img: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Summed-area table of a 2-D image.

    Args:
        img: ``(H, W)`` array (converted to C-contiguous float32).
        out: optional C-contiguous float64 ``(H + 1, W + 1)`` array to fill. Reusing one buffer
            across images of one size avoids allocating (and page-faulting) ``8 (H+1)(W+1)``
            bytes per call, which dominates the cost on large images.

    Returns:
        ``(H + 1, W + 1)`` float64 array ``I`` with ``I[y, x] = img[:y, :x].sum()`` (zero first
        row and column); ``out`` when given.

    Raises:
        ValueError: if ``img`` is not 2-D or ``out`` has the wrong shape, dtype or layout.

    Examples:
        >>> float(integral_image(np.ones((2, 3), np.float32))[-1, -1])
        6.0
    """
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise ValueError(f"integral_image expects a (H, W) image, got shape {arr.shape}")
    shape = (arr.shape[0] + 1, arr.shape[1] + 1)
    if out is None:
        out = np.empty(shape, dtype=np.float64)
    elif out.shape != shape or out.dtype != np.float64 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float64 array of shape {shape}, "
                         f"got {out.dtype} {out.shape}")
    return integral_image_kernel(np.ascontiguousarray(arr, dtype=np.float32), out)


def box_means(integral: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Mean image value inside each box, O(1) per box, from an :func:`integral_image`.

    Args:
        integral: ``(H + 1, W + 1)`` float64 summed-area table.
        boxes: ``(m, 4)`` integer boxes ``x0 y0 x1 y1`` (end-exclusive) inside ``[0, W] x [0, H]``.

    Returns:
        ``(m,)`` float64 means; NaN for boxes with zero area.

    Raises:
        ValueError: on bad shapes or boxes outside the image.

    Examples:
        >>> ii = integral_image(np.arange(4, dtype=np.float32).reshape(2, 2))
        >>> box_means(ii, np.array([[0, 0, 2, 2], [1, 0, 2, 2]])).tolist()
        [1.5, 2.0]
    """
    ii = np.ascontiguousarray(integral, dtype=np.float64)
    if ii.ndim != 2 or min(ii.shape) < 1:
        raise ValueError(f"integral must be (H + 1, W + 1), got shape {ii.shape}")
    b = _checked_boxes(boxes, ii.shape[0] - 1, ii.shape[1] - 1)
    if b.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    return box_means_kernel(ii, b)


def crop_means(img: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Mean image value inside each box, summed directly over the box's pixels.

    Costs ``O(total box area)`` with no scratch memory: cheaper than :func:`integral_image` +
    :func:`box_means` when the boxes cover less than the image (see :func:`direct_is_cheaper`).
    Agrees with :func:`box_means` up to float rounding (both accumulate in float64).

    Args and returns as :func:`box_means`, with ``img`` an ``(H, W)`` array (converted to
    C-contiguous float32) in place of the integral image.

    Examples:
        >>> crop_means(np.arange(4, dtype=np.float32).reshape(2, 2), np.array([[0, 0, 2, 2], [1, 0, 2, 2]])).tolist()
        [1.5, 2.0]
    """
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise ValueError(f"crop_means expects a (H, W) image, got shape {arr.shape}")
    b = _checked_boxes(boxes, *arr.shape)
    if b.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    return crop_means_kernel(np.ascontiguousarray(arr, dtype=np.float32), b)


def direct_is_cheaper(boxes: np.ndarray, height: int, width: int) -> bool:
    """Whether summing ``(m, 4)`` boxes directly beats an integral image of a ``height x width`` image:
    their total area (overlaps counted twice) is smaller than ``H x W``. A direct sum reads one
    float32 per covered pixel; the integral image reads and writes every pixel (float64), so the
    rule is conservative.
    """
    b = np.ascontiguousarray(boxes, dtype=np.int64).reshape(-1, 4)
    return bool(direct_is_cheaper_kernel(b, int(height), int(width)))


def box_problem(boxes: Any, height: int, width: int, *, allow_empty: bool = False) -> str | None:
    """Why some box of ``boxes`` is unusable in a ``height x width`` image, or None when all are fine.

    The one box rule of the package (the packer's CSV check and the site geometry use it): every
    value finite, ``x0 < x1`` and ``y0 < y1`` (``<=`` with ``allow_empty``), and the box inside
    ``[0, width] x [0, height]`` (end-exclusive pixels).

    Args:
        boxes: ``(m, 4)`` or ``(4,)`` numbers ``x0 y0 x1 y1``.
        height, width: the image size.
        allow_empty: accept boxes of zero width or height.

    Examples:
        >>> box_problem([[0, 0, 4, 4]], 8, 8) is None, box_problem([[2, 0, 2, 4]], 8, 8)
        (True, 'degenerate box [2.0, 0.0, 2.0, 4.0] (needs x0 < x1 and y0 < y1)')
        >>> box_problem([0, 0, 9, 4], 8, 8)
        'box [0.0, 0.0, 9.0, 4.0] is outside the 8x8 image (needs x0, y0 >= 0, x1 <= width, y1 <= height)'
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    for box in b[~np.isfinite(b).all(axis=1)][:1]:
        return f"box {box.tolist()} has a non-finite number"
    inverted = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1]) if allow_empty else (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
    for box in b[inverted][:1]:
        relation = "<=" if allow_empty else "<"
        return f"degenerate box {box.tolist()} (needs x0 {relation} x1 and y0 {relation} y1)"
    outside = (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > width) | (b[:, 3] > height)
    for box in b[outside][:1]:
        return (f"box {box.tolist()} is outside the {width}x{height} image "
                "(needs x0, y0 >= 0, x1 <= width, y1 <= height)")
    return None


def _checked_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(m, 4)`` C-contiguous int64 boxes that pass :func:`box_problem` (zero area allowed)."""
    b = np.asarray(boxes)
    if b.size == 0:
        return np.zeros((0, 4), dtype=np.int64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be (m, 4), got shape {b.shape}")
    problem = box_problem(b, height, width, allow_empty=True)
    if problem:
        raise ValueError(problem)
    return np.ascontiguousarray(b, dtype=np.int64)


def lesion_crops(
    boxes: np.ndarray | torch.Tensor,
    height: int,
    width: int,
    s: float = 1.0,
    rng: np.random.Generator | int | None = None,
    *,
    min_size: int = 1,
) -> np.ndarray:
    """Random square crops that contain each box (the paper's lesion patches).

    For a box of size ``w x h`` the side is ``ceil(s * max(w, h))``, raised to ``min_size`` and
    clipped to ``min(height, width)`` so the crop stays square and inside the image. Along each axis
    the crop start is uniform over the positions that keep the box inside the crop and the crop
    inside the image; where the side is shorter than the box (clipped side, or ``s < 1``) the crop
    is centred on the box along that axis.

    Float boxes are widened to whole pixels (``floor`` of the start, ``ceil`` of the end) and
    clipped to the image first. Boxes that are empty after clipping (outside the image, zero area,
    non-finite) give no crop, so the result may have fewer rows than ``boxes``.

    Args:
        boxes: ``(k, 4)`` boxes ``x0 y0 x1 y1`` (end-exclusive), image pixels.
        height: image height ``H``.
        width: image width ``W``.
        s: crop side as a multiple of the box's larger side (paper: 1 or 2); ``> 0``.
        rng: a ``numpy.random.Generator``, or a seed for one.
        min_size: smallest crop side before clipping to the image.

    Returns:
        ``(k', 4)`` int64 crops ``x0 y0 x1 y1`` with ``x1 - x0 == y1 - y0``, ``k' <= k``.

    Raises:
        ValueError: on bad shapes, non-positive sizes or ``s``.

    Examples:
        >>> crops = lesion_crops(np.array([[10, 10, 30, 20]]), 64, 64, s=2.0, rng=0)
        >>> (crops[:, 2:] - crops[:, :2]).tolist()
        [[40, 40]]
    """
    if not (np.isfinite(s) and s > 0):
        raise ValueError(f"s must be a positive number, got {s!r}")
    if int(height) <= 0 or int(width) <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if min_size < 1:
        raise ValueError(f"min_size must be >= 1, got {min_size}")
    b = boxes.detach().cpu().numpy() if isinstance(boxes, torch.Tensor) else np.asarray(boxes)
    if b.size == 0:
        return _EMPTY.copy()
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be (k, 4), got shape {b.shape}")
    gen = np.random.default_rng(rng)
    uniforms = gen.random((b.shape[0], 2))  # drawn for every input box: stable streams
    return place_crops_kernel(
        np.ascontiguousarray(b, dtype=np.float64), uniforms, float(s), int(min_size), int(height), int(width)
    )


def parse_boxes(value: Any) -> np.ndarray:
    """Boxes from a list of ``[x0, y0, x1, y1]``, an array, or a ``"x0 y0 x1 y1;..."`` string.

    Returns:
        ``(k, 4)`` float64; ``(0, 4)`` for ``None``/empty.

    Examples:
        >>> parse_boxes("1 2 3 4;5 6 7 8").tolist()
        [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
    """
    if value is None or (isinstance(value, float) and value != value):
        return np.zeros((0, 4))
    if isinstance(value, str):
        parts = [p.split() for p in value.replace(",", " ").split(";") if p.strip()]
        value = [[float(v) for v in p] for p in parts]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    arr = arr.reshape(-1, 4) if arr.ndim == 1 and arr.size % 4 == 0 else arr
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must be (k, 4), got {value!r}")
    return arr
