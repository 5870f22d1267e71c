"""Bootstrap samples of a test set and the ROC AUC of each, vectorised: the machinery under
:mod:`streamaug.eval.stats`.

* :func:`bootstrap_indices` - index samples (images drawn with replacement; or within each class).
* :func:`bootstrap_weights` - samples as case weights: whole groups (patients) drawn with replacement.
* :func:`resampled_auc` / :func:`weighted_auc` - the AUC of every sample at once: a Mann-Whitney
  count on the cases sorted by score once (ties one half, as in sklearn); 2000 samples of 500 cases
  take a few tens of milliseconds.

A sample holding one class only (its AUC undefined) is redrawn, so every call returns exactly
``n_boot`` usable samples, a function of its arguments alone.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["CHUNK_ELEMS", "ArrayLike", "bootstrap_indices", "bootstrap_weights", "check_scores", "resampled_auc",
           "weighted_auc"]

ArrayLike = Sequence[float] | np.ndarray
CHUNK_ELEMS = 4_000_000  #: boots x cases per chunk of the AUC computations (bounds memory)


def check_scores(y: ArrayLike, *scores: ArrayLike) -> tuple[np.ndarray, ...]:
    """Validate binary labels and finite scores of the same length; return numpy arrays."""
    y = np.asarray(y).reshape(-1)
    if not np.isin(y, (0, 1)).all():
        bad = sorted(set(np.unique(y).tolist()) - {0, 1})
        raise ValueError(f"labels must be 0/1 (drop unknown -1 labels first); found {bad}")
    if np.unique(y).size < 2:
        raise ValueError("AUC needs both classes in y")
    out = [y.astype(np.int64)]
    for s in scores:
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        if s.shape != y.shape:
            raise ValueError(f"scores have {s.size} entries, labels {y.size}")
        if not np.isfinite(s).all():
            raise ValueError("scores must be finite")
        out.append(s)
    return tuple(out)


def bootstrap_indices(y: ArrayLike, n_boot: int = 2000, seed: int = 0, *, stratified: bool = False) -> np.ndarray:
    """Bootstrap index samples that each contain both classes.

    Non-stratified (default): rows are drawn uniformly with replacement; a row that holds one
    class only (its AUC is undefined) is *redrawn* from the same generator until it holds both,
    so exactly ``n_boot`` usable samples come back and the result depends only on
    ``(y, n_boot, seed)``. Stratified: each row draws ``n_pos`` positives and ``n_neg``
    negatives, so class counts are fixed.

    Args:
        y: binary labels ``(n,)``.
        n_boot: number of bootstrap samples.
        seed: seed of ``numpy.random.default_rng``.
        stratified: resample within each class.

    Returns:
        Indices into ``y``, ``(n_boot, n)`` int64.
    """
    (y,) = check_scores(y)
    rng = np.random.default_rng(seed)
    n = y.size
    if stratified:
        pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
        return np.concatenate(
            [pos[rng.integers(0, pos.size, (n_boot, pos.size))], neg[rng.integers(0, neg.size, (n_boot, neg.size))]],
            axis=1,
        )
    idx = rng.integers(0, n, (n_boot, n))
    for _ in range(10_000):
        n_pos = y[idx].sum(axis=1)
        bad = (n_pos == 0) | (n_pos == n)
        if not bad.any():
            return idx
        idx[bad] = rng.integers(0, n, (int(bad.sum()), n))
    raise RuntimeError("bootstrap_indices: could not draw samples with both classes")  # pragma: no cover


def _ranked(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(order, starts, is_pos)``: the cases sorted by score, where each run of tied scores starts,
    and which sorted cases are positive."""
    order = np.argsort(score, kind="stable")
    s_sorted = score[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    return order, starts, y[order] == 1


def _auc_of_counts(counts: np.ndarray, starts: np.ndarray, is_pos: np.ndarray) -> np.ndarray:
    """AUC of each row of per-case multiplicities (or weights) in score order: ``U = sum_pos c_pos *
    (negatives below + half the tied negatives)``, ties counting one half as in sklearn."""
    cp, cn = counts * is_pos, counts * ~is_pos
    if starts.size < counts.shape[1]:  # merge tied scores into groups
        cp, cn = np.add.reduceat(cp, starts, axis=1), np.add.reduceat(cn, starts, axis=1)
    neg_below = np.cumsum(cn, axis=1) - cn
    u2 = (cp * (2 * neg_below + cn)).sum(axis=1)
    denom = 2.0 * cp.sum(axis=1) * cn.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, u2 / denom, np.nan)


def resampled_auc(y: ArrayLike, score: ArrayLike, idx: np.ndarray) -> np.ndarray:
    """ROC AUC of every bootstrap sample, vectorised (Mann-Whitney U on sample counts).

    Each row of ``idx`` is turned into per-sample multiplicities; with samples sorted by
    score (ties grouped), ``U = sum_pos c_pos * (negatives below + half the tied negatives)``.
    Ties count one half, exactly as in :func:`sklearn.metrics.roc_auc_score`.

    Args:
        y: binary labels ``(n,)``.
        score: scores ``(n,)``, higher means more likely positive.
        idx: index samples ``(n_boot, m)`` into ``y``.

    Returns:
        AUCs ``(n_boot,)``; ``nan`` for a row holding one class only.
    """
    y, score = check_scores(y, score)
    idx = np.asarray(idx, dtype=np.int64)
    n, n_boot = y.size, idx.shape[0]
    order, starts, is_pos = _ranked(y, score)
    rank_of = np.empty(n, dtype=np.int64)
    rank_of[order] = np.arange(n)
    out = np.empty(n_boot, dtype=np.float64)
    step = max(1, CHUNK_ELEMS // max(n, idx.shape[1]))
    for a in range(0, n_boot, step):
        rows = rank_of[idx[a : a + step]]  # positions in sorted order
        k = rows.shape[0]
        counts = np.bincount((rows + n * np.arange(k)[:, None]).ravel(), minlength=k * n).reshape(k, n)
        out[a : a + k] = _auc_of_counts(counts, starts, is_pos)
    return out


def weighted_auc(y: ArrayLike, score: ArrayLike, weights: np.ndarray) -> np.ndarray:
    """ROC AUC under each row of case weights (e.g. :func:`bootstrap_weights`), ties counting one half.

    Args:
        y: binary labels ``(n,)``.
        score: scores ``(n,)``.
        weights: ``(n_boot, n)`` or ``(n,)`` non-negative weights of the cases.

    Returns:
        AUCs ``(n_boot,)``; ``nan`` for a row without weight on one class.

    Examples:
        >>> float(weighted_auc([0, 1, 0, 1], [0.1, 0.4, 0.5, 0.8], np.ones(4))[0])
        0.75
    """
    y, score = check_scores(y, score)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if w.shape[1] != y.size:
        raise ValueError(f"weights have {w.shape[1]} columns, labels {y.size}")
    order, starts, is_pos = _ranked(y, score)
    step = max(1, CHUNK_ELEMS // y.size)
    return np.concatenate([_auc_of_counts(w[a : a + step][:, order], starts, is_pos)
                           for a in range(0, w.shape[0], step)])


def bootstrap_weights(y: ArrayLike, n_boot: int = 2000, seed: int = 0, *,
                      groups: Sequence[object] | None = None) -> np.ndarray:
    """Bootstrap samples as case weights: each row draws as many groups as there are, with
    replacement, and every case weighs its group's count (``groups=None``: each case is a group).

    Rows that put no weight on one class are redrawn, so ``n_boot`` usable rows come back and the
    result depends only on ``(y, groups, n_boot, seed)``.

    Args:
        y: binary labels ``(n,)``.
        n_boot: bootstrap samples.
        seed: seed of ``numpy.random.default_rng``.
        groups: ``(n,)`` group ids (e.g. the patient of each image), or None.

    Returns:
        ``(n_boot, n)`` int64 weights.
    """
    (y,) = check_scores(y)
    if groups is None:
        g = np.arange(y.size)
    else:
        if len(groups) != y.size:
            raise ValueError(f"groups has {len(groups)} entries, labels {y.size}")
        g = np.unique(np.asarray([str(x) for x in groups]), return_inverse=True)[1].reshape(-1)
    n_groups = int(g.max()) + 1
    rng = np.random.default_rng(seed)
    p = np.full(n_groups, 1.0 / n_groups)
    w = rng.multinomial(n_groups, p, size=n_boot)[:, g]
    for _ in range(10_000):
        pos = (w * (y == 1)).sum(axis=1)
        bad = (pos == 0) | (pos == w.sum(axis=1))
        if not bad.any():
            return w.astype(np.int64)
        w[bad] = rng.multinomial(n_groups, p, size=int(bad.sum()))[:, g]
    raise RuntimeError("bootstrap_weights: could not draw samples with both classes")  # pragma: no cover
