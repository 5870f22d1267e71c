"""Classifier evaluation as in Gupta et al. (MIDL 2019, §4.4): AUC, bootstrap CIs, paired tests.

* :func:`bootstrap_auc` - ROC AUC with a percentile bootstrap 95% CI.
* :func:`paired_bootstrap` - AUC(b) - AUC(a) on the *same* bootstrap samples; the
  difference is significant when its 95% CI excludes 0 (:func:`is_significant`).
* :func:`paired_bootstrap_seeds` - the same for recipes trained at several seeds: the mean per-seed
  difference, with an interval that holds both the spread between seeds and the test-set noise.
* :func:`pooled_bootstrap` - the AUC of the predictions of several seeds pooled, resampling seeds
  and test cases (descriptive: the seed-averaged difference is the test).
* :func:`operating_point` - the threshold minimising ``(1 - TPR)^2 + FPR^2`` on a
  validation ROC curve; :func:`sens_spec_at` applies it to a test set.
* :func:`plot_roc`, :func:`score_loader` (score files: :mod:`streamaug.eval.score_files`).

Resampling unit: images by default; with ``groups`` (a patient id per test image) whole groups,
as images of one patient are not independent. Bootstrap samples (:mod:`streamaug.eval.bootstrap`)
are a function of ``(y, groups, n_boot, seed)`` only, so every model scored on the same labels with
the same seed sees the same samples - the paper's "all models are compared on the same set of
bootstrap samples".

The command line lives in :mod:`streamaug.eval.__main__` (``python -m streamaug.eval``).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from streamaug._optional import optional_import
from streamaug.eval.bootstrap import (
    CHUNK_ELEMS,
    ArrayLike,
    bootstrap_indices,
    bootstrap_weights,
    check_scores,
    resampled_auc,
    weighted_auc,
)


def _ci(values: np.ndarray, ci: float) -> tuple[float, float]:
    lo, hi = np.nanpercentile(values, [50 * (1 - ci), 50 * (1 + ci)])
    return float(lo), float(hi)


def _boot_aucs(y: np.ndarray, n_boot: int, seed: int, stratified: bool,
               groups: Sequence[object] | None) -> Callable[[np.ndarray], np.ndarray]:
    """``score -> (n_boot,) AUCs`` on one fixed set of bootstrap samples of the test cases."""
    if groups is not None:
        if stratified:
            raise ValueError("stratified resampling works on images; pass groups=None or stratified=False")
        w = bootstrap_weights(y, n_boot, seed, groups=groups)
        return lambda score: weighted_auc(y, score, w)
    idx = bootstrap_indices(y, n_boot, seed, stratified=stratified)
    return lambda score: resampled_auc(y, score, idx)


def bootstrap_auc(
    y: ArrayLike, score: ArrayLike, n_boot: int = 2000, seed: int = 0, *, ci: float = 0.95, stratified: bool = False,
    groups: Sequence[object] | None = None,
) -> tuple[float, float, float]:
    """ROC AUC with a percentile bootstrap confidence interval.

    Args:
        y: binary labels ``(n,)`` (0 normal, 1 lesion).
        score: scores ``(n,)``.
        n_boot: bootstrap samples (one-class samples are redrawn, see :func:`bootstrap_indices`).
        seed: bootstrap seed.
        ci: coverage of the interval.
        stratified: resample within each class (images only).
        groups: ``(n,)`` patient (or other cluster) of each case: resample whole groups.

    Returns:
        ``(auc, lo, hi)``: ``auc`` is ``roc_auc_score(y, score)`` on all data.

    Examples:
        >>> auc, lo, hi = bootstrap_auc([0, 0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
        >>> round(auc, 3)
        0.889
    """
    y, score = check_scores(y, score)
    boots = _boot_aucs(y, n_boot, seed, stratified, groups)(score)
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
    groups: Sequence[object] | None = None,
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
        stratified: resample within each class (images only).
        groups: ``(n,)`` patient (or other cluster) of each case: resample whole groups.

    Returns:
        ``(delta, lo, hi)``; significant when ``[lo, hi]`` excludes 0 (:func:`is_significant`).
    """
    y, score_a, score_b = check_scores(y, score_a, score_b)
    boot = _boot_aucs(y, n_boot, seed, stratified, groups)
    diffs = boot(score_b) - boot(score_a)
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
    groups: Sequence[object] | None = None,
) -> tuple[float, float, float]:
    """Seed-averaged paired difference ``mean_k [AUC(b_k) - AUC(a_k)]`` over seeds ``k``, with an
    interval for the recipes, not for these particular trained models.

    For two training recipes each run at the same seeds and scored on one test set. Two things
    move the mean difference: which models the seeds happened to train (the spread of the per-seed
    differences, ``s``) and which cases the test set happened to hold (``v``: the variance of the
    mean difference over bootstrap samples of the test cases, every seed's models scored on each
    sample). With ``K >= 2`` seeds the interval is ``delta +- t(K-1) * sqrt(s^2 / K + v)``; with one
    seed it is the percentile interval of the test bootstrap (exactly :func:`paired_bootstrap`),
    which holds the test-set noise only. Seed by seed, a seed whose scores sit on another scale
    (calibration) does not lower the AUC, unlike pooling the predictions.

    Args:
        y: binary labels ``(n,)`` of the test set (the same cases, in the same order, for every model).
        scores_a: baseline scores, one ``(n,)`` array per seed.
        scores_b: compared recipe's scores, one ``(n,)`` array per seed, seeds in the same order.
        n_boot: bootstrap samples of the test set.
        seed: bootstrap seed.
        ci: coverage of the interval.
        stratified: resample within each class (images only).
        groups: ``(n,)`` patient (or other cluster) of each test case: resample whole groups.

    Returns:
        ``(delta, lo, hi)``; significant when ``[lo, hi]`` excludes 0 (:func:`is_significant`).

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
    (y,) = check_scores(y)
    boot = _boot_aucs(y, n_boot, seed, stratified, groups)
    per_seed, diffs = [], np.zeros(n_boot)
    for a, b in zip(scores_a, scores_b):
        y, a, b = check_scores(y, a, b)
        diffs += boot(b) - boot(a)
        per_seed.append(float(roc_auc_score(y, b) - roc_auc_score(y, a)))
    k = len(per_seed)
    delta, diffs = float(np.mean(per_seed)), diffs / k
    if k == 1:
        return (delta, *_ci(diffs, ci))
    from scipy.stats import t as student_t

    se = float(np.sqrt(np.var(per_seed, ddof=1) / k + np.var(diffs, ddof=1)))
    half = float(student_t.ppf(0.5 + ci / 2, k - 1)) * se
    return delta, delta - half, delta + half


def pooled_bootstrap(
    y: ArrayLike,
    scores: Sequence[ArrayLike],
    reference: Sequence[ArrayLike] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    *,
    ci: float = 0.95,
    groups: Sequence[object] | None = None,
) -> tuple[float, float, float]:
    """AUC of the predictions of ``K`` seeds pooled (each seed's scores of one test set, concatenated),
    or with ``reference`` its paired difference ``pooled AUC(scores) - pooled AUC(reference)``.

    Each bootstrap sample draws the seeds (as many as there are, with replacement) and the test
    cases (or ``groups``) once, and weighs every seed's copy of a case by both counts: copies of
    one case across seeds are not independent cases. Descriptive: pooling also lowers the AUC by
    the seeds' calibration offsets, and with few seeds the interval is too narrow; the recipes are
    compared by :func:`paired_bootstrap_seeds`.

    Args:
        y: binary labels ``(n,)`` of the test set.
        scores: one ``(n,)`` array per seed.
        reference: the other recipe's scores at the same seeds, or None.
        n_boot: bootstrap samples.
        seed: bootstrap seed.
        ci: coverage of the interval.
        groups: ``(n,)`` patient of each test case, or None (images).

    Returns:
        ``(auc, lo, hi)`` or, with ``reference``, ``(delta, lo, hi)``.
    """
    (y,) = check_scores(y)
    k = len(scores)
    if not k or (reference is not None and len(reference) != k):
        raise ValueError("need one score array per seed, and as many for the reference")
    pooled = np.concatenate([check_scores(y, sc)[1] for sc in scores])
    ref = None if reference is None else np.concatenate([check_scores(y, sc)[1] for sc in reference])
    y_all = np.tile(y, k)
    value = float(roc_auc_score(y_all, pooled) - (roc_auc_score(y_all, ref) if ref is not None else 0.0))
    rng = np.random.default_rng([seed, 0x5EED])
    seed_counts = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot)  # (n_boot, K)
    case_w = bootstrap_weights(y, n_boot, seed, groups=groups)  # (n_boot, n)
    boots = np.empty(n_boot)
    step = max(1, CHUNK_ELEMS // (k * y.size))
    for a in range(0, n_boot, step):
        w = (seed_counts[a : a + step, :, None] * case_w[a : a + step, None, :]).reshape(-1, k * y.size)
        boots[a : a + step] = weighted_auc(y_all, pooled, w)
        if ref is not None:
            boots[a : a + step] -= weighted_auc(y_all, ref, w)
    return (value, *_ci(boots, ci))


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
    y, score = check_scores(y, score)
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
    y, score = check_scores(y_val, score_val)
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
        y, score = check_scores(y, score)
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
