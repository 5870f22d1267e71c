"""Tests for the fused per-image proposal kernels (streamaug.sites._propose_kernels) through SiteProposer."""
from __future__ import annotations

import collections
from math import comb

import numpy as np
import pytest
from sitecheck import _sample

from streamaug.sites import LesionBoxBank, SiteProposer
from streamaug.sites import _propose_kernels as pk


def test_splitmix64_matches_the_reference_outputs():
    # first outputs of Vigna's splitmix64.c from state 1234567 (also the rand_xoshiro test vector)
    state = np.array([1234567], dtype=np.uint64)
    got = [int(pk.next_u64(state)) for _ in range(5)]
    assert got == [6457827717110365317, 3203168211198807973, 9817491932198370423,
                   4593380528125082431, 16408922859458223821]
    assert int(state[0]) == (1234567 + 5 * 0x9E3779B97F4A7C15) % 2**64


def test_uniforms_and_bounded_ints_cover_their_range_evenly():
    state = np.array([7], dtype=np.uint64)
    u = np.array([pk.next_uniform(state) for _ in range(20000)])
    assert u.min() >= 0.0 and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.01
    counts = np.bincount([pk.next_below(state, 6) for _ in range(12000)], minlength=6)
    assert len(counts) == 6 and counts.min() > 1800 and counts.max() < 2200  # ~2000 each


@pytest.mark.parametrize("count,k", [(5, 2), (6, 3), (4, 4), (3, 7)])
def test_choose_picks_every_subset_equally_often(count, k):
    state = np.array([11], dtype=np.uint64)
    draws = [pk.choose_kernel(count, k, state) for _ in range(6000)]
    assert all(len(d) == min(k, count) == len(set(d.tolist())) for d in draws)
    assert all(d.min() >= 0 and d.max() < count for d in draws)
    subsets = collections.Counter(tuple(sorted(d.tolist())) for d in draws)
    expected = 6000 / len(subsets)
    assert len(subsets) == comb(count, min(k, count))
    assert all(abs(c - expected) < 5 * expected ** 0.5 for c in subsets.values()), subsets


def test_cap_keeps_a_random_subset_in_row_order():
    sites = np.arange(40, dtype=np.int64).reshape(10, 4)
    state = np.array([3], dtype=np.uint64)
    seen = collections.Counter()
    for _ in range(3000):
        out = pk.cap_kernel(sites, 3, state)
        rows = (out[:, 0] // 4).tolist()
        assert len(rows) == 3 and rows == sorted(rows)
        seen.update(rows)
    assert all(800 < c < 1000 for c in seen.values()), seen  # each row kept 3/10 of the time
    assert pk.cap_kernel(sites, -1, state) is sites and len(pk.cap_kernel(sites, 10, state)) == 10


def test_proposer_places_lesion_crops_anywhere_in_the_valid_range():
    # box [40, 50) in a 100-wide image, side 30 -> valid starts 20..40, all should be reached
    prop = SiteProposer(None, s=1.0, min_size=1)
    starts = {int(prop(_sample(f"k{i}", np.ones((100, 100)), label=1, boxes=[[40, 40, 50, 70]]))["sites"][0, 0])
              for i in range(600)}
    assert starts == set(range(20, 41)), sorted(starts)


def test_normal_images_draw_matched_records_evenly():
    # record i has one box of side 8 + 2 i: a crop's side says which record it came from
    recs = [{"key": f"r{i}", "region": "knee", "boxes": [[0, 0, 8 + 2 * i, 8 + 2 * i]]} for i in range(6)]
    recs.append({"key": "other", "region": "hand", "boxes": [[0, 0, 40, 40]]})
    prop = SiteProposer(LesionBoxBank.from_records(recs), n=2, min_intensity=0.0)
    sides = collections.Counter()
    for i in range(1500):
        sites = prop(_sample(f"n{i}", np.ones((64, 64)), region="knee"))["sites"].numpy()
        assert len(sites) == 2 and sites[0, 2] - sites[0, 0] != sites[1, 2] - sites[1, 0]  # no repeats
        sides.update((sites[:, 2] - sites[:, 0]).tolist())
    assert set(sides) == {8, 10, 12, 14, 16, 18}  # never the other region's record
    assert all(400 < c < 600 for c in sides.values()), sides  # each record in 2/6 of the images
