"""How evenly ``streamaug.oversample`` spreads the copies of the positives over an epoch, by ``gap``
and with or without the epoch's length (``inputs=``).

Usage: ``python benchmarks/oversample_spread.py [--inputs 616] [--every 11] [--times 5] [--batch 32] [--seeds 10]``

Label sequences only (no images): ``--inputs`` samples, one positive in ``--every``, each positive
shown ``--times`` times. For three gaps (``epoch / times``, :func:`streamaug.oversample_gap`, four
batches), each without and with ``inputs=``, and for a reference that no stream can give (every copy
made up front and the whole epoch shuffled, as a map-style sampler would), it prints per epoch,
averaged over ``--seeds`` shuffles: the batches whose positive share is 1, above 1.5x the mean share
and below 0.5x it (binomial noise alone gives the reference's counts), the largest and the last
batch's share as ratios of the mean, the share of positives with two copies in one batch, and how
many batches apart a positive's first and last copies are. The defaults are the BTXRD lower limb's
rare-positive epoch (616 inputs -> 840 samples).
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator

import numpy as np

from streamaug.data.oversample import oversample, oversample_gap

Sample = tuple[int, int]  # (label, input index)


def spread(out: list[Sample], batch: int) -> tuple[float, ...]:
    """The row's measures of one oversampled epoch."""
    labels = np.array([label for label, _ in out], dtype=float)
    shares = np.array([labels[i:i + batch].mean() for i in range(0, len(labels), batch)])
    mean = shares.mean()
    where: dict[int, list[int]] = {}
    for position, (label, index) in enumerate(out):
        if label:
            where.setdefault(index, []).append(position)
    one_batch = np.mean([len({p // batch for p in ps}) < len(ps) for ps in where.values()])
    span = np.mean([(max(ps) - min(ps)) / batch for ps in where.values()])
    return ((shares == 1).sum(), (shares > 1.5 * mean).sum(), (shares < 0.5 * mean).sum(),
            shares.max() / mean, shares[-1] / mean, one_batch, span)


def shuffled_epoch(samples: list[Sample], times: int, seed: int) -> Iterator[Sample]:
    """The reference: every copy made up front, the whole epoch shuffled."""
    epoch = [s for s in samples for _ in range(times if s[0] else 1)]
    rng = np.random.default_rng([seed, 1])
    return (epoch[i] for i in rng.permutation(len(epoch)))


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
    schedules: dict[str, Callable[[list[Sample], int], Iterator[Sample]]] = {
        "shuffled epoch (reference)": lambda xs, seed: shuffled_epoch(xs, a.times, seed)}
    for name, gap in gaps.items():
        for known in (None, a.inputs):
            schedules[f"{name} ({gap:.0f})" + (", inputs=" if known else "")] = (
                lambda xs, seed, gap=gap, known=known: oversample(
                    xs, a.times, gap=gap, min_gap=min(a.batch, int(gap)), select=lambda s: s[0] == 1, seed=seed,
                    inputs=known))
    print(f"{a.inputs} inputs, {n_pos} positives x{a.times} -> {epoch} samples, batch {a.batch}, {a.seeds} seeds")
    print("| schedule | all-positive batches | > 1.5x mean share | < 0.5x mean share | max share / mean "
          "| last batch / mean | positives with 2 copies in a batch | first-to-last copy, batches |")
    print("|---|---|---|---|---|---|---|---|")
    for name, schedule in schedules.items():
        rows = []
        for seed in range(a.seeds):
            rng = np.random.default_rng(seed)
            samples = [(int(i % a.every == 0), i) for i in rng.permutation(a.inputs)]
            rows.append(spread(list(schedule(samples, seed)), a.batch))
        m = np.mean(rows, axis=0)
        print(f"| {name} | {m[0]:.1f} | {m[1]:.1f} | {m[2]:.1f} | {m[3]:.2f} | {m[4]:.2f} | {m[5]:.2f} | {m[6]:.1f} |")


if __name__ == "__main__":
    main()
