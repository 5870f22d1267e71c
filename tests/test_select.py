"""Selections decided from sample metadata: matching the synthesis sources to the positives."""
from __future__ import annotations

import io
import json
import pickle
import tarfile

import numpy as np
import pytest
from shardgen import png_bytes, write_shards

from streamaug.data.select import AllOf, KeySet, matched_normals


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """60 samples ``k000000``...: every fifth a positive; the JSON's ``index`` is the sample number."""
    folder = tmp_path_factory.mktemp("select")
    write_shards(folder, n=60, shard_size=10, lesion_every=5)
    return folder


def _young_positives(key: str, meta: dict) -> bool:
    """The positives 0, 5, 10, 15 and every normal."""
    return meta["label"] != "tumor" or meta["index"] < 20


def test_matched_normals_follow_the_positives_distribution(shards):
    select, counts = matched_normals(str(shards), None, _young_positives, "index", seed=0, bins=2)
    # positives 0, 5, 10, 15: one edge at their median 7.5; normals 1-4, 6, 7 below it, 42 above
    assert counts["edges"] == [7.5] and counts["positives"] == 4 and counts["normals"] == 48
    assert counts["per_bin"] == 6 and counts["sources"] == 12 and counts["unmatched_bins"] == 0
    low = {f"k{i:06d}" for i in (1, 2, 3, 4, 6, 7)}
    assert low <= select.keys and len(select.keys - low) == 6
    assert all(int(k[1:]) > 7 and int(k[1:]) % 5 for k in select.keys - low)  # normals of the upper bin
    # unmatched, 42 of the 48 normals lie above the positives' median; matched, half of them
    again, _ = matched_normals(str(shards), None, _young_positives, "index", seed=0, bins=2)
    other, _ = matched_normals(str(shards), None, _young_positives, "index", seed=1, bins=2)
    assert again.keys == select.keys and other.keys != select.keys
    assert pickle.loads(pickle.dumps(select)).keys == select.keys  # DataLoader workers get a copy


def test_matched_normals_refuse_a_column_the_positives_lack(shards):
    with pytest.raises(ValueError, match="no selected positive has a number in that column"):
        matched_normals(str(shards), None, _young_positives, "age", seed=0)
    with pytest.raises(ValueError, match="bins"):
        matched_normals(str(shards), None, _young_positives, "index", seed=0, bins=0)


@pytest.mark.parametrize("missing", ["", "nan", "NaN"])
def test_matched_normals_need_normals_with_a_value(tmp_path, missing):
    """As a CSV packs an empty cell (or pandas writes a missing one): the positives have an age, the
    normals ``""`` or ``"nan"``, which must not land in the top bin."""
    with tarfile.open(tmp_path / "s-000000.tar", "w") as tar:
        for i, (label, age) in enumerate([("tumor", "12"), ("normal", missing), ("tumor", "40"), ("normal", missing)]):
            meta = {"label": label, "age": age, "boxes": [[1, 1, 4, 4]] if label == "tumor" else []}
            for ext, data in (("png", png_bytes(np.zeros((8, 8), np.uint8))), ("json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"k{i}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="none of the 2 selected normals has a number in that column"):
        matched_normals(str(tmp_path / "s-000000.tar"), None, lambda k, m: True, "age", seed=0)


def test_all_of_needs_every_select():
    both = AllOf(KeySet({"a", "b"}), None, lambda k, m: m.get("ok", False))
    assert both("a", {"ok": True}) and not both("a", {}) and not both("c", {"ok": True})
    assert AllOf()("anything", {})


def test_matched_normals_count_the_bins_no_normal_fills(shards):
    """Positives 0..15 and normals from index 8 on: the lower of two bins has no normal to match."""
    keep = lambda k, m: (m["label"] == "tumor" and m["index"] < 20) or (m["label"] != "tumor" and m["index"] > 7)  # noqa: E731
    _, counts = matched_normals(str(shards), None, keep, "index", seed=0, bins=2)
    assert counts["unmatched_bins"] == 1
