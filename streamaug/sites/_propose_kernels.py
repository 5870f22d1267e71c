"""Fused per-sample site proposal: one numba call per image (used by :class:`streamaug.SiteProposer`).

The geometry and the crop means are the kernels of :mod:`streamaug.sites._kernels`; this module
chains them, with their random numbers, inside one compiled call per image, because the Python and
numpy glue between the steps cost several times the arithmetic (a DataLoader worker's caches are
cold after decoding an image, so every small numpy call is slow there).

Randomness: a SplitMix64 generator (Steele et al., 2014) whose 64-bit state starts at the sample's
seed (:func:`streamaug.sites.proposer.sample_seed`). It is integer arithmetic only, so a sample gets the same
sites on every machine. The state lives in a one-element ``uint64`` array.

Draw order for one image (fixed: changing it changes every sample's sites):

1. normal image only: ``n`` records picked without replacement from the matched pool (Floyd's
   algorithm, one draw per pick);
2. two uniforms per box (x then y) to place the crops (:func:`_site_kernels.place_crops_kernel`);
3. when more than ``max_sites`` crops survive: a random subset of ``max_sites`` (Floyd's
   algorithm), kept in proposal order.
"""
from __future__ import annotations

import numba
import numpy as np

from streamaug.sites import _kernels as _site_kernels
from streamaug.sites._kernels import (
    box_means_kernel,
    crop_means_kernel,
    direct_is_cheaper_kernel,
    gather_boxes_kernel,
    integral_image_kernel,
    place_crops_kernel,
)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_TO_UNIT = 1.0 / 9007199254740992.0  # 2 ** -53


@numba.njit(cache=True, nogil=True)
def next_u64(state: np.ndarray) -> np.uint64:  # pragma: no cover - compiled
    """Advance the SplitMix64 ``state`` (``(1,)`` uint64) and return the next 64-bit output."""
    state[0] += _GOLDEN
    z = state[0]
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@numba.njit(cache=True, nogil=True)
def next_uniform(state: np.ndarray) -> float:  # pragma: no cover - compiled
    """A float64 in ``[0, 1)`` from the top 53 bits of the next output."""
    return float(next_u64(state) >> _S11) * _TO_UNIT


@numba.njit(cache=True, nogil=True)
def next_below(state: np.ndarray, bound: int) -> int:  # pragma: no cover - compiled
    """An int in ``[0, bound)`` (``bound >= 1``); the bias is below ``bound / 2**53``."""
    return min(int(next_uniform(state) * bound), bound - 1)


@numba.njit(cache=True, nogil=True)
def choose_kernel(count: int, k: int, state: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """``min(k, count)`` distinct indices of ``range(count)``, every subset equally likely (Floyd)."""
    k = min(k, count)
    out = np.empty(k, dtype=np.int64)
    for c in range(k):
        j = count - k + c
        t = next_below(state, j + 1)
        for prev in range(c):
            if out[prev] == t:
                t = j
                break
        out[c] = t
    return out


@numba.njit(cache=True, nogil=True)
def place_kernel(boxes: np.ndarray, s: float, min_size: int, height: int, width: int,
                 state: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """Square crops around ``boxes`` ``(k, 4)`` float64, two uniforms per box: ``(k', 4)`` int64."""
    uniforms = np.empty((boxes.shape[0], 2), dtype=np.float64)
    for i in range(boxes.shape[0]):
        uniforms[i, 0] = next_uniform(state)
        uniforms[i, 1] = next_uniform(state)
    return place_crops_kernel(boxes, uniforms, s, min_size, height, width)


@numba.njit(cache=True, nogil=True)
def cap_kernel(sites: np.ndarray, max_sites: int, state: np.ndarray) -> np.ndarray:  # pragma: no cover
    """At most ``max_sites`` rows of ``sites`` (a random subset in row order); ``-1``: no cap."""
    m = sites.shape[0]
    if max_sites < 0 or m <= max_sites:
        return sites
    keep = np.zeros(m, dtype=np.bool_)
    for i in choose_kernel(m, max_sites, state):
        keep[i] = True
    return sites[keep]


@numba.njit(cache=True, nogil=True)
def lesion_sites_kernel(boxes: np.ndarray, s: float, min_size: int, height: int, width: int,
                        seed: np.uint64, max_sites: int) -> tuple:  # pragma: no cover - compiled
    """A lesion image's sites: ``(sites (m, 4) int64, proposed)``."""
    state = np.empty(1, dtype=np.uint64)
    state[0] = seed
    crops = place_kernel(boxes, s, min_size, height, width, state)
    return cap_kernel(crops, max_sites, state), crops.shape[0]


@numba.njit(cache=True, nogil=True)
def normal_candidates_kernel(pool: np.ndarray, bank_boxes: np.ndarray, offsets: np.ndarray,
                             sizes: np.ndarray, n: int, s: float, min_size: int, height: int, width: int,
                             state: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """Unfiltered crops of a normal image: ``n`` records of ``pool``, their boxes scaled and placed."""
    picks = pool[choose_kernel(pool.shape[0], n, state)]
    boxes = gather_boxes_kernel(bank_boxes, offsets, sizes, picks, height, width)
    return place_kernel(boxes, s, min_size, height, width, state)


@numba.njit(cache=True, nogil=True)
def normal_sites_kernel(img: np.ndarray, pool: np.ndarray, bank_boxes: np.ndarray, offsets: np.ndarray,
                        sizes: np.ndarray, n: int, s: float, min_size: int, min_intensity: float,
                        seed: np.uint64, max_sites: int, buffer: np.ndarray) -> tuple:  # pragma: no cover
    """A normal image's sites: candidates, the dark ones dropped, capped.

    Crop means are summed directly when that is cheaper (:func:`streamaug.sites._kernels.direct_is_cheaper`),
    else read from an integral image written into ``buffer`` (flat float64; a larger one is allocated
    when it is too small and returned, so the caller can keep it).

    Returns:
        ``(sites (m, 4) int64, proposed, dropped_dark, used_integral, buffer)``.
    """
    state = np.empty(1, dtype=np.uint64)
    state[0] = seed
    height, width = img.shape
    crops = normal_candidates_kernel(pool, bank_boxes, offsets, sizes, n, s, min_size, height, width, state)
    proposed = crops.shape[0]
    used_integral = False
    if proposed and min_intensity > 0:
        if direct_is_cheaper_kernel(crops, height, width):
            means = crop_means_kernel(img, crops)
        else:
            used_integral = True
            size = (height + 1) * (width + 1)
            if buffer.shape[0] < size:
                buffer = np.empty(size, dtype=np.float64)
            table = integral_image_kernel(img, buffer[:size].reshape(height + 1, width + 1))
            means = box_means_kernel(table, crops)
        crops = crops[means >= min_intensity]
    return cap_kernel(crops, max_sites, state), proposed, proposed - crops.shape[0], used_integral, buffer


_WARM = False


def warm_up() -> None:
    """Compile (or load from numba's cache) every site kernel, these and those of
    :mod:`streamaug.sites._kernels`, for their one signature each; once per process."""
    global _WARM
    if _WARM:
        return
    _site_kernels.warm_up()
    img = np.zeros((4, 4), dtype=np.float32)
    fbox = np.array([[0.0, 0.0, 2.0, 2.0]])
    seed = np.uint64(0)
    lesion_sites_kernel(fbox, 1.0, 1, 4, 4, seed, -1)
    normal_sites_kernel(img, np.zeros(1, dtype=np.int64), fbox, np.array([0, 1], dtype=np.int64),
                        np.zeros((1, 2), dtype=np.int64), 1, 1.0, 1, 0.5, seed, -1, np.empty(0))
    _WARM = True
