"""Label conventions: one integer per image (1 lesion, 0 normal, -1 unknown)."""
from __future__ import annotations

import re
from typing import Any

#: Label strings read as "no lesion" (compared case-insensitively, after stripping whitespace).
NEGATIVE_LABELS = frozenset({"normal", "negative", "healthy", "no finding", "no_finding", "0", "false", "no",
                             "absent"})
#: Label strings read as "unknown".
UNKNOWN_LABELS = frozenset({"", "unknown", "nan", "none", "-1", "n/a", "na", "null", "?"})
#: A plain decimal number (``2``, ``0.0``, ``-1``, ``1e0``): ASCII digits only, no ``_``, ``inf`` or ``nan``.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def to_int_label(value: Any) -> int:
    """Map a label as stored in the metadata to ``1`` (lesion), ``0`` (normal) or ``-1`` (unknown).

    Numbers, and strings that are plain decimal numbers (``"0.0"``, ``"2"``), map by sign: zero is
    normal, positive is lesion, negative (or NaN) is unknown. Strings in :data:`UNKNOWN_LABELS` and
    :data:`NEGATIVE_LABELS` are unknown and normal; any other text is a finding (``"Atelectasis"``,
    ``"benign"``, ``"tumor"``) and maps to lesion.

    >>> [to_int_label(v) for v in ("tumor", "normal", 1, 0, None, "Atelectasis")]
    [1, 0, 1, 0, -1, 1]
    >>> [to_int_label(v) for v in ("0.0", "1.0", "2", "-3", "No", " N/A ", "?", "benign")]
    [0, 1, 1, -1, 0, -1, -1, 1]
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
    if text in NEGATIVE_LABELS:
        return 0
    if _NUMBER.fullmatch(text):
        return to_int_label(float(text))
    return 1
