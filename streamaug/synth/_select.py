"""A picklable sample selection restricted to one label (decided before decoding, like ``select``)."""
from __future__ import annotations

from typing import Callable

from streamaug.io.labels import to_int_label


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
