"""Numba kernels and box geometry behind :mod:`streamaug.sites` (import the public names from there).

The ``*_kernel`` functions do no validation; the plain functions below them (:func:`integral_image`,
:func:`box_means`, :func:`crop_means`, :func:`lesion_crops`, :func:`parse_boxes`) validate and
normalise their inputs and are re-exported by :mod:`streamaug.sites`.

Crop means come from one of two exact methods (:func:`direct_is_cheaper` says which is cheaper):
summing each crop directly (:func:`crop_means_kernel`, cost ~ total crop area) or building an
integral image once (:func:`integral_image_kernel`, cost ~ ``H x W``) and reading four corners per
crop (:func:`box_means_kernel`). Both accumulate in float64; they agree up to float rounding.

Every kernel is ``@numba.njit(cache=True, nogil=True)``. The plain functions pass C-contiguous
arrays of one fixed dtype per argument, so each kernel is compiled for exactly one signature;
:func:`warm_up` triggers that compile (or the load from numba's on-disk cache) once per process,
before the first sample rather than inside it.
"""
from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
import torch

_WARM = False
_EMPTY = np.zeros((0, 4), dtype=np.int64)


@numba.njit(cache=True, nogil=True)
def integral_image_kernel(img: np.ndarray, out: np.ndarray) -> np.ndarray:  # pragma: no cover
    """Fill ``out`` ``(H + 1, W + 1)`` float64 with the summed-area table of ``img`` ``(H, W)``."""
    h, w = img.shape
    for x in range(w + 1):
        out[0, x] = 0.0
    for y in range(h):
        out[y + 1, 0] = 0.0
        run = 0.0
        for x in range(w):
            run += img[y, x]
            out[y + 1, x + 1] = out[y, x + 1] + run
    return out


@numba.njit(cache=True, nogil=True)
def box_means_kernel(integral: np.ndarray, boxes: np.ndarray) -> np.ndarray:  # pragma: no cover
    """Mean of the image inside each ``x0 y0 x1 y1`` (end-exclusive) box; NaN for empty boxes."""
    m = boxes.shape[0]
    out = np.empty(m, dtype=np.float64)
    for i in range(m):
        x0, y0, x1, y1 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        area = (x1 - x0) * (y1 - y0)
        if area <= 0:
            out[i] = np.nan
        else:
            total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
            out[i] = total / area
    return out


@numba.njit(cache=True, nogil=True)
def crop_means_kernel(img: np.ndarray, boxes: np.ndarray) -> np.ndarray:  # pragma: no cover
    """Mean of ``img`` ``(H, W)`` inside each ``x0 y0 x1 y1`` box, summed directly; NaN if empty.

    Float64 accumulation in four interleaved partial sums per row (a fixed order, so the result is
    the same on every machine; the partial sums let the CPU overlap the additions).
    """
    m = boxes.shape[0]
    out = np.empty(m, dtype=np.float64)
    for i in range(m):
        x0, y0, x1, y1 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        area = (x1 - x0) * (y1 - y0)
        if area <= 0:
            out[i] = np.nan
            continue
        stop4 = x0 + ((x1 - x0) // 4) * 4
        total = 0.0
        for y in range(y0, y1):
            row = img[y]
            a0 = a1 = a2 = a3 = 0.0
            for x in range(x0, stop4, 4):
                a0 += row[x]
                a1 += row[x + 1]
                a2 += row[x + 2]
                a3 += row[x + 3]
            for x in range(stop4, x1):
                a0 += row[x]
            total += (a0 + a1) + (a2 + a3)
        out[i] = total / area
    return out


@numba.njit(cache=True, nogil=True)
def _place_1d(b0: int, b1: int, side: int, extent: int, u: float) -> int:  # pragma: no cover
    """Start of a ``side``-long window in ``[0, extent)`` that covers ``[b0, b1)``, drawn by ``u``.

    Uniform over all valid starts when the window is at least as long as the box; centred on the box
    otherwise. Always clipped to ``[0, extent - side]``.
    """
    if side >= b1 - b0:
        lo = max(b1 - side, 0)
        hi = min(b0, extent - side)
        start = lo + int(u * (hi - lo + 1))
        if start > hi:
            start = hi
    else:
        start = b0 + (b1 - b0 - side) // 2
    return min(max(start, 0), extent - side)


@numba.njit(cache=True, nogil=True)
def place_crops_kernel(
    boxes: np.ndarray, uniforms: np.ndarray, s: float, min_size: int, height: int, width: int
) -> np.ndarray:  # pragma: no cover - compiled
    """Square crops around float boxes (see :func:`lesion_crops`), in one pass.

    ``boxes`` ``(k, 4)`` float64 are widened to whole pixels (floor of the start, ceil of the end),
    clipped to the image, and dropped when empty or non-finite; ``uniforms`` ``(k, 2)`` float64 in
    ``[0, 1)`` (one row per input box) place the crops. Returns ``(k', 4)`` int64, ``k' <= k``.
    """
    k = boxes.shape[0]
    out = np.empty((k, 4), dtype=np.int64)
    cap = min(height, width)
    n = 0
    for i in range(k):
        f0, f1, f2, f3 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        if not (math.isfinite(f0) and math.isfinite(f1) and math.isfinite(f2) and math.isfinite(f3)):
            continue
        x0 = int(min(max(math.floor(f0), 0.0), float(width)))
        y0 = int(min(max(math.floor(f1), 0.0), float(height)))
        x1 = int(min(max(math.ceil(f2), 0.0), float(width)))
        y1 = int(min(max(math.ceil(f3), 0.0), float(height)))
        if x1 <= x0 or y1 <= y0:
            continue
        side = int(math.ceil(s * max(x1 - x0, y1 - y0) - 1e-9))
        side = min(max(side, min_size, 1), cap)
        cx = _place_1d(x0, x1, side, width, uniforms[i, 0])
        cy = _place_1d(y0, y1, side, height, uniforms[i, 1])
        out[n, 0] = cx
        out[n, 1] = cy
        out[n, 2] = cx + side
        out[n, 3] = cy + side
        n += 1
    return out[:n].copy()


@numba.njit(cache=True, nogil=True)
def gather_boxes_kernel(
    boxes: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, picks: np.ndarray, height: int, width: int
) -> np.ndarray:  # pragma: no cover - compiled
    """The boxes of records ``picks`` of a :class:`~streamaug.sites.LesionBoxBank`, each record's
    scaled per axis from its ``sizes`` ``(width, height)`` to ``height x width`` (``0``: unscaled).

    Raises:
        IndexError: if a pick is not a record index.
    """
    total = 0
    for j in range(picks.shape[0]):
        if picks[j] < 0 or picks[j] >= sizes.shape[0]:
            raise IndexError("record index out of range")
        total += offsets[picks[j] + 1] - offsets[picks[j]]
    out = np.empty((total, 4), dtype=np.float64)
    row = 0
    for j in range(picks.shape[0]):
        r = picks[j]
        w, h = sizes[r, 0], sizes[r, 1]
        sx = sy = 1.0
        if (w != 0 and w != width) or (h != 0 and h != height):
            sx = width / w if w != 0 else 1.0
            sy = height / h if h != 0 else 1.0
        for b in range(offsets[r], offsets[r + 1]):
            out[row, 0] = boxes[b, 0] * sx
            out[row, 1] = boxes[b, 1] * sy
            out[row, 2] = boxes[b, 2] * sx
            out[row, 3] = boxes[b, 3] * sy
            row += 1
    return out


@numba.njit(cache=True, nogil=True)
def direct_is_cheaper_kernel(boxes: np.ndarray, height: int, width: int) -> bool:  # pragma: no cover
    """See :func:`direct_is_cheaper`; ``boxes`` C-contiguous int64 ``(m, 4)``."""
    area = 0
    for i in range(boxes.shape[0]):
        area += (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
    return area < height * width


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel once in this process; idempotent."""
    global _WARM
    if _WARM:
        return
    img = np.zeros((4, 4), dtype=np.float32)
    integral = integral_image_kernel(img, np.empty((5, 5), dtype=np.float64))
    box = np.zeros((1, 4), dtype=np.int64)
    box_means_kernel(integral, box)
    crop_means_kernel(img, box)
    direct_is_cheaper_kernel(box, 4, 4)
    fbox = np.array([[0.0, 0.0, 1.0, 1.0]])
    place_crops_kernel(fbox, np.zeros((1, 2), dtype=np.float64), 1.0, 1, 4, 4)
    gather_boxes_kernel(fbox, np.array([0, 1], dtype=np.int64), np.zeros((1, 2), dtype=np.int64),
                        np.zeros(1, dtype=np.int64), 4, 4)
    _WARM = True


# --------------------------------------------------------------------------- plain functions
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

    Args:
        img: ``(H, W)`` array (converted to C-contiguous float32).
        boxes: ``(m, 4)`` integer boxes ``x0 y0 x1 y1`` (end-exclusive) inside ``[0, W] x [0, H]``.

    Returns:
        ``(m,)`` float64 means; NaN for boxes with zero area.

    Raises:
        ValueError: on bad shapes or boxes outside the image.

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


def _checked_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(m, 4)`` C-contiguous int64 boxes, validated to lie inside a ``height x width`` image."""
    b = np.asarray(boxes)
    if b.size == 0:
        return np.zeros((0, 4), dtype=np.int64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be (m, 4), got shape {b.shape}")
    b = np.ascontiguousarray(b, dtype=np.int64)
    bad = (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > width) | (b[:, 3] > height)
    bad |= (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    if bad.any():
        raise ValueError(f"boxes outside a {height}x{width} image or inverted: {b[bad][:3].tolist()}")
    return b


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
