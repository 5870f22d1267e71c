"""Label conventions: one integer per image (1 lesion, 0 normal, -1 unknown)."""
from __future__ import annotations

from typing import Any

#: Label strings read as "no lesion" (compared case-insensitively).
NEGATIVE_LABELS = frozenset({"normal", "negative", "healthy", "no finding", "no_finding", "0", "false"})
#: Label strings read as "unknown".
UNKNOWN_LABELS = frozenset({"", "unknown", "nan", "none", "-1"})


def to_int_label(value: Any) -> int:
    """Map a label as stored in the metadata to ``1`` (lesion), ``0`` (normal) or ``-1`` (unknown).

    >>> [to_int_label(v) for v in ("tumor", "normal", 1, 0, None, "Atelectasis")]
    [1, 0, 1, 0, -1, 1]
    """
    if value is None:
        return -1
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return -1 if value != value or value < 0 else int(value > 0)  # NaN -> unknown
    text = str(value).strip().lower()
    if text in UNKNOWN_LABELS:
        return -1
    return 0 if text in NEGATIVE_LABELS else 1
