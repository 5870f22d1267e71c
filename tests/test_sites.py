"""Tests for streamaug.sites.proposer: intensity filter, matching, the proposer, determinism, real data."""
from __future__ import annotations

import csv
import json
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from sitecheck import _brute_means, _check_geometry, _sample

from streamaug.sites import LesionBoxBank, SiteProposer, _propose_kernels, integral_image, parse_boxes, sample_seed
from streamaug.sites import _kernels as _site_kernels


# --------------------------------------------------------------------------- intensity filter
def _half_dark(height=128, width=128, dark=0.05, bright=0.9):
    img = np.full((height, width), bright, np.float32)
    img[:, : width // 2] = dark
    return img


def _square_bank(sizes, region=None, view=None, width=128, height=128):
    # boxes spread over the whole width (both halves of _half_dark)
    xs = [(i * 37) % (width - sz) for i, sz in enumerate(sizes)]
    recs = [{"key": f"L{i}", "region": region, "view": view, "width": width, "height": height,
             "boxes": [[x, 10, x + sz, 10 + sz]]} for i, (x, sz) in enumerate(zip(xs, sizes))]
    return LesionBoxBank.from_records(recs)


def test_intensity_filter_drops_dark_crops_keeps_bright():
    img = _half_dark()
    bank = _square_bank([6, 10, 14, 20] * 5)
    prop = SiteProposer(bank, n=20, min_size=1, min_intensity=0.15)
    kept_total = dropped_total = in_dark = 0
    for i in range(30):
        key = f"normal-{i}"
        cands = prop.candidates(128, 128, {}, key)
        sites = prop(_sample(key, img))["sites"].numpy()
        _check_geometry(sites, 128, 128)
        means = _brute_means(img, cands)
        np.testing.assert_array_equal(sites, cands[means >= 0.15])  # exactly the bright-enough ones
        assert (sites[:, 2] > 64).all()  # no kept site lies wholly in the dark half
        in_dark += int((cands[:, 2] <= 64).sum())
        kept_total += len(sites)
        dropped_total += len(cands) - len(sites)
    assert kept_total > 0 and dropped_total >= in_dark > 0
    assert prop.stats["dropped_dark"] == dropped_total and prop.stats["kept"] == kept_total
    assert prop.stats["proposed"] == kept_total + dropped_total


@pytest.mark.parametrize("threshold,expect", [(0.0, "all"), (0.5, "some"), (0.95, "none")])
def test_intensity_threshold_is_configurable(threshold, expect):
    img = _half_dark()
    prop = SiteProposer(_square_bank([12] * 10), n=10, min_intensity=threshold)
    n_cands = len(prop.candidates(128, 128, {}, "k"))
    n_sites = len(prop(_sample("k", img))["sites"])
    assert n_cands == 10
    assert {"all": n_sites == n_cands, "some": 0 < n_sites < n_cands, "none": n_sites == 0}[expect], n_sites


@pytest.mark.parametrize("size,sides,threshold,path", [
    (256, [8, 12, 16, 20], 0.25, "direct"),     # 4 small crops on a 256x256 image: direct sums
    (40, [30, 34, 36, 38], 0.45, "integral"),   # crops covering 3x the image: integral image
])
def test_drop_dark_chooses_the_path_by_area(size, sides, threshold, path):
    ramp = (np.arange(size, dtype=np.float32) + 0.3) / size  # no crop mean is exactly the threshold
    img = np.broadcast_to(ramp, (size, size)).copy()
    bank = _square_bank(sides, width=size, height=size)
    prop = SiteProposer(bank, n=len(sides), min_size=1, min_intensity=threshold)
    for i in range(20):
        cands = prop.candidates(size, size, {}, f"k{i}")
        sites = prop(_sample(f"k{i}", img))["sites"].numpy()
        np.testing.assert_array_equal(sites, cands[_brute_means(img, cands) >= threshold])
    assert prop.stats["kept"] > 0 and prop.stats["dropped_dark"] > 0  # the threshold cuts through
    assert prop.stats["integral_images"] == (0 if path == "direct" else 20)
    assert (prop._buffer is None) == (path == "direct")  # no 8 (H+1)(W+1) scratch unless needed




# --------------------------------------------------------------------------- matching and scaling
def _matching_bank():
    # box side encodes the record: 10 lower/frontal, 20 lower/lateral, 30 upper/frontal
    recs = [{"key": "lf", "region": "lower_limb", "view": "frontal", "boxes": [[0, 0, 10, 10]]},
            {"key": "ll", "region": "Lower_Limb", "view": "LATERAL", "boxes": [[0, 0, 20, 20]]},
            {"key": "uf", "region": "upper_limb", "view": "frontal", "boxes": [[0, 0, 30, 30]]}]
    return LesionBoxBank.from_records(recs)


@pytest.mark.parametrize("region,view,level,sides", [
    ("lower_limb", "frontal", 1, {10}),
    ("LOWER_LIMB", "lateral", 1, {20}),
    ("lower_limb", "oblique", 2, {10, 20}),   # view relaxed first
    ("lower_limb", None, 2, {10, 20}),
    ("pelvis", "frontal", 3, {10, 20, 30}),   # then region
    (None, "frontal", 3, {10, 20, 30}),
])
def test_matching_by_region_and_view_with_fallback(region, view, level, sides):
    bank = _matching_bank()
    idx, got_level = bank.match(region, view)
    assert got_level == level
    prop = SiteProposer(bank, n=3, min_intensity=0.0, min_size=1)
    seen = set()
    for i in range(40):
        sites = prop(_sample(f"k{i}", np.ones((100, 100)), region=region, view=view))["sites"].numpy()
        seen.update((sites[:, 2] - sites[:, 0]).tolist())
    assert seen == sides
    assert prop.stats[f"match_level_{level}"] == 40


def test_boxes_of_gathers_and_scales_per_record():
    recs = [{"width": 100, "height": 100, "boxes": [[10, 20, 30, 60], [0, 0, 5, 5]]},
            {"boxes": [[1, 2, 3, 4]]},                                  # no size: unscaled
            {"width": 200, "height": 0, "boxes": [[10.5, 20, 30, 60]]},  # width only
            {"width": 256, "height": 256, "boxes": [[7, 7, 9, 9]]}]     # same size: unscaled

    def reference(i, h, w):
        b, (rw, rh) = np.array(recs[i]["boxes"], float), (recs[i].get("width", 0), recs[i].get("height", 0))
        return b * np.array([w / rw if rw else 1, h / rh if rh else 1] * 2)

    bank = LesionBoxBank.from_records(recs)
    for picks in ([0, 1, 2, 3], [3, 0], [2], []):
        for h, w in ((256, 256), (200, 400), (1, 3)):
            got = bank.boxes_of(np.array(picks, dtype=np.int64), h, w)
            want = np.concatenate([reference(i, h, w) for i in picks]) if picks else np.zeros((0, 4))
            np.testing.assert_allclose(got, want, rtol=1e-15)
    with pytest.raises(IndexError):
        bank.boxes_of(np.array([4]), 10, 10)


def test_boxes_are_scaled_to_the_normal_image_size():
    bank = LesionBoxBank.from_records([{"key": "a", "width": 100, "height": 100, "boxes": [[10, 20, 30, 60]]},
                                       {"key": "b", "boxes": [[1, 2, 3, 4]]}])
    np.testing.assert_allclose(bank.boxes_for(0, 200, 400), [[40, 40, 120, 120]])  # H=200, W=400
    np.testing.assert_allclose(bank.boxes_for(0, 100, 100), [[10, 20, 30, 60]])
    np.testing.assert_allclose(bank.boxes_for(1, 999, 777), [[1, 2, 3, 4]])  # no size: unscaled
    prop = SiteProposer(LesionBoxBank.from_records([bank_rec := {"width": 100, "height": 100,
                                                                 "boxes": [[10, 20, 30, 60]]}]),
                        n=1, min_intensity=0.0)
    assert bank_rec["boxes"]  # the record itself is not modified
    for i in range(20):
        sites = prop(_sample(f"k{i}", np.ones((200, 400))))["sites"].numpy()
        assert sites.shape == (1, 4)
        x0, y0, x1, y1 = sites[0]
        assert x1 - x0 == 80 and x0 <= 40 and x1 >= 120 and y0 <= 40 and y1 >= 120


def test_bank_pickles_and_empty_bank_gives_no_sites():
    bank = _matching_bank()
    again = pickle.loads(pickle.dumps(bank))
    assert len(again) == 3 and again.match("upper_limb", "frontal")[0].tolist() == [2]
    empty = LesionBoxBank.from_records([{"boxes": ""}])
    assert len(empty) == 0 and empty.match("x", "y")[1] == 0
    assert SiteProposer(empty)(_sample("k", np.ones((32, 32))))["sites"].shape == (0, 4)


def test_from_manifest(tmp_path):
    entry = {"region": "lower_limb", "view": "frontal", "width": 256, "height": 256}
    manifest = {"format": "streamaug-shards/1", "lesion_boxes": [
        {**entry, "key": "A", "split": "train", "label": "tumor", "boxes": [[1, 2, 30, 40]]},
        {**entry, "key": "B", "split": "train", "label": "tumor", "boxes": [[5, 5, 9, 9], [50, 50, 70, 90]]},
        {**entry, "key": "C", "split": "val", "label": "tumor", "boxes": [[0, 0, 8, 8]]},
        {**entry, "key": "D", "split": "train", "label": "normal", "boxes": [[0, 0, 8, 8]]},
        {**entry, "key": "E", "split": "train", "label": "tumor", "boxes": []}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    bank = LesionBoxBank.from_manifest(tmp_path / "manifest.json")
    assert bank.keys == ["A", "B"] and bank.boxes.shape == (3, 4)
    np.testing.assert_array_equal(bank.offsets, [0, 1, 3])
    assert LesionBoxBank.from_manifest(tmp_path, split=None).keys == ["A", "B", "C"]
    assert LesionBoxBank.from_manifest(manifest, split="val").keys == ["C"]
    with pytest.raises(ValueError, match="splits present"):
        LesionBoxBank.from_manifest(manifest, split="test")
    with pytest.raises(ValueError, match="lesion_boxes"):
        LesionBoxBank.from_manifest({"format": "streamaug-shards/1"})
    assert LesionBoxBank.from_manifest(manifest, select=lambda key, e: key != "A").keys == ["B"]


def test_stream_bank_follows_select(tmp_path):
    """A rare-positive ``select`` must not leak the boxes of the positives it drops into the bank."""
    from shardgen import write_shards

    from streamaug import XRayShards
    from streamaug.data.select import KeySelect

    write_shards(tmp_path, n=8, shard_size=4)  # k000000 and k000004 are lesions
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    entry = {"split": "train", "label": "tumor", "region": "lower_limb", "view": "frontal", "width": 16,
             "height": 16, "boxes": [[2, 3, 9, 10]]}
    manifest["lesion_boxes"] = [{**entry, "key": "k000000"}, {**entry, "key": "k000004"}]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    everything = XRayShards(str(tmp_path), sites=True)
    rare = XRayShards(str(tmp_path), sites=True, select=KeySelect("lower_limb", frozenset({"k000004"})))
    assert everything.sites.bank.keys == ["k000000", "k000004"] and rare.sites.bank.keys == ["k000004"]


# --------------------------------------------------------------------------- the proposer
def test_lesion_image_gets_one_crop_per_box_without_a_bank():
    boxes = [[10, 12, 30, 20], [60, 60, 100, 70]]
    out = SiteProposer(None, s=2.0)(_sample("L", np.ones((128, 128)), label=1, boxes=boxes))
    sites = out["sites"]
    assert sites.dtype == torch.int64 and sites.shape == (2, 4)
    _check_geometry(sites.numpy(), 128, 128)
    np.testing.assert_array_equal((sites[:, 2] - sites[:, 0]).numpy(), [40, 80])
    for (bx0, by0, bx1, by1), (x0, y0, x1, y1) in zip(boxes, sites.tolist()):
        assert x0 <= bx0 and y0 <= by0 and x1 >= bx1 and y1 >= by1
    tumour = _sample("L", np.zeros((64, 64)), label="tumor", boxes=[[1, 1, 9, 9]])
    assert SiteProposer(None)(tumour)["sites"].shape == (1, 4)  # no intensity filter on lesions


def test_no_sites_for_unknown_label_missing_bank_or_lesion_without_boxes():
    img = np.ones((64, 64))
    bank = _square_bank([8])
    assert SiteProposer(bank)(_sample("k", img, label=-1))["sites"].shape == (0, 4)
    assert SiteProposer(None)(_sample("k", img, label=0))["sites"].shape == (0, 4)
    assert SiteProposer(bank)(_sample("k", img, label=1))["sites"].shape == (0, 4)
    assert SiteProposer(bank)(_sample("k", img, label=0))["sites"].shape == (1, 4)
    assert SiteProposer(bank)(_sample("k", img, label=torch.tensor(0)))["sites"].shape == (1, 4)
    assert SiteProposer(bank)(_sample("k", img, label=np.int64(-1)))["sites"].shape == (0, 4)


def test_call_does_not_mutate_and_validates():
    sample = _sample("k", np.ones((64, 64)))
    out = SiteProposer(_square_bank([8]))(sample)
    assert "sites" in out and "sites" not in sample and out["image"] is sample["image"]
    with pytest.raises(KeyError, match="key"):
        SiteProposer()({"image": torch.zeros(1, 4, 4), "label": 0})
    with pytest.raises(ValueError, match="image must be"):
        SiteProposer()(_sample("k", np.zeros((2, 4, 4))))
    for bad in ({"s": 0}, {"n": 0}, {"max_sites": -1}, {"min_size": 0}):
        with pytest.raises(ValueError):
            SiteProposer(None, **bad)
    with pytest.raises(TypeError, match="LesionBoxBank"):
        SiteProposer([1, 2])


def test_max_sites_caps_with_a_random_subset():
    prop = SiteProposer(_square_bank([8, 12, 16, 20, 24, 28]), n=6, max_sites=2, min_intensity=0.0)
    full = SiteProposer(_square_bank([8, 12, 16, 20, 24, 28]), n=6, min_intensity=0.0)
    for i in range(10):
        capped = prop(_sample(f"k{i}", np.ones((96, 96))))["sites"].numpy()
        every = full(_sample(f"k{i}", np.ones((96, 96))))["sites"].numpy()
        assert capped.shape == (2, 4) and every.shape == (6, 4)
        assert all(any((row == e).all() for e in every) for row in capped)
    assert prop.stats["dropped_cap"] == 40 and prop.stats["kept"] == 20
    lesion = _sample("L", np.ones((64, 64)), label=1, boxes=[[1, 1, 9, 9], [30, 30, 40, 40]])
    assert SiteProposer(None, max_sites=1)(lesion)["sites"].shape == (1, 4)  # lesion images are capped too


def _sites_for(prop, keys, img):
    return {k: prop(_sample(k, img, region="lower_limb", view="frontal"))["sites"].numpy() for k in keys}


def test_determinism_by_seed_key_and_epoch():
    img = _half_dark(96, 96, dark=0.3)
    sizes = [6, 9, 13, 17, 22, 25, 30, 33]
    bank = _square_bank(sizes, region="lower_limb", view="frontal", width=96, height=96)
    keys = [f"IMG{i:06d}" for i in range(12)]
    first = _sites_for(SiteProposer(bank, seed=3), keys, img)
    copy = pickle.loads(pickle.dumps(SiteProposer(bank, seed=3)))
    again = _sites_for(copy, keys[::-1], img)  # a pickled copy, keys in the other order
    for k in keys:
        np.testing.assert_array_equal(first[k], again[k])
    assert any(not np.array_equal(first[keys[0]], first[k]) for k in keys[1:])  # keys differ
    other_seed = _sites_for(SiteProposer(bank, seed=4), keys, img)
    assert any(not np.array_equal(first[k], other_seed[k]) for k in keys)
    prop = SiteProposer(bank, seed=3)
    prop.set_epoch(1)
    epoch1 = _sites_for(prop, keys, img)
    assert any(not np.array_equal(first[k], epoch1[k]) for k in keys)
    prop.set_epoch(0)
    back = _sites_for(prop, keys, img)
    assert all(np.array_equal(first[k], back[k]) for k in keys)


def test_sample_seed_is_a_pure_hash_of_seed_epoch_key():
    first = sample_seed(3, 1, "IMG000123")
    assert 0 <= first < 2**64 and first == sample_seed(3, 1, "IMG000123")
    for other in ((4, 1, "IMG000123"), (3, 2, "IMG000123"), (3, 1, "IMG000124"), (3, 1, "IMG000123 ")):
        assert sample_seed(*other) != first, other
    assert sample_seed(-1, 0, "k") == sample_seed(2**64 - 1, 0, "k")
    prop = SiteProposer(seed=3)
    prop.set_epoch(1)
    assert prop.seed_for("IMG000123") == first
    # another interpreter with another str hash seed computes the same state
    code = "from streamaug.sites import sample_seed; print(sample_seed(3, 1, 'IMG000123'))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert int(out.stdout) == first


def test_same_sites_in_dataloader_workers():
    bank = _square_bank([8, 16, 24], width=64, height=64)
    samples = [_sample(f"k{i}", np.ones((64, 64))) for i in range(6)]
    prop = SiteProposer(bank, n=3, seed=11)
    local = [prop(s)["sites"] for s in samples]

    class _Data(torch.utils.data.Dataset):
        def __len__(self):
            return len(samples)

        def __getitem__(self, i):
            return prop(samples[i])["sites"]

    loader = torch.utils.data.DataLoader(_Data(), batch_size=None, num_workers=2)
    for want, got in zip(local, loader):
        torch.testing.assert_close(got, want)


def test_kernels_are_ready_when_the_proposer_is_built():
    # forked DataLoader workers inherit them: no ~0.5 s kernel load per worker at every epoch
    code = ("from streamaug.sites import _kernels as k, _propose_kernels as pk; import streamaug.sites as sites; "
            "assert not pk._WARM; sites.SiteProposer(); print(pk._WARM, k._WARM, "
            "all(f.signatures for f in (pk.lesion_sites_kernel, pk.normal_sites_kernel)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True"]


def test_kernels_compile_once_per_signature():
    prop = SiteProposer(_square_bank([8, 16]), min_intensity=0.1)
    prop(_sample("lesion", np.ones((40, 50)), label=1, boxes=[[1, 2, 3, 4]]))
    prop(_sample("lesion", np.ones((40, 50)), label=1, boxes=torch.tensor([[1, 2, 3, 4]])))
    # 40x50, 33x21: crops smaller than the image (direct sums); 10x10: two 8x8 crops >= 100 (integral)
    for img in (np.ones((40, 50), np.float64), np.ones((40, 50), np.float32).T, torch.ones(1, 33, 21),
                np.ones((10, 10), np.float32)):
        prop(_sample("k", img))
        integral_image(img if not isinstance(img, torch.Tensor) else img[0].numpy())
    assert _site_kernels._WARM
    assert prop._buffer is not None and pickle.loads(pickle.dumps(prop))._buffer is None  # not shipped
    prop.candidates(40, 50, {}, "k")
    for kernel in (_site_kernels.integral_image_kernel, _site_kernels.box_means_kernel,
                   _site_kernels.crop_means_kernel, _site_kernels.place_crops_kernel,
                   _site_kernels.gather_boxes_kernel, _site_kernels.direct_is_cheaper_kernel,
                   _propose_kernels.lesion_sites_kernel,
                   _propose_kernels.normal_sites_kernel, _propose_kernels.normal_candidates_kernel):
        assert len(kernel.signatures) == 1, (kernel, kernel.signatures)


# --------------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_real_btxrd_normals(shared_data):
    from PIL import Image

    root = shared_data / "btxrd"
    with open(root / "metadata.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    tumours = [r for r in rows if r["label"] == "tumor" and r["split"] == "train"]
    normals = [r for r in rows if r["label"] == "normal"][::40][:30]
    bank = LesionBoxBank.from_records(
        {**r, "key": r["image_id"], "width": 256, "height": 256} for r in tumours)
    assert len(bank) > 500
    prop = SiteProposer(bank, s=1.0, n=7, min_intensity=0.15)
    n_kept = n_cands = 0
    for r in normals:
        img = np.asarray(Image.open(root / r["image"]).convert("L"), dtype=np.float32) / 255.0
        height, width = img.shape
        meta = {"region": r["region"], "view": r["view"]}
        cands = prop.candidates(height, width, meta, r["image_id"])
        sites = prop(_sample(r["image_id"], img, label=0, **meta))["sites"].numpy()
        _check_geometry(cands, height, width)
        _check_geometry(sites, height, width)
        means = _brute_means(img, cands)
        np.testing.assert_array_equal(sites, cands[means >= 0.15])
        assert (_brute_means(img, sites) >= 0.15).all()
        # candidate sides come from matched tumour boxes: s=1 -> a side of some bank box (or min_size)
        bank_sides = {max(int(math.ceil(b[2] - b[0])), int(math.ceil(b[3] - b[1])), 8) for b in bank.boxes}
        assert set((cands[:, 2] - cands[:, 0]).tolist()) <= bank_sides | {min(height, width)}
        n_kept += len(sites)
        n_cands += len(cands)
    assert n_kept > 0
    assert prop.stats["dropped_dark"] == n_cands - n_kept > 0  # dark background crops were dropped
    assert prop.stats["match_level_1"] >= len(normals) - 2
    # tumour images: one crop per box, containing it
    for r in tumours[:20]:
        boxes = parse_boxes(r["boxes_xyxy"])
        img = np.asarray(Image.open(root / r["image"]).convert("L"), dtype=np.float32) / 255.0
        sites = prop(_sample(r["image_id"], img, label=1, boxes=boxes))["sites"].numpy()
        _check_geometry(sites, *img.shape)
        assert len(sites) == len(boxes)
        assert ((sites[:, :2] <= np.floor(boxes[:, :2])) & (sites[:, 2:] >= np.ceil(boxes[:, 2:]))).all()
