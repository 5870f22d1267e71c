"""Sample selection decided before decoding: ``select(key, metadata) -> bool`` for :class:`XRayShards`."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from streamaug.data.shardlist import expand_urls, scan_metadata
from streamaug.io.labels import to_int_label

__all__ = ["AllOf", "KeySelect", "KeySet", "LabelSelect", "check_select", "matched_normals", "positive_keys",
           "rare_positive_select"]


def check_select(select: object, name: str = "select") -> None:
    """Refuse a ``select`` that is not None or a callable ``select(key, metadata) -> bool``.

    Raises:
        TypeError: naming the argument; for a tuple, the likely cause (``matched_normals`` and
            ``rare_positive_select`` return ``(select, counts)``).
    """
    if select is None or callable(select):
        return
    hint = (": matched_normals and rare_positive_select return (select, counts); pass the first item"
            if isinstance(select, tuple) else "")
    raise TypeError(f"{name} must be a callable {name}(key, metadata) -> bool, got a {type(select).__name__}{hint}")


class KeySelect:
    """Picklable ``select(key, meta)``: one region, (optionally) only the listed positives, and
    (``labelled=True``, what a classifier trains and validates on) only known labels, 0 or 1.

    Examples:
        >>> KeySelect(None)("k", {"label": "unknown"}), KeySelect(None, labelled=True)("k", {"label": "unknown"})
        (True, False)
    """

    def __init__(self, region: str | None, positives: frozenset[str] | None = None, *, labelled: bool = False) -> None:
        self.region, self.positives, self.labelled = region, positives, labelled

    def __repr__(self) -> str:
        kept = "" if self.positives is None else f", positives=<{len(self.positives)} keys>"
        return f"KeySelect(region={self.region!r}{kept}{', labelled=True' if self.labelled else ''})"

    def __call__(self, key: str, meta: dict) -> bool:
        if self.region is not None and meta.get("region") != self.region:
            return False
        label = to_int_label(meta.get("label")) if self.positives is not None or self.labelled else None
        if self.labelled and label == -1:
            return False
        if self.positives is not None and label == 1:
            return key in self.positives
        return True


def positive_keys(shards: str | Sequence[str], split: str | None, region: str | None) -> frozenset[str]:
    """Keys of the positives (label 1) of ``shards`` in ``split`` and ``region``, from the shards'
    metadata (no image decoded).

    Raises:
        ShardError: the shards cannot be found or scanned.
    """
    keep = KeySelect(region)
    return frozenset(str(k) for url in expand_urls(shards, split) for k, m in scan_metadata(url)
                     if keep(k, m) and to_int_label(m.get("label")) == 1)


def rare_positive_select(shards: str | list[str], split: str | None, region: str | None,
                         ratio: float | None, seed: int) -> tuple[KeySelect, dict[str, int]]:
    """The selection of the rare-disease setting: keep ``round(ratio * normals)`` positives of the
    region, drawn with ``seed`` (all when ``ratio`` is None), and no image whose label is unknown.
    Returns ``(select, counts)``: ``positives`` kept, ``normals``, ``positives_available`` and
    ``unknown`` (the region's images left out for their label)."""
    region_only = KeySelect(region)
    metas = [(k, m) for s in expand_urls(shards, split) for k, m in scan_metadata(s) if region_only(k, m)]
    labels = [to_int_label(m.get("label")) for _, m in metas]
    pos = sorted(k for (k, _), label in zip(metas, labels) if label == 1)
    neg, unknown = labels.count(0), labels.count(-1)
    k = len(pos) if ratio is None else min(len(pos), round(ratio * neg))
    counts = {"positives": k, "normals": neg, "positives_available": len(pos), "unknown": unknown}
    if ratio is None:
        return KeySelect(region, None, labelled=True), counts
    kept = np.random.default_rng([seed, 0xA7E]).choice(len(pos), size=k, replace=False) if k else []
    return KeySelect(region, frozenset(pos[i] for i in kept), labelled=True), counts


class LabelSelect:
    """``select(key, meta)`` that also needs ``to_int_label(meta["label"]) == label``.

    Examples:
        >>> LabelSelect(0)("k", {"label": "normal"}), LabelSelect(0)("k", {"label": "tumor"})
        (True, False)
    """

    def __init__(self, label: int, select: Callable[[str, dict], bool] | None = None) -> None:
        self.label, self.select = int(label), select

    def __repr__(self) -> str:
        inner = "" if self.select is None or getattr(self.select, "selects", None) == () else f", {self.select!r}"
        return f"LabelSelect(label={self.label}{inner})"

    def __call__(self, key: str, meta: dict) -> bool:
        return to_int_label(meta.get("label")) == self.label and (self.select is None or bool(self.select(key, meta)))


class KeySet:
    """Picklable ``select(key, meta)``: only the listed keys.

    Examples:
        >>> KeySet({"a"})("a", {}), KeySet({"a"})("b", {})
        (True, False)
    """

    def __init__(self, keys: frozenset[str] | set[str]) -> None:
        self.keys = frozenset(keys)

    def __repr__(self) -> str:
        return f"KeySet(<{len(self.keys)} keys>)"

    def __call__(self, key: str, meta: dict) -> bool:
        return key in self.keys


class AllOf:
    """Picklable ``select(key, meta)`` that needs every one of ``selects`` (None entries are skipped).

    Examples:
        >>> AllOf(KeySet({"a", "b"}), None, KeySet({"b"}))("b", {}), AllOf(KeySet({"a"}), KeySet({"b"}))("a", {})
        (True, False)
    """

    def __init__(self, *selects: Callable[[str, dict], bool] | None) -> None:
        self.selects = tuple(s for s in selects if s is not None)

    def __repr__(self) -> str:
        return f"AllOf({', '.join(map(repr, self.selects))})"

    def __call__(self, key: str, meta: dict) -> bool:
        return all(bool(s(key, meta)) for s in self.selects)


def _number(value: object) -> float | None:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


def matched_normals(shards: str | list[str], split: str | None, select: Callable[[str, dict], bool],
                    column: str, seed: int, bins: int = 5) -> tuple[KeySet, dict]:
    """The normals of ``select`` subsampled so that the numeric metadata ``column`` (e.g. ``age``) is
    distributed as among the positives of ``select`` (the kept ones, in the rare-positive setting).

    Synthetic positives are made from normal images, and a classifier learns whatever tells positives
    from normals, the image context included (on BTXRD the tumour patients are younger: open growth
    plates). Drawing the synthesis sources from normals that look like the positives in that respect
    keeps the synthetic positives from contradicting it. The positives' values are cut into ``bins``
    bins of equal positive count (edges at their quantiles, the outer bins open-ended), and the same
    number of normals, ``min`` over the bins that hold any, is drawn from each bin with ``seed``.
    Normals without a numeric value are left out; so are all normals of a bin that holds none (the
    count ``unmatched_bins`` says how many bins of positives found no normal).

    Returns:
        ``(select, counts)``: a :class:`KeySet` of the chosen normals (use it as a source select,
        e.g. ``LesionStream(source_select=...)``) and ``{"sources", "normals", "positives",
        "per_bin", "edges", "unmatched_bins"}``.

    Raises:
        ValueError: no selected positive, or no selected normal, has a numeric ``column``; ``bins < 1``.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    metas = [(k, m) for s in expand_urls(shards, split) for k, m in scan_metadata(s) if select(k, m)]
    pos = [x for k, m in metas if to_int_label(m.get("label")) == 1 and (x := _number(m.get(column))) is not None]
    normals = sorted(((k, _number(m.get(column))) for k, m in metas if to_int_label(m.get("label")) == 0),
                     key=lambda kx: kx[0])
    if not pos:
        raise ValueError(f"matching normals on {column!r}: no selected positive has a number in that column "
                         "(a metadata column of the packed CSV, e.g. age)")
    edges = np.unique(np.quantile(pos, np.linspace(0, 1, bins + 1)[1:-1]))
    groups: list[list[str]] = [[] for _ in range(len(edges) + 1)]
    for key, x in normals:
        if x is not None:
            groups[int(np.searchsorted(edges, x, side="right"))].append(key)
    filled = [g for g in groups if g]
    per_bin = min((len(g) for g in filled), default=0)
    rng = np.random.default_rng([seed, 0x5EC])
    keys = [g[i] for g in filled for i in sorted(rng.choice(len(g), size=per_bin, replace=False))]
    if not keys:
        raise ValueError(f"matching normals on {column!r}: none of the {len(normals)} selected normals has a number "
                         "in that column, so none can be a synthesis source")
    return KeySet(frozenset(keys)), {"sources": len(keys), "normals": len(normals), "positives": len(pos),
                                     "per_bin": per_bin, "edges": [float(e) for e in edges],
                                     "unmatched_bins": len(groups) - len(filled)}
