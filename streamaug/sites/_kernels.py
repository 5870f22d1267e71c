"""Numba kernels and box geometry behind :mod:`streamaug.sites.proposer` (import the public names from there).

The ``*_kernel`` functions do no validation; the plain functions below them (:func:`integral_image`,
:func:`box_means`, :func:`crop_means`, :func:`lesion_crops`, :func:`parse_boxes`) validate and
normalise their inputs and are re-exported by :mod:`streamaug.sites.proposer`.

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

import numba
import numpy as np

_WARM = False


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
    out = np.full(boxes.shape[0], np.nan)
    for i in range(boxes.shape[0]):
        x0, y0, x1, y1 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        if x1 > x0 and y1 > y0:
            total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
            out[i] = total / ((x1 - x0) * (y1 - y0))
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
    """The boxes of records ``picks`` of a :class:`~streamaug.sites.proposer.LesionBoxBank`, each record's
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
