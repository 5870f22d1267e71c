"""Pieces of the rare-positive augmentation experiment (Gupta et al., MIDL 2019, Tables 2-3).

* :class:`SeedRun` - one trained classifier: validation / test scores, what it trained on (label
  make-up, synthetic positives, candidates scored), wall time.
* :func:`training_makeup` - the label make-up a run saw, from its per-epoch log records.
* :func:`pool_runs` - concatenate the test predictions of several seeds (same key order per seed).
* :func:`summarize_arm` - one table row: mean ± sd (and range) of the per-seed test AUCs, the pooled
  AUC with its bootstrap 95 % CI (seeds and test cases resampled; descriptive), the seed-averaged
  paired delta (:func:`~streamaug.eval.paired_bootstrap_seeds`: its interval holds the spread
  between seeds and the test-set noise; blind to per-seed calibration) against the baseline and
  any other reference arm (e.g. oversampling), the training make-up, and sensitivity / specificity
  at each seed's validation operating point. With ``groups`` the test set is resampled by patient.
* :func:`markdown_table` - the rows as a Markdown table, each result beside what the arm trained on.

The driver that trains the arms is ``benchmarks/btxrd_experiment.py``.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamaug.eval import bootstrap_auc, is_significant, operating_point, paired_bootstrap_seeds
from streamaug.eval.stats import pooled_bootstrap

MAKEUP = ("real_positive", "real_normal", "real_other", "synthetic")


@dataclass
class SeedRun:
    """One trained classifier (an arm at one seed), its scores, and what it trained on.

    Attributes:
        seed: training seed (also seeds the rare-positive subsample).
        y_val, s_val: validation labels / scores (pick the operating point).
        y_test, s_test, keys_test: test labels / scores / keys, in the stream's fixed order.
        synthetic: synthetic positives that entered training (all epochs).
        generated: synthetic candidates made and scored (accepted or not), all epochs.
        accepted: candidates the pseudo-label filter accepted, all epochs (a synthesis round may
            make a few more than the epoch uses up).
        seconds: wall time of training + scoring.
        val_auc: best validation AUC during training (the kept checkpoint).
        samples: training samples seen, all epochs (oversampled copies and synthetic ones included).
        real_positive: real positive samples seen, all epochs (oversampled copies included).
        epochs: epochs trained.
        extra: anything else the driver keeps (checkpoint path, filter settings).
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
    samples: int = 0
    real_positive: int = 0
    epochs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def training_makeup(history: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Sum the per-epoch log records of ``python -m streamaug.train classifier`` into what the run
    trained on: ``samples``, ``real_positive``, ``synthetic``, ``generated``, ``accepted``, ``epochs``.

    Examples:
        >>> training_makeup([{"samples": 10, "emitted": {"real_positive": 2, "synthetic": 3}, "generated": 6,
        ...                   "accepted": 3}, {"samples": 10, "emitted": {"real_positive": 1, "synthetic": 4}}])
        {'samples': 20, 'real_positive': 3, 'synthetic': 7, 'generated': 6, 'accepted': 3, 'epochs': 2}
    """
    out = dict.fromkeys(("samples", "real_positive", "synthetic", "generated", "accepted", "epochs"), 0)
    for record in history:
        emitted = record.get("emitted", {})
        out["samples"] += int(record.get("samples", 0))
        out["real_positive"] += int(emitted.get("real_positive", 0))
        out["synthetic"] += int(emitted.get("synthetic", record.get("synthetic", 0)))
        out["generated"] += int(record.get("generated", 0))
        out["accepted"] += int(record.get("accepted", 0))
        out["epochs"] += 1
    return out


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


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _makeup_columns(runs: Sequence[SeedRun]) -> dict[str, Any]:
    """Per-seed means of what the runs trained on."""
    return {
        "real_positive_share": _mean([r.real_positive / r.samples if r.samples else None for r in runs]),
        "synthetic_share": _mean([r.synthetic / r.samples if r.samples else None for r in runs]),
        "positives_per_epoch": _mean([(r.real_positive + r.synthetic) / r.epochs if r.epochs else None for r in runs]),
        "samples_per_epoch": _mean([r.samples / r.epochs if r.epochs else None for r in runs]),
        "candidates_per_accepted": _mean([r.generated / r.accepted if r.accepted else None for r in runs]),
        "candidates_per_used": _mean([r.generated / r.synthetic if r.synthetic else None for r in runs]),
        "synthetic": float(np.mean([r.synthetic for r in runs])),
        "generated": float(np.mean([r.generated for r in runs])),
        "accepted": float(np.mean([r.accepted for r in runs])),
    }


def _seed_delta(name: str, runs: Sequence[SeedRun], reference: Sequence[SeedRun], n_boot: int,
                boot_seed: int, groups: list[str] | None) -> tuple[float, float, float]:
    pool_runs(runs, reference)  # same seeds, same test keys in the same order (runs': summarize_arm)
    return paired_bootstrap_seeds(runs[0].y_test, [r.s_test for r in reference], [r.s_test for r in runs],
                                  n_boot, boot_seed, groups=groups)


def patient_groups(shards: Any, split: str | None) -> dict[str, object] | None:
    """``{key: metadata "group"}`` of the test shards (read from their JSON), or None when no sample
    has a group: what :func:`summarize_arm` resamples by."""
    from streamaug.data.shardlist import expand_urls, scan_metadata

    groups = {k: (m or {}).get("group") for s in expand_urls(shards, split) for k, m in scan_metadata(s)}
    return groups if any(v not in (None, "") for v in groups.values()) else None


def groups_of_keys(keys: Sequence[str], groups: Mapping[str, object] | None) -> list[str] | None:
    """The group (patient) of each key, as text; a key without one (None or "") is its own group.

    Examples:
        >>> groups_of_keys(["a", "b", "c"], {"a": 0, "b": 0, "c": ""})
        ['0', '0', 'c']
    """
    if groups is None:
        return None
    return [str(k) if (g := groups.get(k)) in (None, "") else str(g) for k in keys]


def case_groups(runs: Sequence[SeedRun], groups: Mapping[str, object] | None) -> list[str] | None:
    """The group (patient) of each test case of ``runs`` (:func:`groups_of_keys`)."""
    return groups_of_keys(runs[0].keys_test, groups)


def summarize_arm(name: str, runs: Sequence[SeedRun], baseline: Sequence[SeedRun] | None, *,
                  versus: dict[str, Sequence[SeedRun]] | None = None, n_boot: int = 2000, boot_seed: int = 0,
                  groups: Mapping[str, object] | None = None, **info: Any) -> dict[str, Any]:
    """One report row for an arm.

    Args:
        name: arm name.
        runs: its runs, one per seed.
        baseline: the baseline's runs (same seeds, same test order); None for the baseline itself.
        versus: other reference arms (e.g. ``{"oversample": runs}``): the seed-averaged paired delta
            against each goes under ``row["versus"][name]``.
        n_boot: bootstrap samples.
        boot_seed: bootstrap seed (the same for every arm, so all arms see the same samples).
        groups: ``{test key: patient}``: the bootstrap resamples patients, not images.
        **info: extra columns (e.g. ``filter``) copied into the row.

    Returns:
        A JSON-ready dict: ``n_test`` and ``test_positives`` (of the one test set), ``auc_per_seed``,
        ``auc_mean``, ``auc_sd``, ``auc_min``, ``auc_max``,
        ``auc_pooled`` + ``auc_ci95``, ``delta`` + ``delta_ci95`` + ``significant`` (pooled:
        descriptive, see :func:`~streamaug.eval.stats.pooled_bootstrap`) and the test,
        ``delta_seeds`` + ``delta_seeds_ci95`` + ``significant_seeds`` (not for the baseline),
        ``versus``, ``sensitivity``, ``specificity``, the training make-up (``real_positive_share``
        and ``synthetic_share`` of all samples seen, ``positives_per_epoch`` real + synthetic,
        ``samples_per_epoch``, ``candidates_per_accepted``, ``candidates_per_used``; per-seed means)
        and ``seconds`` (sum over seeds).
    """
    if any(r.keys_test != runs[0].keys_test for r in runs):  # the pooled AUC reads runs[0]'s labels
        raise ValueError(f"arm {name!r}: the seeds were scored on different test sets (keys or order)")
    pool_runs(runs, baseline)  # and the baseline's, seed by seed
    cases = case_groups(runs, groups)
    per_seed = [bootstrap_auc(r.y_test, r.s_test, n_boot, boot_seed, groups=cases) for r in runs]
    aucs = [a for a, _, _ in per_seed]
    y = runs[0].y_test  # one test set, scored by every seed
    auc, lo, hi = pooled_bootstrap(runs[0].y_test, [r.s_test for r in runs], None, n_boot, boot_seed, groups=cases)
    sens, spec = _sens_spec_pooled(runs)
    row: dict[str, Any] = {
        "arm": name, **info, "seeds": [r.seed for r in runs], "n_test": int(len(y)), "test_positives": int(y.sum()),
        "auc_per_seed": aucs, "auc_ci95_per_seed": [[lo_, hi_] for _, lo_, hi_ in per_seed],
        "auc_mean": float(np.mean(aucs)), "auc_sd": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else 0.0,
        "auc_min": float(np.min(aucs)), "auc_max": float(np.max(aucs)),
        "auc_pooled": auc, "auc_ci95": [lo, hi], "val_auc_per_seed": [r.val_auc for r in runs],
        "sensitivity": sens, "specificity": spec, **_makeup_columns(runs),
        "seconds": float(sum(r.seconds for r in runs)), "versus": {},
    }
    if baseline is not None:
        delta = pooled_bootstrap(runs[0].y_test, [r.s_test for r in runs], [r.s_test for r in baseline], n_boot,
                                 boot_seed, groups=cases)
        row.update(delta=delta[0], delta_ci95=[delta[1], delta[2]], significant=is_significant(delta))
        by_seed = _seed_delta(name, runs, baseline, n_boot, boot_seed, cases)
        row.update(delta_seeds=by_seed[0], delta_seeds_ci95=[by_seed[1], by_seed[2]],
                   significant_seeds=is_significant(by_seed))
    for ref_name, ref in (versus or {}).items():
        d = _seed_delta(name, runs, ref, n_boot, boot_seed, cases)
        row["versus"][ref_name] = {"delta_seeds": d[0], "delta_seeds_ci95": [d[1], d[2]],
                                   "significant_seeds": is_significant(d)}
    return row


def _fmt_delta(r: dict[str, Any], name: str, flag: str) -> str:
    if name not in r:
        return "—"
    lo, hi = r[f"{name}_ci95"]
    return f"{r[name]:+.3f} [{lo:+.3f}, {hi:+.3f}]{' *' if r[flag] else ''}"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def _num(v: float | None, fmt: str = ".0f") -> str:
    return "—" if v is None else format(v, fmt)


def _fmt_row(r: dict[str, Any], versus: Sequence[str]) -> list[str]:
    cells = [r.get("region", ""), r["arm"], _pct(r["real_positive_share"]), _pct(r["synthetic_share"]),
             _num(r["positives_per_epoch"]), _num(r["samples_per_epoch"]),
             _num(r["candidates_per_accepted"], ".2f"),
             f"{r['auc_mean']:.3f} ± {r['auc_sd']:.3f} [{r['auc_min']:.3f}–{r['auc_max']:.3f}]",
             f"{r['auc_pooled']:.3f} [{r['auc_ci95'][0]:.3f}, {r['auc_ci95'][1]:.3f}]",
             _fmt_delta(r, "delta_seeds", "significant_seeds")]
    cells += [_fmt_delta(r["versus"][v], "delta_seeds", "significant_seeds") if v in r.get("versus", {}) else "—"
              for v in versus]
    return cells + [f"{r['sensitivity']:.2f} / {r['specificity']:.2f}", f"{r['seconds']:.0f}"]


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`summarize_arm` as a Markdown table (``*``: the delta's CI excludes 0; the
    deltas are seed-averaged, their intervals hold the spread between seeds and the test-set noise).

    Beside each result, what the arm trained on (per-seed means): the share of real positives and of
    synthetic positives among all training samples seen, the positives (real, copies included, +
    synthetic) and samples per epoch, and the candidates the synthesis stage scored per accepted one.
    """
    versus = sorted({v for r in rows for v in r.get("versus", {})})
    head = ["region", "arm", "real pos. share", "synthetic share", "positives / epoch", "samples / epoch",
            "candidates / accepted", "test AUC mean ± sd [min–max] (seeds)", "pooled AUC [95% CI]",
            "Δ seed-avg vs baseline [95% CI]"]
    head += [f"Δ seed-avg vs {v} [95% CI]" for v in versus] + ["sens / spec", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_fmt_row(r, versus)) + " |" for r in rows]
    return "\n".join(lines)
