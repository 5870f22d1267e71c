"""The lesion-box bank that normal images are matched against for patch sites (Gupta et al., §3.2).

:class:`LesionBoxBank` holds the boxes of the training lesion images with their region, view and image
size; :class:`streamaug.sites.proposer.SiteProposer` draws ``n`` matched records per normal image from it.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamaug.io.labels import to_int_label
from streamaug.sites import _kernels as _k
from streamaug.sites.boxes import parse_boxes

__all__ = ["LesionBoxBank"]


def _norm(value: Any) -> str | None:
    """Lower-cased, stripped string, or ``None`` for missing/NaN/empty values."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip().lower()
    return text or None


@dataclass(eq=False, repr=False)
class LesionBoxBank:
    """The boxes of lesion images that normal images are matched against (§3.2).

    Holds plain lists and numpy arrays only, so it pickles cheaply into DataLoader workers.

    Matching (:meth:`match`), most to least specific; the first non-empty level wins:

    1. same ``region`` and same ``view``;
    2. same ``region`` (view relaxed);
    3. the whole bank (region relaxed too).

    A field that the normal image lacks (``None``/empty) does not constrain; e.g. a normal image
    with a region but no view goes straight to level 2. Strings compare case-insensitively.
    Image size is matched by scaling, not by filtering: :meth:`boxes_for` rescales a record's boxes
    per axis to the normal image's size (records without a size are taken to be the same size).

    Attributes:
        keys, regions, views: one entry per record (normalised strings or ``None``).
        sizes: ``(N, 2)`` int64 ``(width, height)``, ``0`` where unknown.
        boxes: ``(total_boxes, 4)`` float64, all records' boxes concatenated.
        offsets: ``(N + 1,)`` int64; record ``i`` owns ``boxes[offsets[i]:offsets[i + 1]]``.
    """

    keys: list[str]
    regions: list[str | None]
    views: list[str | None]
    sizes: np.ndarray
    boxes: np.ndarray
    offsets: np.ndarray
    _by_rv: dict[tuple[str | None, str | None], np.ndarray] = field(default_factory=dict, repr=False)
    _by_r: dict[str | None, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.sizes = np.ascontiguousarray(self.sizes, dtype=np.int64)
        self.boxes = np.ascontiguousarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.offsets = np.ascontiguousarray(self.offsets, dtype=np.int64)
        n = len(self.keys)
        if not (len(self.regions) == len(self.views) == n and self.sizes.shape == (n, 2)
                and self.offsets.shape == (n + 1,)):
            raise ValueError("LesionBoxBank fields disagree in length")
        rv: dict[tuple[str | None, str | None], list[int]] = {}
        r: dict[str | None, list[int]] = {}
        for i, (reg, view) in enumerate(zip(self.regions, self.views)):
            rv.setdefault((reg, view), []).append(i)
            r.setdefault(reg, []).append(i)
        self._by_rv = {k: np.asarray(v, dtype=np.int64) for k, v in rv.items()}
        self._by_r = {k: np.asarray(v, dtype=np.int64) for k, v in r.items()}
        self._all = np.arange(n, dtype=np.int64)

    # ---- constructors
    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> LesionBoxBank:
        """Build a bank from mappings with ``boxes`` and optionally ``key``, ``region``, ``view``,
        ``width``, ``height``.

        ``boxes`` may be a list of ``[x0, y0, x1, y1]``, an array/tensor, or a
        ``"x0 y0 x1 y1;..."`` string (the ``boxes_xyxy`` column). Records without boxes are
        skipped. Every record is taken as a lesion record: filter labels before calling.

        Raises:
            ValueError: on malformed boxes.
        """
        keys, regions, views, sizes, chunks, offsets = [], [], [], [], [], [0]
        for i, rec in enumerate(records):
            b = parse_boxes(rec.get("boxes", rec.get("boxes_xyxy")))
            if b.shape[0] == 0:
                continue
            keys.append(str(rec.get("key", rec.get("image_id", i))))
            regions.append(_norm(rec.get("region")))
            views.append(_norm(rec.get("view")))
            sizes.append((_size(rec.get("width")), _size(rec.get("height"))))
            chunks.append(b)
            offsets.append(offsets[-1] + b.shape[0])
        return cls(
            keys=keys,
            regions=regions,
            views=views,
            sizes=np.asarray(sizes, dtype=np.int64).reshape(-1, 2),
            boxes=np.concatenate(chunks) if chunks else np.zeros((0, 4)),
            offsets=np.asarray(offsets, dtype=np.int64),
        )

    @classmethod
    def from_manifest(
        cls, manifest: str | os.PathLike | Mapping[str, Any], split: str | None = "train",
        select: Callable[[str, dict], bool] | None = None,
    ) -> LesionBoxBank:
        """Build a bank from ``manifest.json``'s ``lesion_boxes`` list.

        Args:
            manifest: path to ``manifest.json`` (or its folder), or the parsed dict.
            split: keep entries of this split only (``None``: all entries, including those
                without a split). Entries whose ``label`` reads as normal are skipped.
            select: keep only entries with ``select(key, entry)`` true (the stream's sample
                selection; an entry holds ``key``, ``label``, ``region``, ``view``, ``width``,
                ``height`` and ``boxes``), so a rare-positive selection also limits the bank.

        Raises:
            ValueError: if the manifest has no ``lesion_boxes`` or nothing is left after the split
                and ``select`` filters (the message lists the splits present).
        """
        if not isinstance(manifest, Mapping):
            path = os.fspath(manifest)
            if os.path.isdir(path):
                path = os.path.join(path, "manifest.json")
            with open(path, encoding="utf-8") as fh:
                manifest = json.load(fh)
        entries = manifest.get("lesion_boxes")
        if entries is None:
            raise ValueError("manifest has no 'lesion_boxes' list (repack with a boxes column)")
        kept = [e for e in entries if (split is None or e.get("split") == split)
                and to_int_label(e.get("label", 1)) != 0 and (select is None or select(str(e.get("key")), e))]
        bank = cls.from_records(kept)
        if len(bank) == 0:
            present = sorted({str(e.get("split")) for e in entries})
            chosen = " that select keeps" if select is not None else ""
            raise ValueError(f"no lesion boxes for split={split!r}{chosen} in manifest (splits present: {present})")
        return bank

    def without(self, keys: Iterable[str]) -> LesionBoxBank:
        """This bank less the records of images ``keys`` (the other records, boxes and order kept).

        Examples:
            >>> bank = LesionBoxBank.from_records([{"key": "a", "boxes": [[0, 0, 4, 4]]},
            ...                                    {"key": "b", "boxes": [[1, 1, 2, 2], [3, 3, 5, 5]]}])
            >>> kept = bank.without({"a"})
            >>> kept.keys, kept.boxes.tolist(), kept.offsets.tolist()
            (['b'], [[1.0, 1.0, 2.0, 2.0], [3.0, 3.0, 5.0, 5.0]], [0, 2])
        """
        drop = {str(k) for k in keys}
        keep = [i for i, k in enumerate(self.keys) if k not in drop]
        boxes = [self.boxes[self.offsets[i]:self.offsets[i + 1]] for i in keep]
        return LesionBoxBank(keys=[self.keys[i] for i in keep], regions=[self.regions[i] for i in keep],
                             views=[self.views[i] for i in keep], sizes=self.sizes[keep].reshape(-1, 2),
                             boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4)),
                             offsets=np.r_[0, np.cumsum([len(b) for b in boxes], dtype=np.int64)])

    # ---- queries
    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return f"LesionBoxBank({len(self)} records, {len(self.boxes)} boxes)"

    def match(self, region: Any = None, view: Any = None) -> tuple[np.ndarray, int]:
        """Indices of the records that match, and the level used (1, 2 or 3; 0 if the bank is empty).

        Examples:
            >>> bank = LesionBoxBank.from_records([
            ...     {"region": "pelvis", "view": "frontal", "boxes": [[0, 0, 4, 4]]},
            ...     {"region": "pelvis", "view": "lateral", "boxes": [[0, 0, 4, 4]]}])
            >>> bank.match("Pelvis", "lateral")[0].tolist(), bank.match("pelvis", "oblique")[1]
            ([1], 2)
        """
        reg, view_ = _norm(region), _norm(view)
        if reg is not None and view_ is not None:
            hit = self._by_rv.get((reg, view_))
            if hit is not None:
                return hit, 1
        if reg is not None:
            hit = self._by_r.get(reg)
            if hit is not None:
                return hit, 2
        return self._all, (3 if len(self) else 0)

    def boxes_of(self, indices: np.ndarray, height: int, width: int) -> np.ndarray:
        """The boxes of records ``indices``, in order, each record's scaled per axis from its size to a
        ``height x width`` image (a record without a size is not scaled): ``(k, 4)`` float64."""
        picks = np.ascontiguousarray(indices, dtype=np.int64).reshape(-1)
        return _k.gather_boxes_kernel(self.boxes, self.offsets, self.sizes, picks, int(height), int(width))

    def boxes_for(self, index: int, height: int, width: int) -> np.ndarray:
        """Record ``index``'s boxes, scaled per axis to a ``height x width`` image: ``(k, 4)`` float64."""
        return self.boxes_of(np.array([index]), height, width)


def _size(value: Any) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        return 0
    return max(out, 0)
