"""Equality of nested states (dicts, lists, tuples of tensors and plain values), for resume tests."""
from __future__ import annotations

from typing import Any

import torch


def same(a: Any, b: Any) -> bool:
    """``a`` and ``b`` equal throughout: tensors by :func:`torch.equal`, the rest by ``==``.

    >>> same({"g": torch.arange(3), "n": [1, "x"]}, {"g": torch.arange(3), "n": [1, "x"]})
    True
    >>> same({"g": torch.arange(3)}, {"g": torch.zeros(3)})
    False
    """
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same, a, b))
    return a == b
