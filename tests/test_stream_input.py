"""Bad input to the streams: every case stops with a message that names the shards and the fix,
never a hang (an unbounded stream with nothing usable) or a silent double read."""
from __future__ import annotations

import io
import json
import re
import tarfile
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from shardgen import png_bytes, tiny_image, write_shards

from streamaug import LesionStream, XRayShards
from streamaug.data.select import KeySet, LabelSelect
from streamaug.io.errors import ShardError
from streamaug.models.registry import IdentityConfig, IdentityTranslator
from streamaug.sites import LesionBoxBank, SiteProposer
from streamaug.synth import LesionCrops

BANK = LesionBoxBank.from_records([{"key": "L", "region": "lower_limb", "view": "frontal", "width": 32,
                                    "height": 32, "boxes": [[8, 8, 20, 20]], "label": "tumor"}])


def _first(dataset, timeout: float = 60.0):
    """The first sample of ``dataset``, or its error; fails (instead of hanging the suite) if none comes."""
    out: dict = {}

    def run() -> None:
        try:
            out["sample"] = next(iter(dataset))
        except BaseException as err:  # noqa: BLE001 - handed to the test
            out["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"no sample and no error within {timeout} s: the stream hangs"
    if "error" in out:
        raise out["error"]
    return out["sample"]


def _fails(sample):
    raise ValueError("cannot use this sample")


@pytest.mark.parametrize("case", ["select keeps nothing", "every sample fails"])
def test_an_unbounded_stream_with_nothing_usable_raises_instead_of_spinning(tmp_path, case):
    paths = write_shards(tmp_path, n=12, shard_size=4)
    kw = ({"select": KeySet({"absent"})} if case == "select keeps nothing"
          else {"transform": _fails, "on_error": "skip"})
    ds = XRayShards(paths, resampled=True, **kw)
    with pytest.raises(ShardError, match=r"t-000000\.tar.*gave no usable sample") as err:
        _first(ds)
    if case == "select keeps nothing":
        assert "select=KeySet(<1 keys>) keeps none" in str(err.value)
    else:
        skipped = int(re.search(r"'skipped_samples': (\d+)", str(err.value)).group(1))
        assert "fail to decode" in str(err.value) and skipped >= 12  # every shard was read at least once


def test_an_unbounded_stream_reads_on_past_barren_shards(tmp_path):
    """Shards with nothing selected do not stop the stream while another shard still gives samples."""
    paths = write_shards(tmp_path, n=40, shard_size=4)
    ds = XRayShards(paths, resampled=True, select=KeySet({"k000039"}), epoch_length=3, buffer_size=0)
    assert [s["key"] for s in ds] == ["k000039"] * 3


def test_an_unbounded_stream_forgets_barren_shards_after_each_usable_sample(tmp_path):
    """Long enough that every shard is read between usable samples many times over: the count of
    barren shards starts again at each usable one, else the stream would stop as if all were barren."""
    paths = write_shards(tmp_path, n=40, shard_size=4)
    ds = XRayShards(paths, resampled=True, select=KeySet({"k000039"}), epoch_length=30, buffer_size=0)
    assert [s["key"] for s in ds] == ["k000039"] * 30


def test_lesion_stream_without_normals_names_the_label_it_needs(tmp_path):
    write_shards(tmp_path, n=12, shard_size=4, size=32)
    stream = LesionStream(tmp_path, translator=IdentityTranslator(IdentityConfig(patch_size=8)),
                          sites=SiteProposer(BANK, n=4, min_intensity=0.0), min_intensity=None, device_batch=4,
                          select=LabelSelect(1), epoch_length=8)
    with pytest.raises(ShardError, match=r"select=LabelSelect\(label=0, .*LabelSelect\(label=1\).*keeps none"):
        _first(stream)


def test_lesion_crops_from_shards_without_positives_says_so(tmp_path):
    write_shards(tmp_path, n=12, shard_size=4, lesion_every=100)  # sample 0 only: drop it below
    with pytest.raises(ShardError, match=r"hold no sample to read.*LabelSelect\(label=1, KeySet") as err:
        LesionCrops.from_shards(tmp_path, select=KeySet({f"k{i:06d}" for i in range(1, 12)}))
    assert "--shard-size" not in str(err.value)


def test_a_shard_listed_twice_is_refused(tmp_path):
    paths = write_shards(tmp_path, n=8, shard_size=4)
    with pytest.raises(ShardError, match=r"listed more than once.*t-000000\.tar"):
        XRayShards([str(paths[0]), str(paths[1]), str(tmp_path / "." / paths[0].name)])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["splits"]["all"]["shards"].append(manifest["splits"]["all"]["shards"][0])
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="listed more than once"):
        XRayShards(tmp_path / "manifest.json")


def test_manifest_faults_name_the_manifest_and_the_fix(tmp_path):
    write_shards(tmp_path / "a", n=8, shard_size=4)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    del manifest["splits"]["all"]["shards"][1]["count"]
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=r"a/manifest\.json has a shard entry without a valid 'name' and 'count'"):
        XRayShards(tmp_path / "a" / "manifest.json")

    packed = tmp_path / "b"  # a packed folder whose shards lie in split folders
    write_shards(packed / "train", n=4, shard_size=4, manifest=False)
    (packed / "manifest.json").write_text(json.dumps(
        {"format": "streamaug-shards/1", "splits": {"train": {"shards": [{"name": "train/t-000000.tar",
                                                                           "count": 4}]}}}))
    with pytest.raises(ShardError, match=r"shards lie in its splits \['train'\]: pass split="):
        XRayShards(packed)
    assert len(list(XRayShards(packed, split="train"))) == 4


def test_a_missing_shard_is_called_missing(tmp_path):
    paths = write_shards(tmp_path, n=8, shard_size=4)
    paths[1].unlink()
    with pytest.raises(ShardError, match=r"t-000001\.tar does not exist.*Restore the file"):
        list(XRayShards(tmp_path / "manifest.json", shuffle=False))
    ds = XRayShards(tmp_path / "manifest.json", shuffle=False, on_error="skip", equalize="none")
    assert len(list(ds)) == 4 and ds.stats["lost_samples"] == 4 and ds.stats["bad_shards"] == 1


def test_sites_true_on_a_pack_without_a_split_column(tmp_path):
    """Such a pack has one split, ``all``: its lesion boxes are the bank."""
    write_shards(tmp_path, n=8, shard_size=4, size=32)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["lesion_boxes"] = [{"key": "k000000", "split": "all", "label": "tumor", "region": "lower_limb",
                                 "view": "frontal", "width": 32, "height": 32, "boxes": [[2, 3, 9, 10]]}]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    ds = XRayShards(tmp_path, sites=True)
    assert len(ds.sites.bank) == 1
    manifest["lesion_boxes"].append({**manifest["lesion_boxes"][0], "key": "k000004", "split": "val"})
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=r"splits \['all', 'val'\].*LesionBoxBank\.from_manifest"):
        XRayShards(tmp_path, sites=True)


@pytest.mark.parametrize("fg", [1, 76, 255])
def test_masks_of_any_foreground_level_decode(tmp_path, fg):
    """0/1 masks (as written by numpy bool -> uint8) and dim ones read as their foreground, not empty."""
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:10] = fg
    path = tmp_path / "m-000000.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in (("k.png", png_bytes(tiny_image(0))), ("k.mask.png", png_bytes(mask)),
                           ("k.json", json.dumps({"label": "tumor", "boxes": [[4, 4, 10, 8]]}).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    sample = next(iter(XRayShards([str(path)])))
    assert int(sample["mask"].sum()) == 24


@pytest.mark.parametrize("fraction", [float("nan"), -0.1, 1.5])
def test_lesion_stream_refuses_fractions_outside_zero_one(tmp_path, fraction):
    write_shards(tmp_path, n=8, shard_size=4, size=32)
    with pytest.raises(ValueError, match="fractions must be >= 0"):
        LesionStream(tmp_path, translator=IdentityTranslator(IdentityConfig(patch_size=8)),
                     sites=SiteProposer(BANK), synthetic_fraction=fraction)


def test_a_missing_shard_without_a_manifest_is_called_missing(tmp_path):
    missing = str(tmp_path / "gone-000000.tar")
    with pytest.raises(ShardError, match=r"gone-000000\.tar.*does not exist: fix the path"):
        XRayShards([missing])
    with pytest.raises(ShardError, match=r"no shard holds a usable sample.*gone-000000\.tar: FileNotFoundError") as err:
        list(XRayShards([missing], on_error="skip"))
    assert "--shard-size" not in str(err.value)


def test_a_select_that_is_not_callable_is_refused_up_front(tmp_path):
    from streamaug.data.select import matched_normals

    write_shards(tmp_path, n=8, shard_size=4, size=32)
    pair = (KeySet({"k000001"}), {"sources": 1})  # what matched_normals / rare_positive_select return
    assert matched_normals.__annotations__["return"].startswith("tuple")
    with pytest.raises(TypeError, match=r"select must be a callable .* got a tuple: .*pass the first item"):
        XRayShards(tmp_path, select=pair)
    with pytest.raises(TypeError, match=r"source_select must be a callable"):
        LesionStream(tmp_path, translator=IdentityTranslator(IdentityConfig(patch_size=8)),
                     sites=SiteProposer(BANK), source_select=pair)


def test_lesion_stream_in_a_dataloader_worker_warns(tmp_path, monkeypatch):
    """Its synthesis and stats belong in the process that owns the device."""
    import torch

    write_shards(tmp_path, n=8, shard_size=4, size=32)
    stream = LesionStream(tmp_path, translator=IdentityTranslator(IdentityConfig(patch_size=8)),
                          sites=SiteProposer(BANK, n=4, min_intensity=0.0), min_intensity=None, device_batch=4,
                          epoch_length=2)
    worker = SimpleNamespace(id=0, num_workers=1, seed=0, dataset=stream)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: worker)
    with pytest.warns(UserWarning, match=r"inside a DataLoader worker.*num_workers=0"):
        next(iter(stream))
