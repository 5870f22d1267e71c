"""streamaug.data.oversample: counts, spread of the copies, determinism, re-batching."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from streamaug.data.collate import collate_xray
from streamaug.data.oversample import oversample, oversample_batches


def _samples(n=3000, every=10):
    return [{"key": f"k{i}", "image": torch.zeros(1, 2, 2), "label": int(i % every == 0)} for i in range(n)]


def _copies(batches):
    """key -> [(output position, batch index)] of every positive."""
    where, p = {}, 0
    for bi, batch in enumerate(batches):
        for key, label in zip(batch["key"], batch["label"].tolist()):
            if label:
                where.setdefault(key, []).append((p, bi))
            p += 1
    return where


def test_counts_and_fractional_times():
    xs = _samples(2000)
    out = list(oversample(xs, 3, gap=60, min_gap=8, seed=0))
    assert len(out) == 2000 + 2 * 200 and all(out.count(x) == 3 for x in xs[:50] if x["label"])
    frac = list(oversample(xs, 2.5, gap=60, min_gap=8, seed=0))
    assert abs((len(frac) - 2000) / 200 - 1.5) < 0.15  # 1.5 extra copies per positive on average
    assert [x["key"] for x in oversample(xs, 1, seed=0)] == [x["key"] for x in xs]
    with pytest.raises(ValueError, match="times must be >= 1"):
        list(oversample(xs, 0.5))


def test_copies_are_spread_across_batches_at_the_asked_gap():
    loader = [collate_xray(_samples(2000)[i:i + 32]) for i in range(0, 2000, 32)]
    where = _copies(oversample_batches(loader, 3, batch_size=32, gap=100, seed=1))
    assert len(where) == 200 and all(len(v) == 3 for v in where.values())
    gaps = [b[0] - a[0] for v in where.values() for a, b in zip(v, v[1:])]
    assert abs(np.mean(gaps) - 100) < 10  # the mean gap is the asked one
    shared = sum(len({bi for _, bi in v}) < len(v) for v in where.values())
    assert shared / len(where) < 0.05  # copies of one positive rarely share a batch (a shuffle buffer: ~30 %)


def test_deterministic_given_the_seed():
    xs = _samples(500)
    a = [x["key"] for x in oversample(xs, 3, gap=40, min_gap=4, seed=[3, 1])]
    b = [x["key"] for x in oversample(xs, 3, gap=40, min_gap=4, seed=[3, 1])]
    c = [x["key"] for x in oversample(xs, 3, gap=40, min_gap=4, seed=[3, 2])]
    assert a == b and a != c


def test_oversample_gap_keeps_the_end_of_an_epoch_from_piling_up():
    """Copies due after the input ends come last: ``epoch / times`` piles them into all-positive
    batches, :func:`oversample_gap` keeps the end close to the mean share."""
    from streamaug.data.oversample import oversample_gap

    xs = _samples(616, every=11)  # 56 positives, x5 -> 840 samples, as the BTXRD lower limb's epochs
    shares = {}
    for name, gap in (("epoch/times", 840 / 5), ("oversample_gap", oversample_gap(840, 5, 32))):
        labels = np.array([x["label"] for x in oversample(xs, 5, gap=gap, min_gap=32, seed=0)])
        shares[name] = [labels[i:i + 32].mean() for i in range(0, len(labels), 32)]
    assert oversample_gap(840, 5, 32) == 42 and oversample_gap(100, 5, 32) == 32
    assert sum(s == 1 for s in shares["epoch/times"]) >= 3  # the pile-up this guards against
    assert sum(s == 1 for s in shares["oversample_gap"]) <= 1
    assert sum(s > 0.6 for s in shares["oversample_gap"][:-1]) <= 1  # mean share 0.33


def _batch_shares(labels, batch=32):
    return [float(np.mean(labels[i:i + batch])) for i in range(0, len(labels), batch)]


def test_a_known_epoch_length_redraws_the_copies_that_would_pile_up_at_its_end():
    """Without ``inputs`` the copies due after the input ends come last as a block (all-positive
    batches); with it they are redrawn inside the epoch: every copy is kept, none comes after the
    last input but a few the estimate missed, and no batch is all positive."""
    from streamaug.data.oversample import oversample_gap

    gap = oversample_gap(840, 5, 32)
    base = _samples(616, every=11)  # 56 positives, x5 -> 840 samples
    for seed in range(5):
        xs = [base[i] for i in np.random.default_rng(seed).permutation(616)]
        plain = list(oversample(xs, 5, gap=gap, min_gap=32, seed=seed))
        known = list(oversample(xs, 5, gap=gap, min_gap=32, seed=seed, inputs=616))
        assert sorted(x["key"] for x in known) == sorted(x["key"] for x in plain)  # 5 of each positive
        assert len(known) - 1 - known.index(xs[-1]) <= 8  # copies after the last input
        shares = _batch_shares([x["label"] for x in known])
        assert max(shares) < 1 and max(shares[-2:]) <= 0.75  # mean share 1/3
        if seed == 0:  # the pile-up the option removes
            assert len(plain) - 1 - plain.index(xs[-1]) >= 25


@pytest.mark.parametrize("inputs", [0, 100, 3000, 10_000])
def test_a_wrong_epoch_length_keeps_every_copy(inputs):
    xs = _samples(2000)
    out = list(oversample(xs, 3, gap=60, min_gap=8, seed=2, inputs=inputs))
    assert len(out) == 2000 + 2 * 200 and all(out.count(x) == 3 for x in xs if x["label"])


def test_redrawn_offsets_are_increasing_and_inside_the_room():
    from streamaug.data.oversample import _offsets_within

    rng = np.random.default_rng(0)
    for room, n, min_gap in [(1000, 4, 32), (200, 4, 32), (3, 4, 32), (0, 2, 8), (64, 2, 32)]:
        for _ in range(50):
            offsets = _offsets_within(room, n, min_gap, rng)
            assert len(offsets) == n and offsets[0] >= 1 and offsets[-1] <= max(room, n)
            assert (np.diff(offsets) >= (min_gap if room >= 2 * n * min_gap else 0)).all()
    with pytest.raises(ValueError, match="inputs"):
        list(oversample(_samples(10), 2, gap=4, min_gap=2, inputs=-1))
