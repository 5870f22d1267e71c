"""Best-first choice of synthetic candidates: the ``k`` highest scores, at most one per group."""
from __future__ import annotations

import torch

__all__ = ["select_top"]


def select_top(scores: torch.Tensor, k: int | None = None, *, eligible: torch.Tensor | None = None,
               groups: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the ``k`` best eligible candidates, at most one per group (e.g. per source image).

    Candidates are taken in order of decreasing score (NaN scores last; ties and NaNs in index
    order); a candidate is skipped when it is not ``eligible`` or its group already gave one.

    Args:
        scores: ``(K,)`` scores, higher is better (NaN: unscored, e.g. no filter).
        k: how many to keep at most (None: every eligible candidate that the group rule allows).
        eligible: ``(K,)`` bool, e.g. ``scores >= threshold`` (None: all).
        groups: ``(K,)`` int group of each candidate (None: every candidate its own group).

    Returns:
        ``(K,)`` bool keep mask on the device of ``scores``.

    Examples:
        >>> s = torch.tensor([0.2, 0.9, 0.8, 0.1])
        >>> select_top(s, 2).tolist()
        [False, True, True, False]
        >>> select_top(s, 2, groups=torch.tensor([0, 1, 1, 2])).tolist()
        [True, True, False, False]
        >>> select_top(s, None, eligible=s >= 0.5).tolist()
        [False, True, True, False]
    """
    n = scores.shape[0]
    keep = torch.zeros(n, dtype=torch.bool, device=scores.device)
    if n == 0 or k == 0:
        return keep
    key = scores.float().nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    order = torch.sort(key, descending=True, stable=True).indices
    if eligible is not None:
        order = order[eligible.to(scores.device)[order]]
    if groups is not None and len(order):
        _, inverse = torch.unique(groups.to(scores.device)[order], return_inverse=True)
        pos = torch.arange(len(order), device=scores.device)
        first = torch.full((int(inverse.max()) + 1,), len(order), device=scores.device, dtype=pos.dtype)
        first = first.scatter_reduce(0, inverse, pos, reduce="amin")
        order = order[torch.sort(first).values]  # first (best) candidate of each group, best first
    keep[order if k is None else order[:k]] = True
    return keep
