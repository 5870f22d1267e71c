"""``python -m streamaug.eval``: score a checkpoint on shards, or compare score files.

    python -m streamaug.eval score runs/base/best.pt --shards shards/btxrd --split test \\
        --val-split val --region lower_limb --out report.json [--roc roc.png] [--scores test.csv]
    python -m streamaug.eval compare base.csv aug.csv [--val base_val.csv aug_val.csv] [--roc roc.png]

``compare`` checks every file before printing a number (columns ``key,label,score``, labels 0/1,
finite scores, each key once, both labels; the same cases and labels as the baseline) and names each
model by its file's stem, with as many parent folders as tell two files apart (``r1/test``,
``r2/test``). Bad input ends with ``error: <message>`` (the file and the fix) and exit code 2.

The bootstrap resamples patients, not images, where it knows them: ``score`` reads each image's
``group`` from the shards (and writes it into ``--scores``), ``compare`` takes the baseline file's
``group`` column. Two views of one patient are not two independent cases; resampling them as such
makes the intervals too narrow (BTXRD's test split: 768 images of 390 patients).
"""
from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from streamaug._commands import (
    USER_ERRORS,
    check_at_least,
    check_device,
    check_file_to_write,
    check_region,
    check_shards,
    fail,
)
from streamaug.eval.experiment import groups_of_keys, patient_groups
from streamaug.eval.score_files import load_score_groups, load_scores, save_scores
from streamaug.eval.scoring import score_checkpoint
from streamaug.eval.stats import (
    bootstrap_auc,
    is_significant,
    operating_point,
    paired_bootstrap,
    plot_roc,
    sens_spec_at,
)

__all__ = ["build_parser", "main", "score_checkpoint"]  # score_checkpoint: for imports from here

def _where(args: argparse.Namespace, split: str) -> str:
    region = f", region {args.region!r}" if args.region else ""
    return f"--split {split!r}{region} of {args.shards}"


def _labelled(args: argparse.Namespace, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Scores of ``split``; refused when it has no labelled image or one class only."""
    y, s, keys = score_checkpoint(args.checkpoint, args.shards, split=split, region=args.region,
                                  image_size=args.image_size, device=args.device, workers=args.workers)
    if len(set(y.tolist())) < 2:
        what = f"all {len(y)} labelled images have label {int(y[0])}" if len(y) else "no labelled images"
        raise ValueError(f"{_where(args, split)}: {what}; an AUC needs both labels: choose another "
                         f"{'--val-split' if split == args.val_split else '--split'} or --region")
    return y, s, keys


def _score(args: argparse.Namespace) -> dict:
    for path, option in ((args.out, "--out"), (args.roc, "--roc"), (args.scores, "--scores")):
        check_file_to_write(path, option)  # before scoring: a bad path would lose the work
    check_device(args.device)
    check_at_least(args.workers, 0, "--workers")
    check_shards(args.shards, "--shards")
    check_region(args.shards, args.split, args.region)
    if args.image_size is not None:
        check_at_least(args.image_size, 1, "--image-size")
    y, s, keys = _labelled(args, args.split)
    groups = groups_of_keys(keys, patient_groups(args.shards, args.split))
    auc, lo, hi = bootstrap_auc(y, s, args.n_boot, args.seed, groups=groups)
    report = {"checkpoint": str(args.checkpoint), "shards": args.shards, "split": args.split, "region": args.region,
              "n": int(len(y)), "positives": int(y.sum()), "patients": len(set(groups)) if groups else None,
              "resampled": "patients" if groups else "images", "auc": auc, "auc_ci95": [lo, hi]}
    if args.val_split:
        yv, sv, _ = _labelled(args, args.val_split)
        op = operating_point(yv, sv)
        sens, spec = sens_spec_at(y, s, op["threshold"])
        report["operating_point"] = {"threshold": op["threshold"], "sensitivity": sens, "specificity": spec,
                                     "chosen_on": args.val_split}
    if args.scores:
        save_scores(args.scores, y, s, keys, groups)
    if args.roc:
        report["roc_png"] = str(plot_roc(args.roc, {Path(args.checkpoint).parent.name: (y, s)}, n_boot=args.n_boot))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    of = f" of {report['patients']} patients (resampled by patient)" if groups else " (resampled by image)"
    print(f"AUC {auc:.3f} (95% CI {lo:.3f}-{hi:.3f}) on {len(y)} images{of}; report: {args.out}")
    return report


def _aligned(path: str, ref_keys: list[str] | None,
             ref_y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The scores of ``path`` in the baseline file's key order; the same cases with the same labels."""
    y, s, keys = load_scores(path)
    if ref_keys is None:
        return y, s, keys
    index = {k: i for i, k in enumerate(keys)}
    missing = [k for k in ref_keys if k not in index]
    extra = sorted(set(keys) - set(ref_keys))
    if missing or extra:
        raise ValueError(f"{path}: not the baseline file's test set: {len(missing)} of its keys are missing "
                         f"(e.g. {missing[:3]}), {len(extra)} are extra (e.g. {extra[:3]}); score both on one split")
    order = [index[k] for k in ref_keys]
    if ref_y is not None and not np.array_equal(y[order], ref_y):
        bad = [k for k, a, b in zip(ref_keys, y[order], ref_y) if a != b]
        raise ValueError(f"{path}: {len(bad)} cases have other labels than in the baseline file (e.g. {bad[:3]})")
    return y[order], s[order], ref_keys


def model_names(paths: Sequence[str]) -> list[str]:
    """One distinct name per score file: its stem, with as many parent folders as tell the files apart
    (``r1/test``, ``r2/test``).

    Raises:
        ValueError: one file is given twice.
    """
    full = [Path(os.path.realpath(p)) for p in paths]
    seen: dict[Path, str] = {}
    for p, f in zip(paths, full):
        if f in seen:
            raise ValueError(f"{p} is given twice (as {seen[f]} too); give each score file once")
        seen[f] = p
    for k in range(1, max(len(f.parts) for f in full) + 1):
        names = ["/".join(f.parts[-k:-1] + (f.stem,)) for f in full]
        if len(set(names)) == len(names):
            return names
    return [str(f) for f in full]  # a.csv beside a.tsv: the whole paths


def _compare(args: argparse.Namespace) -> None:
    if args.val and len(args.val) != len(args.scores):
        raise ValueError(f"--val needs one file per scores file: {len(args.scores)} scores files, "
                         f"{len(args.val)} --val files")
    check_file_to_write(args.roc, "--roc")
    names = model_names(args.scores)
    y, base, keys = _aligned(args.scores[0], None)
    checked = [_aligned(path, keys, y) for path in args.scores]  # every file, before any number is printed
    vals = [load_scores(path) for path in args.val or ()]
    groups = load_score_groups(args.scores[0])  # the baseline's patients, in its key order
    print(f"{len(y)} cases" + (f" of {len(set(groups))} patients, resampled by patient" if groups else
                               ", resampled by image (the baseline file has no group column)"))
    curves = {}
    print(f"{'model':<24} {'AUC (95% CI)':<22} {'dAUC vs base (95% CI)':<28} sens   spec   OP")
    for i, (name, (yi, s, _)) in enumerate(zip(names, checked)):
        curves[name] = (yi, s)
        auc, lo, hi = bootstrap_auc(yi, s, args.n_boot, args.seed, groups=groups)
        diff = ""
        if i > 0:
            res = paired_bootstrap(yi, base, s, args.n_boot, args.seed, groups=groups)
            diff = f"{res[0]:+.3f} ({res[1]:+.3f},{res[2]:+.3f}){'*' if is_significant(res) else ''}"
        op = ""
        if vals:
            yv, sv, _ = vals[i]
            thr = operating_point(yv, sv)["threshold"]
            sens, spec = sens_spec_at(yi, s, thr)
            op = f"{sens:.3f}  {spec:.3f}  {thr:.3f}"
        print(f"{name:<24} {f'{auc:.3f} ({lo:.3f}-{hi:.3f})':<22} {diff:<28} {op}")
    if args.roc:
        print("wrote", plot_roc(args.roc, curves, n_boot=args.n_boot, seed=args.seed))


def build_parser() -> argparse.ArgumentParser:
    """The ``score`` and ``compare`` subcommands and their options (each with help)."""
    p = argparse.ArgumentParser(prog="python -m streamaug.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sc = sub.add_parser("score", help="score a classifier checkpoint on shards; write a JSON report",
                        description="Score a classifier checkpoint on shards; write a JSON report.")
    sc.add_argument("checkpoint", help="classifier checkpoint (best.pt of `streamaug-train classifier`)")
    sc.add_argument("--shards", required=True,
                    help="shards to score: a packed folder (with --split), a manifest.json or a .tar pattern")
    sc.add_argument("--split", default="test", help="split of the packed folder to score (default: %(default)s)")
    sc.add_argument("--val-split", default=None, help="choose the operating point on this split")
    sc.add_argument("--region", default=None, help="only images of this region (e.g. lower_limb); default: all")
    sc.add_argument("--image-size", type=int, default=None,
                    help="side images are resized to; default: the checkpoint's input size")
    sc.add_argument("--out", default="report.json",
                    help="the JSON report: AUC, 95%% CI, operating point (default: %(default)s)")
    sc.add_argument("--roc", default=None, help="also draw the ROC curve into this PNG")
    sc.add_argument("--scores", default=None,
                    help="also write key,label,score[,group] CSV here (the input of compare; group: the patient)")
    sc.add_argument("--device", default="cpu", help="torch device the model runs on (default: %(default)s)")
    sc.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default: %(default)s)")
    cp = sub.add_parser("compare", help="AUC with CI per score CSV, paired difference to the first",
                        description="AUC with 95% CI per score CSV and the paired bootstrap difference to the "
                                    "first (the baseline).")
    cp.add_argument("scores", nargs="+", help="test-set CSVs (key,label,score, optionally group: the patient, "
                                              "which the bootstrap then resamples); the first is the baseline")
    cp.add_argument("--val", nargs="+", help="validation CSVs, one per test CSV, for the operating point")
    cp.add_argument("--roc", help="also draw every model's ROC curve into this PNG")
    for q in (sc, cp):
        q.add_argument("--n-boot", type=int, default=2000,
                       help="bootstrap resamples for the CIs and the paired test (default: %(default)s)")
        q.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (default: %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``streamaug-eval``: parse ``argv`` (default ``sys.argv[1:]``) and run the subcommand; the exit code.

    Bad input (a ValueError such as CheckpointError, the stream's ShardError/SampleError, a path that
    cannot be read or written) ends with ``error: <message>`` on stderr and exit code 2.
    """
    args = build_parser().parse_args(argv)
    try:
        check_at_least(args.n_boot, 1, "--n-boot", "bootstrap resamples")
        (_score if args.command == "score" else _compare)(args)
    except USER_ERRORS as err:  # the message names the file and the fix
        return fail(err)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
