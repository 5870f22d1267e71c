"""Oversampling with the copies spread out: each chosen sample (by default a real positive) is yielded
``times`` times, its copies scheduled at random later positions at least ``min_gap`` apart.

Repeating a sample and shuffling through a buffer keeps its copies within one buffer of each other,
so they often fall into one batch (the same gradient counted twice) and cluster in neighbouring
ones. Here the copy schedule is explicit: a sample yielded at output position ``t`` gets copies at
``t + g_1``, ``t + g_1 + g_2``, ... with independent gaps ``g`` uniform on
``[min_gap, 2 * gap - min_gap]`` (mean ``gap``). Everything is a function of the input order and
``seed``, so a run replays. Stages are plain generators (``iterator -> iterator``)::

    gap = oversample_gap(epoch_samples, times=3, batch_size=32)     # epoch_samples: copies included
    batches = oversample_batches(loader, times=3, batch_size=32, gap=gap, seed=[seed, epoch],
                                 inputs=loader_samples)             # the epoch's input samples

The schedule only looks forward, so the ends of an epoch differ from its middle: the first stretch
holds originals only (their copies are yet to come), and copies due after the input's end would all
come last, together. Given the epoch's length (``inputs=``), a sample whose copies would fall past
the expected end has them redrawn, uniformly, in the room left; the last stretch then holds more
copies than the middle, but no block of them. The classifier trainer does not pass it: trained
with it, the BTXRD lower limb's oversampling arm scored lower, not higher (-0.031 [-0.069, +0.007]
AUC over ten seeds; RESULTS.md), so the batch make-up this evens out is not shown to matter.
``benchmarks/oversample_spread.py`` measures it (RESULTS.md): 1 positive in 11, x5, batch 32, 616
inputs -> 840 samples, 10 seeds, :func:`oversample_gap` (42): all-positive batches per epoch 1.2
without ``inputs``, 0.0 with it; the fullest batch's positive share 2.84x the mean, 1.90x (a
shuffled epoch, which a stream cannot give: 1.60x). For 10,000 inputs x3: copies after the last
input 202-218 without ``inputs``, 1-23 with it. A longer gap spreads each sample's copies further
apart, and lengthens the first stretch.
"""
from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from streamaug.data.collate import collate_xray, unbatch

__all__ = ["is_positive", "oversample", "oversample_batches", "oversample_gap", "rebatch"]

T = TypeVar("T")


def is_positive(sample: dict[str, Any]) -> bool:
    """The default choice: samples with ``label == 1``."""
    return int(sample["label"]) == 1


def oversample_gap(samples: float, times: float, batch_size: int) -> float:
    """A ``gap`` for :func:`oversample`: ``max(batch_size, samples / (4 * times))``.

    A quarter of ``samples / times``, with the copies of one sample at least a batch apart (never
    in one batch); the classifier trainer's ``--oversample`` uses it. It grows with the epoch, and so
    does the first stretch without copies (and, without ``inputs=``, the block of copies at the
    epoch's end; see the module docstring).

    Args:
        samples: samples of one epoch, copies included (per rank).
        times: copies per selected sample, the original included.
        batch_size: the smallest gap allowed.

    Examples:
        >>> oversample_gap(840, 5, 32), oversample_gap(100, 5, 32)
        (42.0, 32.0)
    """
    return max(float(batch_size), samples / (4.0 * times))


def oversample(samples: Iterable[T], times: float, *, gap: float = 256, min_gap: int = 32,
               select: Callable[[T], bool] = is_positive, seed: int | Sequence[int] = 0,
               inputs: int | None = None) -> Iterator[T]:
    """Yield every sample once, and each selected one ``times`` times in all, the copies spread out.

    Args:
        samples: the input samples, in order.
        times: copies per selected sample, the original included (``>= 1``); a fractional part is
            a probability (``2.5``: 2 or 3 copies, 2.5 on average).
        gap: mean distance, in output positions, between consecutive copies of one sample. Keep it
            small against the epoch, e.g. :func:`oversample_gap`: copies due after the end of the
            input all come last, so ``epoch length / times`` ends an epoch with all-positive batches.
        min_gap: smallest distance between consecutive copies (e.g. the batch size: copies then
            land in different batches unless other copies fall due at the same position and push
            them a few places on, or, with ``inputs``, they are redrawn into a room too short for it).
        select: which samples get copies (default :func:`is_positive`).
        seed: seeds the copy counts and gaps (e.g. ``[seed, epoch]``).
        inputs: how many samples ``samples`` holds (e.g. an epoch's, per rank), when known. A sample
            whose copies the schedule would put after the expected end of the output then has them
            redrawn in the room left (uniform, ``min_gap`` apart where it fits), so the end of the
            epoch is not a block of copies. The expected end counts the inputs still to come, their
            copies at the selected share seen so far, and the copies due. None: no end is known.

    Yields:
        The samples and copies (the same objects; copies are not cloned). Copies still due when the
        input ends come last, in schedule order (with ``inputs``, only those the estimate missed).

    Examples:
        >>> out = list(oversample(range(10), 3, gap=4, min_gap=2, select=lambda x: x == 0))
        >>> out.count(0), len(out)
        (3, 12)
    """
    if times < 1:
        raise ValueError(f"times must be >= 1, got {times}")
    if not 1 <= min_gap <= gap:
        raise ValueError(f"need 1 <= min_gap <= gap, got min_gap={min_gap}, gap={gap}")
    if inputs is not None and inputs < 0:
        raise ValueError(f"inputs must be >= 0 or None, got {inputs}")
    rng = np.random.default_rng(seed)
    extra, frac = int(times) - 1, times - int(times)
    due: list[tuple[int, int, T]] = []  # (position, order, sample): a heap of scheduled copies
    out = order = chosen = 0
    for seen, sample in enumerate(samples, 1):
        while due and due[0][0] <= out:
            yield heapq.heappop(due)[2]
            out += 1
        yield sample
        if select(sample):
            chosen += 1
            n = extra + int(frac > 0 and rng.random() < frac)
            offsets = np.cumsum(rng.uniform(min_gap, 2 * gap - min_gap, size=n).round().astype(np.int64))
            if inputs is not None and n and seen < inputs:
                room = (inputs - seen) * (1 + chosen / seen * (times - 1)) + len(due)  # outputs still to come
                if offsets[-1] > room:
                    offsets = _offsets_within(int(room), n, min_gap, rng)
            for position in (out + offsets).tolist():
                heapq.heappush(due, (position, order, sample))
                order += 1
        out += 1
    while due:
        yield heapq.heappop(due)[2]


def _offsets_within(room: int, n: int, min_gap: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` increasing offsets in ``[1, max(room, n)]``: independent uniform ones, sorted, when the
    room is too short for ``min_gap`` spacing to leave them unbiased (less than ``2 * n * min_gap``);
    otherwise uniform given that consecutive ones are at least ``min_gap`` apart."""
    room = max(room, n)
    step = min_gap if room >= 2 * n * min_gap else 0
    free = rng.uniform(1, room - n * step, size=n)  # the slack; offsets: sorted slack + step apart
    return np.sort(free).round().astype(np.int64) + step * np.arange(1, n + 1)


def oversample_batches(batches: Iterable[dict[str, Any]], times: float, batch_size: int, *,
                       gap: float = 256, min_gap: int | None = None,
                       select: Callable[[dict[str, Any]], bool] = is_positive,
                       seed: int | Sequence[int] = 0, inputs: int | None = None) -> Iterator[dict[str, Any]]:
    """:func:`oversample` over the samples of ``collate_xray`` batches, re-batched to ``batch_size``.

    ``min_gap`` defaults to ``batch_size``; ``inputs`` counts samples, not batches; the last batch
    may be smaller.
    """
    samples = (s for batch in batches for s in unbatch(batch))
    yield from rebatch(oversample(samples, times, gap=gap, min_gap=min_gap or min(batch_size, int(gap)),
                                  select=select, seed=seed, inputs=inputs), batch_size)


def rebatch(samples: Iterable[dict[str, Any]], batch_size: int) -> Iterator[dict[str, Any]]:
    """:func:`streamaug.collate_xray` batches of ``batch_size`` consecutive samples (the last may be smaller).

    Examples:
        >>> import torch
        >>> xs = [{"image": torch.zeros(1, 2, 2), "label": i % 2} for i in range(5)]
        >>> [b["label"].tolist() for b in rebatch(xs, 2)]
        [[0, 1], [0, 1], [0]]
    """
    buf: list[dict[str, Any]] = []
    for sample in samples:
        buf.append(sample)
        if len(buf) == batch_size:
            yield collate_xray(buf)
            buf = []
    if buf:
        yield collate_xray(buf)
