"""LesionStream's mix on real BTXRD radiographs, small (tests/realdata_mix.py has the full measurement)."""
from __future__ import annotations

import csv

import pytest
from realdata_mix import measure, pack_rows


@pytest.fixture(scope="module")
def lower_limb_subset(shared_data, tmp_path_factory):
    """40 tumour and 120 normal lower-limb rows of the train split, packed."""
    root = shared_data / "btxrd"
    with open(root / "metadata.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["region"] == "lower_limb" and r["split"] == "train"]
    by_label = {label: [r for r in rows if r["label"] == label] for label in ("tumor", "normal")}
    return str(pack_rows(root, by_label["tumor"][:40] + by_label["normal"][:120], tmp_path_factory.mktemp("mix")))


@pytest.mark.realdata
def test_real_samples_do_not_depend_on_acceptance_and_ranking_is_cheap(lower_limb_subset):
    result = measure(lower_limb_subset, rates=(0.1, 1.0), samples=120, ranked_samples=24)
    assert result["source"]["positive_share"] == 0.25
    assert result["same_real_samples_at_every_rate"]  # the real stream is drawn apart from synthesis
    assert result["rates"]["1.0"]["candidates_per_accepted"] == 2.0
    assert 0 < result["ranked"]["candidates_per_accepted"] <= 3
