"""Pieces of the rare-positive augmentation experiment (Gupta et al., MIDL 2019, Tables 2-3).

* :func:`grid_search_threshold` - pick the pseudo-label threshold ``t`` with the best validation AUC.
* :class:`SeedRun` - one trained classifier: validation / test scores, synthetic count, wall time.
* :func:`pool_runs` - concatenate the test predictions of several seeds (same key order per seed).
* :func:`summarize_arm` - one table row: mean ± sd of the per-seed test AUCs, the pooled AUC with
  its bootstrap 95 % CI, the paired bootstrap delta against the pooled baseline, the seed-averaged
  paired delta (:func:`~streamaug.eval.paired_bootstrap_seeds`, blind to per-seed calibration), and
  sensitivity / specificity at each seed's validation operating point.
* :func:`markdown_table` - the rows as a Markdown table.
* :func:`prior_corrected_filter` - the baseline with its logit shifted to a balanced class prior,
  the pseudo-label filter of a baseline trained with rare positives.

The driver that trains the arms is ``benchmarks/btxrd_experiment.py``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np

import torch

from streamaug.eval import bootstrap_auc, is_significant, operating_point, paired_bootstrap, paired_bootstrap_seeds

T = TypeVar("T")


def grid_search_threshold(train_at: Callable[[float], tuple[float, T]], thresholds: Iterable[float]
                          ) -> tuple[float, T, list[dict[str, Any]]]:
    """Train once per threshold and keep the one with the best validation AUC (§4.3 of the paper).

    Args:
        train_at: ``t -> (val_auc, payload)``; ``payload`` is whatever the caller wants back for
            the chosen ``t`` (e.g. the trained run). A NaN validation AUC never wins.
        thresholds: candidate thresholds, tried in order; ties go to the earlier one.

    Returns:
        ``(best_t, best_payload, table)`` with ``table`` one ``{"threshold", "val_auc"}`` per ``t``.

    Raises:
        ValueError: with no thresholds.

    Examples:
        >>> best, payload, _ = grid_search_threshold(lambda t: (1 - abs(t - 0.85), f"run@{t}"), [0.7, 0.85, 0.95])
        >>> best, payload
        (0.85, 'run@0.85')
    """
    best: tuple[float, float, Any] | None = None
    table = []
    for t in thresholds:
        val_auc, payload = train_at(float(t))
        table.append({"threshold": float(t), "val_auc": float(val_auc)})
        score = val_auc if val_auc == val_auc else -math.inf
        if best is None or score > best[1]:
            best = (float(t), score, payload)
    if best is None:
        raise ValueError("grid_search_threshold needs at least one threshold")
    return best[0], best[2], table


@dataclass
class SeedRun:
    """One trained classifier (an arm at one seed) and its scores.

    Attributes:
        seed: training seed (also seeds the rare-positive subsample).
        y_val, s_val: validation labels / scores (pick the operating point).
        y_test, s_test, keys_test: test labels / scores / keys, in the stream's fixed order.
        synthetic: synthetic positives that entered training (all epochs).
        generated: synthetic candidates made (accepted or not), all epochs.
        accepted: candidates the pseudo-label filter accepted, all epochs.
        seconds: wall time of training + scoring.
        val_auc: best validation AUC during training (the kept checkpoint).
    """

    seed: int
    y_val: np.ndarray
    s_val: np.ndarray
    y_test: np.ndarray
    s_test: np.ndarray
    keys_test: list[str]
    synthetic: int = 0
    generated: int = 0
    accepted: int = 0
    seconds: float = 0.0
    val_auc: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)


def pool_runs(runs: Sequence[SeedRun], reference: Sequence[SeedRun] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate test labels and scores over seeds, seed by seed.

    Args:
        runs: one :class:`SeedRun` per seed.
        reference: the baseline's runs; when given, seed ``i`` of ``runs`` must have the same seed
            and the same test keys in the same order as seed ``i`` of ``reference`` (what makes a
            paired test on the pooled predictions valid).

    Returns:
        ``(y, scores)`` pooled.

    Raises:
        ValueError: when the runs do not line up with ``reference``.
    """
    if reference is not None:
        if [r.seed for r in runs] != [r.seed for r in reference]:
            raise ValueError(f"seeds differ: {[r.seed for r in runs]} vs {[r.seed for r in reference]}")
        for r, b in zip(runs, reference):
            if r.keys_test != b.keys_test:
                raise ValueError(f"seed {r.seed}: test keys differ from the baseline's (order or content)")
    return np.concatenate([r.y_test for r in runs]), np.concatenate([r.s_test for r in runs])


def _sens_spec_pooled(runs: Sequence[SeedRun]) -> tuple[float, float]:
    """Sensitivity / specificity with each seed's validation operating point, counts pooled."""
    tp = pos = tn = neg = 0
    for r in runs:
        thr = operating_point(r.y_val, r.s_val)["threshold"]
        pred = r.s_test >= thr
        tp += int(pred[r.y_test == 1].sum())
        pos += int((r.y_test == 1).sum())
        tn += int((~pred[r.y_test == 0]).sum())
        neg += int((r.y_test == 0).sum())
    return tp / max(pos, 1), tn / max(neg, 1)


def summarize_arm(name: str, runs: Sequence[SeedRun], baseline: Sequence[SeedRun] | None, *,
                  n_boot: int = 2000, boot_seed: int = 0, **info: Any) -> dict[str, Any]:
    """One report row for an arm.

    Args:
        name: arm name.
        runs: its runs, one per seed.
        baseline: the baseline's runs (same seeds, same test order); None for the baseline itself.
        n_boot: bootstrap samples.
        boot_seed: bootstrap seed (the same for every arm, so all arms see the same samples).
        **info: extra columns (e.g. ``threshold``) copied into the row.

    Returns:
        A JSON-ready dict: ``auc_per_seed``, ``auc_mean``, ``auc_sd``, ``auc_pooled`` + ``auc_ci95``,
        ``delta`` + ``delta_ci95`` + ``significant`` and ``delta_seeds`` + ``delta_seeds_ci95`` +
        ``significant_seeds`` (not for the baseline), ``sensitivity``,
        ``specificity``, ``synthetic`` (mean per seed), ``seconds`` (sum over seeds).
    """
    per_seed = [bootstrap_auc(r.y_test, r.s_test, n_boot, boot_seed) for r in runs]
    aucs = [a for a, _, _ in per_seed]
    y, s = pool_runs(runs, baseline)
    auc, lo, hi = bootstrap_auc(y, s, n_boot, boot_seed)
    sens, spec = _sens_spec_pooled(runs)
    row: dict[str, Any] = {
        "arm": name, **info, "seeds": [r.seed for r in runs], "n_test": int(len(y)), "test_positives": int(y.sum()),
        "auc_per_seed": aucs, "auc_ci95_per_seed": [[lo_, hi_] for _, lo_, hi_ in per_seed],
        "auc_mean": float(np.mean(aucs)), "auc_sd": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else 0.0,
        "auc_pooled": auc, "auc_ci95": [lo, hi], "val_auc_per_seed": [r.val_auc for r in runs],
        "sensitivity": sens, "specificity": spec,
        "synthetic": float(np.mean([r.synthetic for r in runs])),
        "generated": float(np.mean([r.generated for r in runs])),
        "accepted": float(np.mean([r.accepted for r in runs])),
        "seconds": float(sum(r.seconds for r in runs)),
    }
    if baseline is not None:
        yb, sb = pool_runs(baseline)
        delta = paired_bootstrap(yb, sb, s, n_boot, boot_seed)
        row.update(delta=delta[0], delta_ci95=[delta[1], delta[2]], significant=is_significant(delta))
        if any(r.keys_test != runs[0].keys_test for r in runs):
            raise ValueError(f"arm {name!r}: the seeds were scored on different test sets (keys or order)")
        by_seed = paired_bootstrap_seeds(runs[0].y_test, [r.s_test for r in baseline], [r.s_test for r in runs],
                                         n_boot, boot_seed)
        row.update(delta_seeds=by_seed[0], delta_seeds_ci95=[by_seed[1], by_seed[2]],
                   significant_seeds=is_significant(by_seed))
    return row


def prior_corrected_filter(best: str | os.PathLike, positives: int, normals: int, out: str | os.PathLike) -> str:
    """Save ``best`` with ``log(normals / positives)`` added to its output bias -> the path of the copy.

    A classifier trained with positives at ``positives : normals`` has its probabilities pulled
    towards that prior (at 1:10 a sure lesion may score well below 0.5). Shifting the logit by the
    log prior odds gives the scores of the same classifier under a balanced prior (Saerens et al.,
    2002), so the paper's pseudo-label thresholds (0.70-0.95) keep their meaning. The ranking, and
    so the classifier's AUC, is unchanged.

    Args:
        best: a :func:`streamaug.models.drn.save_classifier` checkpoint (a DRN with ``fc``).
        positives, normals: training counts of the baseline.
        out: where to write the corrected copy.

    Returns:
        ``str(out)``.
    """
    from streamaug.models.drn import load_classifier, save_classifier

    loaded = load_classifier(best)
    shift = math.log(max(normals, 1) / max(positives, 1))
    with torch.no_grad():
        loaded.model.fc.bias += shift
    save_classifier(out, loaded.model, extra={**loaded.extra, "prior_shift": shift, "source": str(best)})
    return str(out)


def _synthetic(r: dict[str, Any]) -> str:
    if not r.get("generated"):
        return f"{r['synthetic']:.0f}"
    return f"{r['synthetic']:.0f} ({r['accepted']:.0f} of {r['generated']:.0f})"


def _fmt_delta(r: dict[str, Any], name: str, flag: str) -> str:
    if name not in r:
        return "—"
    lo, hi = r[f"{name}_ci95"]
    return f"{r[name]:+.3f} [{lo:+.3f}, {hi:+.3f}]{' *' if r[flag] else ''}"


def _fmt_row(r: dict[str, Any]) -> list[str]:
    t = r.get("threshold")
    t = "—" if t is None else ("/".join(f"{v:.2f}" for v in t) if isinstance(t, list) else f"{t:.2f}")
    return [r.get("region", ""), r["arm"], t, _synthetic(r),
            f"{r['auc_mean']:.3f} ± {r['auc_sd']:.3f}",
            f"{r['auc_pooled']:.3f} [{r['auc_ci95'][0]:.3f}, {r['auc_ci95'][1]:.3f}]",
            _fmt_delta(r, "delta", "significant"), _fmt_delta(r, "delta_seeds", "significant_seeds"),
            f"{r['sensitivity']:.2f} / {r['specificity']:.2f}", f"{r['seconds']:.0f}"]


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`summarize_arm` as a Markdown table (``*``: the delta's CI excludes 0)."""
    head = ["region", "arm", "t", "synthetic used / seed (accepted of generated)", "test AUC mean ± sd (seeds)", "pooled AUC [95% CI]",
            "Δ pooled vs baseline [95% CI]", "Δ seed-avg vs baseline [95% CI]", "sens / spec", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_fmt_row(r)) + " |" for r in rows]
    return "\n".join(lines)
