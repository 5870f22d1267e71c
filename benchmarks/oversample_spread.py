"""How evenly ``streamaug.oversample`` spreads the copies of the positives over an epoch, by ``gap``.

Usage: ``python benchmarks/oversample_spread.py [--inputs 616] [--every 11] [--times 5] [--batch 32] [--seeds 10]``

Label sequences only (no images): ``--inputs`` samples, one positive in ``--every``, each positive
shown ``--times`` times. For three gaps (``epoch / times``, :func:`streamaug.oversample_gap`, four
batches) it prints, per epoch and averaged over ``--seeds`` shuffles: the batches whose positive
share is 1, above 1.5x the mean share, and below 0.5x it, and the largest batch share as a ratio of
the mean. The defaults are the BTXRD lower limb's rare-positive epoch (616 inputs -> 840 samples).
"""
from __future__ import annotations

import argparse

import numpy as np

from streamaug.data.oversample import oversample, oversample_gap


def batch_shares(labels: list[int], times: int, gap: float, batch: int, seed: int) -> np.ndarray:
    """The positive share of each batch of the oversampled sequence."""
    out = np.array(list(oversample(labels, times, gap=gap, min_gap=min(batch, int(gap)), select=bool, seed=seed)))
    return np.array([out[i:i + batch].mean() for i in range(0, len(out), batch)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inputs", type=int, default=616)
    ap.add_argument("--every", type=int, default=11)
    ap.add_argument("--times", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=10)
    a = ap.parse_args()
    n_pos = len(range(0, a.inputs, a.every))
    epoch = a.inputs + (a.times - 1) * n_pos
    gaps = {"epoch / times": epoch / a.times, "oversample_gap": oversample_gap(epoch, a.times, a.batch),
            "4 batches": 4.0 * a.batch}
    print(f"{a.inputs} inputs, {n_pos} positives x{a.times} -> {epoch} samples, batch {a.batch}, {a.seeds} seeds")
    print("| gap | value | all-positive batches | > 1.5x mean share | < 0.5x mean share | max share / mean |")
    print("|---|---|---|---|---|---|")
    for name, gap in gaps.items():
        rows = []
        for seed in range(a.seeds):
            rng = np.random.default_rng(seed)
            labels = [int(i % a.every == 0) for i in rng.permutation(a.inputs)]
            shares = batch_shares(labels, a.times, gap, a.batch, seed)
            mean = shares.mean()
            rows.append(((shares == 1).sum(), (shares > 1.5 * mean).sum(), (shares < 0.5 * mean).sum(),
                         shares.max() / mean))
        m = np.mean(rows, axis=0)
        print(f"| {name} | {gap:.0f} | {m[0]:.1f} | {m[1]:.1f} | {m[2]:.1f} | {m[3]:.2f} |")


if __name__ == "__main__":
    main()
