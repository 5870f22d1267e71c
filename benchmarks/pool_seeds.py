"""Seed-averaged paired differences over the seeds of several experiment folders (``btxrd_experiment.py``).

An experiment run in chunks (seeds 0-4 in one ``--out``, seeds 5-9 in another, as a replication)
keeps each chunk's table; this prints the paired bootstrap of every ``ARM - REFERENCE`` over all of
them together, from the cached ``runs/<region>/<arm>/seed<k>/scores.json``:

    PYTHONPATH=. python benchmarks/pool_seeds.py /tmp/exp_a /tmp/exp_b --region lower_limb \\
        --reference oversample --arms oversample_swap baseline

Only seeds present for the reference and the arm are used (``--seeds 0 1 2 3 4``: only those, for a
seed half); every run must have been scored on the same test set (keys and labels are checked), and
the seeds of one arm must share their settings (all but the seed and file paths). The interval holds
the spread between seeds and the test-set noise (:func:`streamaug.eval.paired_bootstrap_seeds`); the
test set is resampled by patient (the test shards' ``group`` column, found through the runs' cached
settings) unless ``--by image``. Each line names the unit.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from streamaug.eval.experiment import groups_of_keys, patient_groups
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


def _is_path(value: object) -> bool:
    items = value if isinstance(value, list) else [value]
    return bool(items) and all(isinstance(v, str) and "/" in v for v in items)


def check_settings(arm: str, runs: dict[int, dict], seeds: list[int]) -> None:
    """Refuse seeds of one arm trained with other settings (a budget or epochs that differ); the seed
    and paths (each seed's folder, filter and translator files) may differ."""
    configs = {s: {k: v for k, v in runs[s].get("key", {}).get("config", {}).items()
                   if k not in ("seed", "out") and not _is_path(v)} for s in seeds}
    first = configs[seeds[0]]
    for s in seeds:
        if configs[s] != first:
            diff = sorted(k for k in set(first) | set(configs[s]) if first.get(k) != configs[s].get(k))
            raise SystemExit(f"{arm}: seed {s} was trained with other settings than seed {seeds[0]} ({diff})")


def groups_of(run: dict, by: str) -> tuple[list | None, str]:
    """The patient of each test case of ``run`` (``by="patient"``), and the unit's name for the output."""
    test = run.get("key", {}).get("test")
    if by == "image":
        return None, "image"
    if not test:
        raise SystemExit("the runs do not record their test shards, so patients are unknown: pass --by image")
    groups = patient_groups(*test)
    if groups is None:
        raise SystemExit(f"the test shards {test} have no group column: pass --by image")
    return groups_of_keys(run["keys_test"], groups), "patient"


def _seed_list(seeds: list[int]) -> str:
    return f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else ",".join(map(str, seeds))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path, help="experiment --out folders")
    p.add_argument("--region", required=True)
    p.add_argument("--reference", default="oversample")
    p.add_argument("--arms", nargs="+", required=True)
    p.add_argument("--seeds", nargs="+", type=int, help="only these seeds (default: every seed both arms have)")
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--by", choices=("patient", "image"), default="patient",
                   help="resampling unit of the test set (default patient: the test shards' group column)")
    args = p.parse_args(argv)
    reference = load(args.folders, args.region, args.reference)
    for arm in args.arms:
        runs = load(args.folders, args.region, arm)
        seeds = sorted(set(runs) & set(reference))
        if args.seeds:
            seeds = [s for s in seeds if s in args.seeds]
        if not seeds:
            raise SystemExit(f"no seed has both {args.reference} and {arm} in {args.region}")
        keys, y = reference[seeds[0]]["keys_test"], reference[seeds[0]]["y_test"]
        if any(r[s]["keys_test"] != keys or r[s]["y_test"] != y for s in seeds for r in (runs, reference)):
            raise SystemExit("the runs were scored on different test sets (keys or labels differ)")
        check_settings(arm, runs, seeds)
        check_settings(args.reference, reference, seeds)
        groups, unit = groups_of(reference[seeds[0]], args.by)
        delta, lo, hi = paired_bootstrap_seeds(np.asarray(y), [reference[s]["s_test"] for s in seeds],
                                               [runs[s]["s_test"] for s in seeds], args.n_boot, 0, groups=groups)
        mark = " *" if lo > 0 or hi < 0 else ""
        print(f"{args.region} {arm} - {args.reference}: {delta:+.3f} [{lo:+.3f}, {hi:+.3f}]{mark} "
              f"over {len(seeds)} seeds {_seed_list(seeds)}, by {unit}")


if __name__ == "__main__":
    main()
