"""The assignment of shards to readers, one epoch at a time.

A *reader* is one DataLoader worker of one rank (:class:`streamaug.data.distributed.Slot`). The
assignment is a pure function of the shard list, their sample counts, ``(seed, epoch)`` and the
number of ranks and workers, so every process computes the same plan without talking to the
others, and a resumed run recomputes it exactly.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streamaug.io.errors import ShardError


@dataclass(frozen=True)
class ReaderPlan:
    """What one reader reads in one epoch.

    Attributes:
        shards: indices into the shard list, in reading order.
        natural: samples in those shards.
        quota: samples this reader yields (``natural`` plus its share of the rank's padding).
    """

    shards: tuple[int, ...]
    natural: int
    quota: int


def plan_epoch(counts: Sequence[int], *, world: int, num_workers: int, seed: int, epoch: int,
               shuffle: bool, equalize: str = "pad", batch_size: int | None = None) -> list[list[ReaderPlan]]:
    """Assign shards to ``world x num_workers`` readers and fix every reader's quota.

    Shards are taken in a (seeded) shuffled order and each goes to the rank holding the fewest
    samples so far, then to that rank's worker holding the fewest; this keeps ranks within one
    shard's size of each other. With ``equalize="pad"`` every rank then yields the same number of
    samples, the largest rank total: the ranks that have fewer re-read the start of their own
    stream (like ``DistributedSampler`` padding) and the padded count is reported in the stream's
    stats. ``equalize="none"`` leaves rank totals unequal (fine without DDP).

    With ``batch_size`` (and ``"pad"``) every reader's quota is a whole number of batches and every
    rank the same number of batches: a ``DataLoader`` batches each worker's samples apart, so equal
    samples per rank alone can still leave ranks one batch apart (a DDP job then hangs on its last
    step). Each worker rounds its samples up to whole batches; ranks with fewer batches give the
    missing ones to their workers with the fewest.

    Returns:
        ``plans[rank][worker]``.

    Raises:
        ShardError: when there are fewer non-empty shards than readers (some reader would get
            nothing and ranks could not be equalized without silent loss or a hang).
    """
    if equalize not in ("pad", "none"):
        raise ValueError(f"equalize must be 'pad' or 'none', got {equalize!r}")
    if batch_size is not None and (batch_size < 1 or equalize != "pad"):
        raise ValueError(f"batch_size={batch_size!r} needs equalize='pad' and a positive batch size")
    readers = world * num_workers
    order = list(range(len(counts)))
    if shuffle:
        np.random.default_rng([seed, epoch, 0x5A4D]).shuffle(order)
    order = [i for i in order if counts[i] > 0]
    if len(order) < readers:
        raise ShardError(
            f"{len(order)} non-empty shards cannot feed {world} rank(s) x {num_workers} worker(s) = "
            f"{readers} readers without some reading nothing. Re-pack with a smaller --shard-size "
            f"(at most {max(1, sum(counts) // readers)} samples per shard), use fewer workers, "
            "or pass resampled=True for an unbounded stream.")
    rank_total = [0] * world
    assigned: list[list[list[int]]] = [[[] for _ in range(num_workers)] for _ in range(world)]
    worker_total = [[0] * num_workers for _ in range(world)]
    # First make sure every reader gets one shard, then balance the rest by sample count.
    for pos, i in enumerate(order):
        if pos < readers:
            r, w = divmod(pos, num_workers)
        else:
            r = min(range(world), key=lambda k: (rank_total[k], k))
            w = min(range(num_workers), key=lambda k: (worker_total[r][k], k))
        assigned[r][w].append(i)
        rank_total[r] += counts[i]
        worker_total[r][w] += counts[i]
    if batch_size is not None:
        return _plan_batches(assigned, worker_total, batch_size)
    target = max(rank_total)
    plans = []
    for r in range(world):
        deficit = target - rank_total[r] if equalize == "pad" else 0
        extra = [deficit // num_workers + (1 if w < deficit % num_workers else 0) for w in range(num_workers)]
        plans.append([ReaderPlan(tuple(assigned[r][w]), worker_total[r][w], worker_total[r][w] + extra[w])
                      for w in range(num_workers)])
    return plans


def _plan_batches(assigned: list[list[list[int]]], worker_total: list[list[int]], batch: int) -> list[list[ReaderPlan]]:
    """Quotas in whole batches, the same number of batches on every rank (see :func:`plan_epoch`)."""
    batches = [[-(-n // batch) for n in rank] for rank in worker_total]
    target = max(sum(rank) for rank in batches)
    for rank in batches:
        for _ in range(target - sum(rank)):
            w = min(range(len(rank)), key=lambda k: (rank[k], k))
            rank[w] += 1
    return [[ReaderPlan(tuple(assigned[r][w]), worker_total[r][w], batches[r][w] * batch)
             for w in range(len(batches[r]))] for r in range(len(batches))]
