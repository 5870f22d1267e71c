"""Sample selection decided before decoding: ``select(key, metadata) -> bool`` for :class:`XRayShards`."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from streamaug.data.shardlist import expand_urls, scan_metadata
from streamaug.io.labels import to_int_label

__all__ = ["KeySelect", "LabelSelect", "rare_positive_select"]


class KeySelect:
    """Picklable ``select(key, meta)``: one region, and (optionally) only the listed positives."""

    def __init__(self, region: str | None, positives: frozenset[str] | None = None) -> None:
        self.region, self.positives = region, positives

    def __call__(self, key: str, meta: dict) -> bool:
        if self.region is not None and meta.get("region") != self.region:
            return False
        if self.positives is not None and to_int_label(meta.get("label")) == 1:
            return key in self.positives
        return True


def rare_positive_select(shards: str | list[str], split: str | None, region: str | None,
                         ratio: float | None, seed: int) -> tuple[KeySelect, dict[str, int]]:
    """The selection of the rare-disease setting: keep ``round(ratio * normals)`` positives of the
    region, drawn with ``seed`` (all when ``ratio`` is None). Returns ``(select, counts)``."""
    region_only = KeySelect(region)
    metas = [(k, m) for s in expand_urls(shards, split) for k, m in scan_metadata(s) if region_only(k, m)]
    pos = sorted(k for k, m in metas if to_int_label(m.get("label")) == 1)
    neg = sum(to_int_label(m.get("label")) == 0 for _, m in metas)
    if ratio is None:
        return KeySelect(region, None), {"positives": len(pos), "normals": neg, "positives_available": len(pos)}
    k = min(len(pos), round(ratio * neg))
    kept = np.random.default_rng([seed, 0xA7E]).choice(len(pos), size=k, replace=False) if k else []
    keep = frozenset(pos[i] for i in kept)
    return KeySelect(region, keep), {"positives": k, "normals": neg, "positives_available": len(pos)}


class LabelSelect:
    """``select(key, meta)`` that also needs ``to_int_label(meta["label"]) == label``.

    Examples:
        >>> LabelSelect(0)("k", {"label": "normal"}), LabelSelect(0)("k", {"label": "tumor"})
        (True, False)
    """

    def __init__(self, label: int, select: Callable[[str, dict], bool] | None = None) -> None:
        self.label, self.select = int(label), select

    def __call__(self, key: str, meta: dict) -> bool:
        return to_int_label(meta.get("label")) == self.label and (self.select is None or bool(self.select(key, meta)))
