"""Zarr store: round trip of images/metadata/masks, and the rank/worker split."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from streamaug.data.zarr_source import ZarrXRays, write_zarr


def _items(n: int = 10, size: int = 8):
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 256, (size + i % 3, size), dtype=np.uint8)  # sizes differ
        meta = {"label": "tumor" if i % 2 else "normal", "region": "lower_limb", "view": "frontal",
                "boxes": [[1, 1, 4, 5]] if i % 2 else []}
        if i % 2:
            mask = np.zeros_like(img)
            mask[1:5, 1:4] = 255
            yield f"k{i:03d}", img, meta, mask
        else:
            yield f"k{i:03d}", img, meta


def test_round_trip(tmp_path):
    items = list(_items())
    path = tmp_path / "x.zarr"
    assert write_zarr(path, items) == [it[0] for it in items]
    ds = ZarrXRays(path, shuffle=False)
    samples = list(ds)
    assert [s["key"] for s in samples] == [it[0] for it in items] and len(ds) == len(items)
    for s, item in zip(samples, items):
        key, img, meta = item[:3]
        assert s["image"].dtype == torch.float32 and s["image"].shape == (1, *img.shape)
        assert torch.equal(s["image"][0], torch.from_numpy(img.astype(np.float32) / 255))
        assert s["label"] == (1 if meta["label"] == "tumor" else 0)
        assert s["boxes"].dtype == torch.float32 and s["boxes"].shape == (len(meta["boxes"]), 4)
        assert s["boxes"].tolist() == [[float(v) for v in b] for b in meta["boxes"]]
        assert s["meta"]["region"] == "lower_limb" and s["meta"]["size"] == img.shape
        assert s["meta"]["format"] == "zarr" and key in s["meta"]["source"]
        if len(item) == 4:
            assert torch.equal(s["mask"][0], torch.from_numpy((item[3] > 0).astype(np.float32)))
        else:
            assert "mask" not in s


def test_uint16_and_float_scaling(tmp_path):
    img16 = np.array([[0, 1, 4095]], np.uint16)
    write_zarr(tmp_path / "y.zarr", [("a", img16, {}), ("b", img16, {"bits": 12}),
                                     ("c", torch.tensor([[[0.25, 1.0]]]), {}),
                                     ("d", img16, {"bits": np.int64(12)})])  # as a pandas row gives it
    s = {x["key"]: x for x in ZarrXRays(tmp_path / "y.zarr", shuffle=False)}
    assert torch.equal(s["a"]["image"][0], torch.tensor([[0, 1 / 65535, 4095 / 65535]]))
    assert torch.allclose(s["b"]["image"][0], torch.tensor([[0, 1 / 4095, 1.0]]))
    assert torch.equal(s["d"]["image"], s["b"]["image"])
    assert torch.equal(s["c"]["image"], torch.tensor([[[0.25, 1.0]]]))
    assert s["a"]["label"] == -1 and s["a"]["boxes"].shape == (0, 4)


def test_write_errors(tmp_path):
    img = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="duplicate key"):
        write_zarr(tmp_path / "a.zarr", [("a", img, {}), ("a", img, {})])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        write_zarr(tmp_path / "b.zarr", [("a", np.full((2, 2), 3.0), {})])
    with pytest.raises(ValueError, match="mask"):
        write_zarr(tmp_path / "c.zarr", [("a", img, {}, np.zeros((3, 3)))])
    with pytest.raises(ValueError, match="invalid key"):
        write_zarr(tmp_path / "d.zarr", [("a/b", img, {})])
    write_zarr(tmp_path / "e.zarr", [("a", img, {})])
    with pytest.raises(FileExistsError):
        write_zarr(tmp_path / "e.zarr", [("a", img, {})])


def test_shuffle_depends_on_seed_and_epoch(tmp_path):
    write_zarr(tmp_path / "s.zarr", _items(20))
    ds = ZarrXRays(tmp_path / "s.zarr", seed=3)
    first = [s["key"] for s in ds]
    assert [s["key"] for s in ds] == first  # same epoch, same order
    ds.set_epoch(1)
    second = [s["key"] for s in ds]
    assert second != first and sorted(second) == sorted(first)
    assert [s["key"] for s in ZarrXRays(tmp_path / "s.zarr", seed=4)] != first


def test_rank_split_covers_each_key_once(tmp_path, monkeypatch):
    write_zarr(tmp_path / "r.zarr", _items(11))
    seen = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        ds = ZarrXRays(tmp_path / "r.zarr", seed=1)
        ds.set_epoch(2)
        seen += [s["key"] for s in ds]
    assert sorted(seen) == sorted(f"k{i:03d}" for i in range(11))


def test_dataloader_workers_cover_each_key_once(tmp_path):
    write_zarr(tmp_path / "w.zarr", _items(13))
    ds = ZarrXRays(tmp_path / "w.zarr", seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    keys = [s["key"] for s in loader]
    assert sorted(keys) == sorted(f"k{i:03d}" for i in range(13))  # no duplicates, nothing lost


def test_resampled_is_endless_and_seeded(tmp_path):
    write_zarr(tmp_path / "z.zarr", _items(5))
    ds = ZarrXRays(tmp_path / "z.zarr", resampled=True, seed=7)
    it = iter(ds)
    keys = [next(it)["key"] for _ in range(30)]
    assert len(keys) == 30 and set(keys) <= {f"k{i:03d}" for i in range(5)}
    it2 = iter(ZarrXRays(tmp_path / "z.zarr", resampled=True, seed=7))
    assert [next(it2)["key"] for _ in range(30)] == keys


def _resampled_keys(path, n=30, epoch=0):
    ds = ZarrXRays(path, resampled=True, seed=7)
    ds.set_epoch(epoch)
    it = iter(ds)
    return [next(it)["key"] for _ in range(n)]


def test_resampled_draws_differ_by_epoch_and_by_reader(tmp_path, monkeypatch):
    """Each epoch and each reader (rank x worker) draws its own sequence: the same one everywhere would
    repeat the samples of every other reader and every other epoch."""
    import streamaug.data.zarr_source as zarr_source
    from streamaug.data.distributed import Slot

    write_zarr(tmp_path / "z.zarr", _items(8))
    path = tmp_path / "z.zarr"
    assert _resampled_keys(path, epoch=0) != _resampled_keys(path, epoch=1)
    assert _resampled_keys(path, epoch=1) == _resampled_keys(path, epoch=1)
    by_worker = []
    for worker in range(2):
        monkeypatch.setattr(zarr_source, "current_slot", lambda w=worker: Slot(0, 1, w, 2))
        by_worker.append(_resampled_keys(path))
    assert by_worker[0] != by_worker[1]
