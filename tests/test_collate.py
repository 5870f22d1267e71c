"""collate_xray helpers: one storage per sample for the hand-off from DataLoader workers."""
from __future__ import annotations

import torch
from shardgen import write_shards

from streamaug import XRayShards
from streamaug.data.collate import collate_xray, one_storage


def _sample() -> dict:
    return {"key": "a", "label": 1, "image": torch.rand(1, 5, 7), "mask": torch.rand(1, 5, 7).round(),
            "boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]]), "sites": torch.arange(8, dtype=torch.int64).view(2, 4),
            "empty": torch.zeros(0, 4), "meta": {"x": 1}}


def test_one_storage_keeps_values_dtypes_and_shapes():
    s = _sample()
    t = one_storage(s)
    assert t.keys() == s.keys() and t["key"] == "a" and t["meta"] is s["meta"]
    for name in ("image", "mask", "boxes", "sites", "empty"):
        assert t[name].dtype == s[name].dtype and torch.equal(t[name], s[name])
        assert t[name].data_ptr() % 8 == 0 or t[name].numel() == 0
    ptrs = {t[n].untyped_storage().data_ptr() for n in ("image", "mask", "boxes", "sites")}
    assert len(ptrs) == 1  # one storage, so one shared-memory segment per sample


def test_one_storage_copies_non_contiguous_input():
    base = torch.arange(24.0).view(4, 6)
    t = one_storage({"a": base[:, ::2], "b": base.T})
    assert torch.equal(t["a"], base[:, ::2]) and torch.equal(t["b"], base.T) and t["b"].is_contiguous()


def test_per_sample_handoff_from_workers_is_exact(tmp_path):
    write_shards(tmp_path, n=8, shard_size=4)
    local = {s["key"]: s for s in XRayShards(str(tmp_path), shuffle=False)}
    loader = torch.utils.data.DataLoader(XRayShards(str(tmp_path), shuffle=False), batch_size=None, num_workers=2)
    got = {s["key"]: s for s in loader}
    assert got.keys() == local.keys()
    for key, want in local.items():
        assert torch.equal(got[key]["image"], want["image"]) and torch.equal(got[key]["boxes"], want["boxes"])
    batch = collate_xray(list(got.values()))  # views stack like ordinary tensors
    assert batch["image"].shape == (8, 1, 16, 16)
