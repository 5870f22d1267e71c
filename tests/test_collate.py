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
    for sample in got.values():  # each arrived in one storage (one shared-memory segment), as a plain dict
        assert type(sample) is dict
        tensors = [v for v in sample.values() if isinstance(v, torch.Tensor)]
        assert len(tensors) >= 2 and len({v.untyped_storage().data_ptr() for v in tensors}) == 1


def test_a_batched_worker_does_not_copy_its_samples_into_one_storage(tmp_path, monkeypatch):
    """Before: every sample a worker read was copied into one storage, though a batched loader collates
    it in the worker and never pickles it (about 5 % of the 2-worker loader)."""
    from streamaug.data import collate

    write_shards(tmp_path, n=8, shard_size=4)
    calls = []
    monkeypatch.setattr(collate, "one_storage", lambda s: calls.append(1) or dict(s))
    from torch.utils.data._utils.worker import WorkerInfo

    ds = XRayShards(str(tmp_path), shuffle=False)
    info = WorkerInfo(id=0, num_workers=1, seed=0, dataset=ds)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)  # as inside a worker
    samples = list(ds)
    assert len(collate_xray(samples)["key"]) == 8 and calls == []
    import pickle

    pickle.dumps(samples[0])  # handed over by itself: packed then
    assert calls == [1]
