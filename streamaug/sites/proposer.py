"""Patch-site proposal (Gupta et al., MIDL 2019, §3.2 "Patch-making"), run on CPU workers.

A *site* is a square crop ``x0 y0 x1 y1`` (pixels, end-exclusive, int64) where a lesion patch is
cut (lesion images) or where a synthetic lesion may be translated in (normal images):

- Lesion image (``label == 1`` with boxes): one square per box, side ``s * max(box w, box h)``,
  placed at random so that the box lies inside it (:func:`lesion_crops`).
- Normal image (``label == 0``): ``n`` matched lesion records are drawn from a
  :class:`~streamaug.sites.bank.LesionBoxBank`; each of their boxes, scaled to this image, gives a
  square placed the same way; squares whose mean intensity is below ``min_intensity`` (0.15 in the paper: "no bone") are
  dropped. Means are summed directly over the crops when they cover less than the image, else read
  from an integral image, O(1) per crop (numba kernels in :mod:`streamaug.sites._kernels`).

Randomness is a pure function of ``(seed, epoch, sample key)``, so the same sample gets the same
sites in any worker, in any process and in any order: a SplitMix64 generator starts from a SHAKE-256
hash of the three (:func:`sample_seed`). Each image's proposal is one compiled call
(:mod:`streamaug.sites._propose_kernels`), which also draws its random numbers.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from streamaug.io.labels import to_int_label
from streamaug.sites import _propose_kernels as _pk
from streamaug.sites.bank import LesionBoxBank
from streamaug.sites.boxes import parse_boxes

__all__ = ["SiteProposer", "sample_seed"]

_EMPTY = np.zeros((0, 4), dtype=np.int64)
_NO_BUFFER = np.empty(0, dtype=np.float64)
_MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------- randomness
def sample_seed(seed: int, epoch: int, key: str) -> int:
    """The 64-bit start state of one sample's generator: a hash of ``(seed, epoch, key)`` only.

    Args:
        seed: base seed (taken modulo ``2**64``).
        epoch: epoch (taken modulo ``2**64``).
        key: the sample key (its UTF-8 bytes are hashed in full, so distinct keys give distinct
            states up to hash collisions).

    Returns:
        an int in ``[0, 2**64)``: the first 8 bytes of SHAKE-256, little-endian (the same on every
        platform and in every interpreter, whatever ``PYTHONHASHSEED``).

    Examples:
        >>> same, other = sample_seed(0, 1, "IMG1"), sample_seed(0, 2, "IMG1")
        >>> same == sample_seed(0, 1, "IMG1"), same == other
        (True, False)
    """
    data = (b"streamaug.sites.proposer/2" + (int(seed) & _MASK64).to_bytes(8, "little")
            + (int(epoch) & _MASK64).to_bytes(8, "little") + str(key).encode("utf-8"))
    return int.from_bytes(hashlib.shake_256(data).digest(8), "little")


# --------------------------------------------------------------------------- the stage
class SiteProposer:
    """Adds ``sites`` (int64 ``(m, 4)``, ``x0 y0 x1 y1``) to sample dicts; see the module docstring.

    Args:
        bank: lesion boxes to match normal images against; ``None``: normal images get no sites.
        s: crop side as a multiple of the box's larger side (paper: 1 for tibia, 2 for humerus).
        n: number of matched lesion records drawn per normal image (fewer if fewer match).
        min_intensity: normal-image crops with a lower mean (image in ``[0, 1]``) are dropped;
            ``0`` keeps all.
        max_sites: keep at most this many sites per image (a random subset, in proposal order).
        min_size: smallest crop side in pixels (small crops are grown, never dropped).
        seed: base seed; sites are a function of ``(seed, epoch, key)``.

    Attributes:
        epoch: mixed into the per-sample seed; set it with :meth:`set_epoch`.
        stats: counters of this process (each DataLoader worker keeps its own copy):
            ``images``, ``proposed``, ``dropped_dark``, ``dropped_cap``, ``kept``,
            ``match_level_1``/``_2``/``_3`` (see :meth:`LesionBoxBank.match`) and
            ``integral_images`` (normal images whose crop means came from an integral image).

    Crop means of normal images are summed directly when the crops' total area is below ``H x W``
    (the usual case: ~0.3 ``H x W`` for BTXRD boxes), else read from an integral image; for that,
    each process keeps one scratch buffer of ``8 (H+1)(W+1)`` bytes for the largest image seen
    (33 MB at 2048x2048), allocated on first use, reused across samples and not pickled. Each image
    is one call of a compiled kernel (:mod:`streamaug.sites._propose_kernels`); the kernels are compiled,
    or loaded from numba's disk cache, when the proposer is built (~0.5 s once per process), so
    forked DataLoader workers inherit them instead of each loading them again at every epoch's
    start; a process that unpickles a proposer (spawn) loads them on first use.

    Examples:
        >>> bank = LesionBoxBank.from_records(
        ...     [{"key": "a", "boxes": [[8, 8, 24, 24]], "width": 32, "height": 32}])
        >>> sample = {"key": "n1", "image": torch.ones(1, 64, 64), "label": 0,
        ...           "boxes": torch.zeros(0, 4), "meta": {}}
        >>> SiteProposer(bank, n=1)(sample)["sites"].shape
        torch.Size([1, 4])
    """

    _STAT_KEYS = ("images", "proposed", "dropped_dark", "dropped_cap", "kept",
                  "match_level_1", "match_level_2", "match_level_3", "integral_images")

    def __init__(
        self,
        bank: LesionBoxBank | None = None,
        *,
        s: float = 1.0,
        n: int = 7,
        min_intensity: float = 0.15,
        max_sites: int | None = None,
        min_size: int = 8,
        seed: int = 0,
    ) -> None:
        if bank is not None and not isinstance(bank, LesionBoxBank):
            raise TypeError(f"bank must be a LesionBoxBank or None, got {type(bank).__name__}")
        if not (np.isfinite(s) and s > 0):
            raise ValueError(f"s must be > 0, got {s!r}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if max_sites is not None and max_sites < 0:
            raise ValueError(f"max_sites must be >= 0 or None, got {max_sites}")
        if min_size < 1:
            raise ValueError(f"min_size must be >= 1, got {min_size}")
        self.bank = bank
        self.s = float(s)
        self.n = int(n)
        self.min_intensity = float(min_intensity)
        self.max_sites = max_sites
        self.min_size = int(min_size)
        self.seed = int(seed)
        self.epoch = 0
        self.stats: dict[str, int] = dict.fromkeys(self._STAT_KEYS, 0)
        self._buffer: np.ndarray | None = None  # integral-image scratch, per process
        _pk.warm_up()  # before any fork: workers inherit the compiled kernels

    def __repr__(self) -> str:
        bank = f"{len(self.bank)} records" if self.bank is not None else None
        return (f"SiteProposer(bank={bank}, s={self.s}, n={self.n}, min_intensity={self.min_intensity}, "
                f"max_sites={self.max_sites}, min_size={self.min_size}, seed={self.seed})")

    def set_epoch(self, epoch: int) -> None:
        """Vary the sites per epoch (same epoch, same sites)."""
        self.epoch = int(epoch)

    def seed_for(self, key: str) -> np.uint64:
        """The generator start state for one sample: :func:`sample_seed` of ``(seed, epoch, key)``."""
        return np.uint64(sample_seed(self.seed, self.epoch, key))

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Return a shallow copy of ``sample`` with ``sites`` (int64 tensor ``(m, 4)``) added.

        Raises:
            KeyError: if the sample has no ``key`` or ``image``.
        """
        if "key" not in sample or "image" not in sample:
            raise KeyError("SiteProposer needs a sample dict with 'key' and 'image'")
        sites = self.propose(sample["image"], sample.get("label", -1), sample.get("boxes"),
                             sample.get("meta") or {}, sample["key"])
        return {**sample, "sites": torch.from_numpy(sites)}

    def propose(self, image: Any, label: Any, boxes: Any, meta: Mapping[str, Any], key: str) -> np.ndarray:
        """Sites for one image as an int64 ``(m, 4)`` array (the work behind ``__call__``).

        Args:
            image: ``(1, H, W)`` or ``(H, W)`` tensor or array, values in ``[0, 1]``.
            label: 1 lesion, 0 normal, -1 unknown (anything :func:`to_int_label` reads).
            boxes: ``(k, 4)`` lesion boxes (used for label 1).
            meta: reads ``region`` and ``view`` (used for label 0).
            key: the sample key seeding the generator.
        """
        _pk.warm_up()
        img = _as_2d(image)
        height, width = img.shape
        if isinstance(label, (torch.Tensor, np.generic)):
            label = label.item()
        lab = label if isinstance(label, int) and label in (-1, 0, 1) else to_int_label(label)
        stats = self.stats
        stats["images"] += 1
        if lab < 0 or height == 0 or width == 0 or (lab == 0 and (self.bank is None or len(self.bank) == 0)):
            return _EMPTY.copy()
        cap = -1 if self.max_sites is None else self.max_sites
        dark = 0
        if lab == 1:
            sites, proposed = _pk.lesion_sites_kernel(np.ascontiguousarray(parse_boxes(boxes)), self.s,
                                                      self.min_size, height, width, self.seed_for(key), cap)
        else:
            pool, level = self.bank.match(meta.get("region"), meta.get("view"))
            stats[f"match_level_{level}"] += 1
            sites, proposed, dark, used_integral, buffer = _pk.normal_sites_kernel(
                img, pool, self.bank.boxes, self.bank.offsets, self.bank.sizes, self.n, self.s, self.min_size,
                self.min_intensity, self.seed_for(key), cap, _NO_BUFFER if self._buffer is None else self._buffer)
            if used_integral:
                self._buffer = buffer
                stats["integral_images"] += 1
            stats["dropped_dark"] += dark
        stats["proposed"] += proposed
        stats["dropped_cap"] += proposed - dark - len(sites)
        stats["kept"] += len(sites)
        return sites

    def candidates(self, height: int, width: int, meta: Mapping[str, Any], key: str) -> np.ndarray:
        """The unfiltered crops :meth:`propose` draws for a normal image of this size, meta and key:
        ``n`` matched records' boxes, scaled and placed (before the intensity filter and the cap).

        Returns:
            ``(m, 4)`` int64; empty without a bank.
        """
        _pk.warm_up()
        if self.bank is None or len(self.bank) == 0:
            return _EMPTY.copy()
        pool, _ = self.bank.match(meta.get("region"), meta.get("view"))
        state = np.array([self.seed_for(key)], dtype=np.uint64)
        return _pk.normal_candidates_kernel(pool, self.bank.boxes, self.bank.offsets, self.bank.sizes, self.n,
                                            self.s, self.min_size, int(height), int(width), state)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_buffer": None}


def _as_2d(image: Any) -> np.ndarray:
    """``(1, H, W)``/``(H, W)`` tensor or array -> ``(H, W)`` C-contiguous float32 numpy array."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"image must be (1, H, W) or (H, W), got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)
