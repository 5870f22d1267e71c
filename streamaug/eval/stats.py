"""Classifier evaluation as in Gupta et al. (MIDL 2019, §4.4): AUC, bootstrap CIs, paired tests.

* :func:`bootstrap_auc` - ROC AUC with a percentile bootstrap 95% CI.
* :func:`paired_bootstrap` - AUC(b) - AUC(a) on the *same* bootstrap samples; the
  difference is significant when its 95% CI excludes 0 (:func:`is_significant`).
* :func:`paired_bootstrap_seeds` - the same for models trained at several seeds: the per-seed
  differences averaged on each bootstrap sample of the (shared) test set.
* :func:`operating_point` - the threshold minimising ``(1 - TPR)^2 + FPR^2`` on a
  validation ROC curve; :func:`sens_spec_at` applies it to a test set.
* :func:`plot_roc`, :func:`score_loader`, :func:`save_scores` / :func:`load_scores`.

Bootstrap samples are drawn by :func:`bootstrap_indices` from ``(y, n_boot, seed)`` only, so
every model scored on the same labels with the same seed sees the same samples - the paper's
"all models are compared on the same set of bootstrap samples". The resampled AUCs are computed
for all samples at once with a rank (Mann-Whitney) formula on per-sample counts
(:func:`resampled_auc`): 2000 boots of 500 samples take a few tens of milliseconds.

The command line lives in :mod:`streamaug.eval.__main__` (``python -m streamaug.eval``).
"""
from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from streamaug._optional import optional_import

ArrayLike = Sequence[float] | np.ndarray
_CHUNK_ELEMS = 4_000_000  # boots x samples per chunk in resampled_auc (bounds memory)


def _check(y: ArrayLike, *scores: ArrayLike) -> tuple[np.ndarray, ...]:
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
    (y,) = _check(y)
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
    y, score = _check(y, score)
    idx = np.asarray(idx, dtype=np.int64)
    n, n_boot = y.size, idx.shape[0]
    order = np.argsort(score, kind="stable")
    s_sorted = score[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    is_pos = y[order] == 1
    rank_of = np.empty(n, dtype=np.int64)
    rank_of[order] = np.arange(n)
    out = np.empty(n_boot, dtype=np.float64)
    step = max(1, _CHUNK_ELEMS // max(n, idx.shape[1]))
    for a in range(0, n_boot, step):
        rows = rank_of[idx[a : a + step]]  # positions in sorted order
        k = rows.shape[0]
        counts = np.bincount((rows + n * np.arange(k)[:, None]).ravel(), minlength=k * n).reshape(k, n)
        cp, cn = counts * is_pos, counts * ~is_pos
        if starts.size < n:  # merge tied scores into groups
            cp, cn = np.add.reduceat(cp, starts, axis=1), np.add.reduceat(cn, starts, axis=1)
        neg_below = np.cumsum(cn, axis=1) - cn
        u2 = (cp * (2 * neg_below + cn)).sum(axis=1)
        denom = 2.0 * cp.sum(axis=1) * cn.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[a : a + k] = np.where(denom > 0, u2 / denom, np.nan)
    return out


def _ci(values: np.ndarray, ci: float) -> tuple[float, float]:
    lo, hi = np.nanpercentile(values, [50 * (1 - ci), 50 * (1 + ci)])
    return float(lo), float(hi)


def bootstrap_auc(
    y: ArrayLike, score: ArrayLike, n_boot: int = 2000, seed: int = 0, *, ci: float = 0.95, stratified: bool = False
) -> tuple[float, float, float]:
    """ROC AUC with a percentile bootstrap confidence interval.

    Args:
        y: binary labels ``(n,)`` (0 normal, 1 lesion).
        score: scores ``(n,)``.
        n_boot: bootstrap samples (one-class samples are redrawn, see :func:`bootstrap_indices`).
        seed: bootstrap seed.
        ci: coverage of the interval.
        stratified: resample within each class.

    Returns:
        ``(auc, lo, hi)``: ``auc`` is ``roc_auc_score(y, score)`` on all data.

    Examples:
        >>> auc, lo, hi = bootstrap_auc([0, 0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
        >>> round(auc, 3)
        0.889
    """
    y, score = _check(y, score)
    boots = resampled_auc(y, score, bootstrap_indices(y, n_boot, seed, stratified=stratified))
    return (float(roc_auc_score(y, score)), *_ci(boots, ci))


def paired_bootstrap(
    y: ArrayLike,
    score_a: ArrayLike,
    score_b: ArrayLike,
    n_boot: int = 2000,
    seed: int = 0,
    *,
    ci: float = 0.95,
    stratified: bool = False,
) -> tuple[float, float, float]:
    """Paired bootstrap of the AUC difference ``AUC(b) - AUC(a)`` (§4.4).

    Both models are scored on the same index samples, so the CI reflects the
    bootstrap-wise difference, not two independent intervals.

    Args:
        y: binary labels ``(n,)``.
        score_a: baseline scores ``(n,)``.
        score_b: compared model's scores ``(n,)``, for the same samples in the same order.
        n_boot: bootstrap samples.
        seed: bootstrap seed.
        ci: coverage of the interval.
        stratified: resample within each class.

    Returns:
        ``(delta, lo, hi)``; significant when ``[lo, hi]`` excludes 0 (:func:`is_significant`).
    """
    y, score_a, score_b = _check(y, score_a, score_b)
    idx = bootstrap_indices(y, n_boot, seed, stratified=stratified)
    diffs = resampled_auc(y, score_b, idx) - resampled_auc(y, score_a, idx)
    delta = float(roc_auc_score(y, score_b) - roc_auc_score(y, score_a))
    return (delta, *_ci(diffs, ci))


def paired_bootstrap_seeds(
    y: ArrayLike,
    scores_a: Sequence[ArrayLike],
    scores_b: Sequence[ArrayLike],
    n_boot: int = 2000,
    seed: int = 0,
    *,
    ci: float = 0.95,
    stratified: bool = False,
) -> tuple[float, float, float]:
    """Seed-averaged paired bootstrap: ``mean_k [AUC(b_k) - AUC(a_k)]`` over seeds ``k``.

    For two training recipes each run at the same seeds and scored on one test set. Every
    bootstrap sample resamples the test *cases* once and scores all seeds' models on it, so the
    CI holds the test-set noise and the spread between seeds. Unlike :func:`paired_bootstrap` on
    predictions pooled over seeds, it compares rankings seed by seed: a seed whose scores sit on
    a different scale (calibration) does not lower the AUC.

    Args:
        y: binary labels ``(n,)`` of the test set (the same cases, in the same order, for every model).
        scores_a: baseline scores, one ``(n,)`` array per seed.
        scores_b: compared recipe's scores, one ``(n,)`` array per seed, seeds in the same order.
        n_boot: bootstrap samples.
        seed: bootstrap seed.
        ci: coverage of the interval.
        stratified: resample within each class.

    Returns:
        ``(delta, lo, hi)``; with one seed, exactly :func:`paired_bootstrap`.

    Raises:
        ValueError: with no seeds, or a different number of seeds for ``a`` and ``b``.

    Examples:
        >>> y = np.array([0, 0, 1, 1] * 25)
        >>> good, bad = [y + 0.1 * k for k in range(3)], [np.tile([0.2, 0.4, 0.3, 0.5], 25)] * 3
        >>> round(paired_bootstrap_seeds(y, bad, good, n_boot=200)[0], 3)
        0.25
    """
    if len(scores_a) != len(scores_b) or not scores_a:
        raise ValueError(f"need the same, non-zero number of seeds for a and b; "
                         f"got {len(scores_a)} and {len(scores_b)}")
    (y,) = _check(y)
    idx = bootstrap_indices(y, n_boot, seed, stratified=stratified)
    diffs = np.zeros(idx.shape[0])
    delta = 0.0
    for a, b in zip(scores_a, scores_b):
        y, a, b = _check(y, a, b)
        diffs += resampled_auc(y, b, idx) - resampled_auc(y, a, idx)
        delta += float(roc_auc_score(y, b) - roc_auc_score(y, a))
    k = len(scores_a)
    return (delta / k, *_ci(diffs / k, ci))


def is_significant(result: Sequence[float]) -> bool:
    """Whether a ``(delta, lo, hi)`` from :func:`paired_bootstrap` has a CI excluding 0."""
    _, lo, hi = result
    return bool(lo > 0 or hi < 0)


def sens_spec_at(y: ArrayLike, score: ArrayLike, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity when ``score >= threshold`` is called positive.

    Args:
        y: binary labels ``(n,)``.
        score: scores ``(n,)``.
        threshold: decision threshold (``>=``, the :func:`sklearn.metrics.roc_curve` convention).

    Returns:
        ``(sensitivity, specificity)``.
    """
    y, score = _check(y, score)
    pred = score >= threshold
    return float(pred[y == 1].mean()), float((~pred[y == 0]).mean())


def operating_point(y_val: ArrayLike, score_val: ArrayLike) -> dict[str, float]:
    """The ROC point minimising ``(1 - TPR)^2 + FPR^2`` (closest to the top-left corner).

    Chosen on the validation set and then applied to the test set with :func:`sens_spec_at`.
    Ties go to the highest threshold. A classifier no better than "all negative" gets
    ``threshold = inf``.

    Args:
        y_val: binary labels ``(n,)``.
        score_val: scores ``(n,)``.

    Returns:
        ``{"threshold", "sensitivity", "specificity"}`` on the validation data.
    """
    y, score = _check(y_val, score_val)
    fpr, tpr, thr = roc_curve(y, score, drop_intermediate=False)
    k = int(np.argmin((1.0 - tpr) ** 2 + fpr**2))
    return {"threshold": float(thr[k]), "sensitivity": float(tpr[k]), "specificity": float(1.0 - fpr[k])}


def plot_roc(
    path: str | os.PathLike[str],
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    title: str = "ROC",
    *,
    n_boot: int = 0,
    seed: int = 0,
    thresholds: Mapping[str, float] | None = None,
) -> Path:
    """Write ROC curves to a PNG, AUC (and optionally its bootstrap CI) in the legend.

    Args:
        path: output ``.png``; parent folders are created.
        curves: ``name -> (y, score)``.
        title: plot title.
        n_boot: when > 0, the legend also shows the bootstrap 95% CI.
        seed: bootstrap seed.
        thresholds: ``name -> threshold`` operating points to mark on the curves.

    Returns:
        The path written.
    """
    optional_import("matplotlib", extra="streamaug[plots]", purpose="ROC plots")
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(5, 5), dpi=120)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1)
    for name, (y, score) in curves.items():
        y, score = _check(y, score)
        fpr, tpr, _ = roc_curve(y, score)
        if n_boot > 0:
            auc, lo, hi = bootstrap_auc(y, score, n_boot, seed)
            label = f"{name}: AUC {auc:.3f} ({lo:.3f}-{hi:.3f})"
        else:
            label = f"{name}: AUC {roc_auc_score(y, score):.3f}"
        (line,) = ax.plot(fpr, tpr, lw=1.5, label=label)
        if thresholds and name in thresholds:
            sens, spec = sens_spec_at(y, score, thresholds[name])
            ax.plot([1 - spec], [sens], "o", c=line.get_color())
    ax.set(xlabel="False positive rate (1 - specificity)", ylabel="True positive rate (sensitivity)", title=title)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
    ax.legend(loc="lower right", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def score_loader(
    model: torch.nn.Module, loader: Iterable[dict], device: str | torch.device = "cpu", *, logits: bool = False
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Score every batch of a loader with a single-logit classifier.

    Runs under ``torch.no_grad`` in eval mode and restores the model's previous mode.

    Args:
        model: maps ``(B, 1, H, W)`` to logits ``(B,)`` (or ``(B, 1)``).
        loader: batches of sample dicts: ``image`` ``(B, 1, H, W)``, ``label`` ``(B,)``
            long, ``key`` list of ``B`` strings.
        device: where to run the model.
        logits: return raw logits instead of ``sigmoid`` probabilities.

    Returns:
        ``(y, scores, keys)``: labels ``(N,)`` int64 as given (``-1`` unknown kept),
        scores ``(N,)`` float64, keys list of ``N`` strings.
    """
    was_training = model.training
    model.eval()
    ys: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    keys: list[str] = []
    try:
        with torch.no_grad():
            for batch in loader:
                x = batch["image"].to(device, non_blocking=True)
                out = model(x).float().reshape(-1)
                if out.numel() != x.shape[0]:
                    raise ValueError(f"model gave {out.numel()} outputs for a batch of {x.shape[0]}")
                if not logits:
                    out = torch.sigmoid(out)
                scores.append(out.cpu().numpy().astype(np.float64))
                ys.append(torch.as_tensor(batch["label"]).reshape(-1).cpu().numpy().astype(np.int64))
                keys.extend(str(k) for k in batch["key"])
    finally:
        model.train(was_training)
    if not ys:
        return np.zeros(0, np.int64), np.zeros(0, np.float64), []
    return np.concatenate(ys), np.concatenate(scores), keys


def save_scores(path: str | os.PathLike[str], y: ArrayLike, scores: ArrayLike, keys: Sequence[str]) -> Path:
    """Write ``key,label,score`` rows (the CLI's input)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "label", "score"])
        w.writerows((k, int(lab), repr(float(s))) for k, lab, s in zip(keys, y, scores, strict=True))
    return path


def load_scores(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a file written by :func:`save_scores`: ``(y, scores, keys)``."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    y = np.array([int(r["label"]) for r in rows], dtype=np.int64)
    return y, np.array([float(r["score"]) for r in rows]), [r["key"] for r in rows]
