"""Seed-averaged paired differences over the seeds of several experiment folders (``btxrd_experiment.py``).

An experiment run in chunks (seeds 0-4 in one ``--out``, seeds 5-9 in another, as a replication)
keeps each chunk's table; this prints the paired bootstrap of every ``ARM - REFERENCE`` over all of
them together, from the cached ``runs/<region>/<arm>/seed<k>/scores.json``:

    PYTHONPATH=. python benchmarks/pool_seeds.py /tmp/exp_a /tmp/exp_b --region lower_limb \\
        --reference oversample --arms oversample_swap baseline

Only seeds present for the reference and the arm are used (``--seeds 0 1 2 3 4``: only those, for a
seed half); every run must have been scored on the same test set (the keys are checked).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from streamaug.eval.stats import paired_bootstrap_seeds


def load(folders: list[Path], region: str, arm: str) -> dict[int, dict]:
    """``{seed: scores.json}`` of ``arm`` in ``region`` across ``folders`` (a seed twice is refused)."""
    runs: dict[int, dict] = {}
    for folder in folders:
        for path in sorted((folder / "runs" / region / arm).glob("seed*/scores.json")):
            seed = int(path.parent.name.removeprefix("seed"))
            if seed in runs:
                raise SystemExit(f"seed {seed} of {region}/{arm} is in two folders; pass each seed once")
            runs[seed] = json.loads(path.read_text())
    return runs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path, help="experiment --out folders")
    p.add_argument("--region", required=True)
    p.add_argument("--reference", default="oversample")
    p.add_argument("--arms", nargs="+", required=True)
    p.add_argument("--seeds", nargs="+", type=int, help="only these seeds (default: every seed both arms have)")
    p.add_argument("--n-boot", type=int, default=2000)
    args = p.parse_args(argv)
    reference = load(args.folders, args.region, args.reference)
    for arm in args.arms:
        runs = load(args.folders, args.region, arm)
        seeds = sorted(set(runs) & set(reference))
        if args.seeds:
            seeds = [s for s in seeds if s in args.seeds]
        if not seeds:
            raise SystemExit(f"no seed has both {args.reference} and {arm} in {args.region}")
        keys = reference[seeds[0]]["keys_test"]
        if any(r[s]["keys_test"] != keys for s in seeds for r in (runs, reference)):
            raise SystemExit("the runs were scored on different test sets")
        y = np.asarray(reference[seeds[0]]["y_test"])
        delta, lo, hi = paired_bootstrap_seeds(y, [reference[s]["s_test"] for s in seeds],
                                               [runs[s]["s_test"] for s in seeds], args.n_boot, 0)
        mark = " *" if lo > 0 or hi < 0 else ""
        print(f"{args.region} {arm} - {args.reference}: {delta:+.3f} [{lo:+.3f}, {hi:+.3f}]{mark} "
              f"over {len(seeds)} seeds {seeds[0]}-{seeds[-1]}")


if __name__ == "__main__":
    main()
