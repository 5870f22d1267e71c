"""Bad input at the reading end: each is refused or reported naming the file and the fix, never
read silently wrong (link members, small-valued masks, zarr stores edited after writing, corrupt
compressed DICOM, masks and boxes that do not fit the image, copied shards, conflicting labels,
folder suffixes, failing ``pipe:`` commands, paths with trailing spaces).
"""
from __future__ import annotations

import importlib.util
import io
import json
import shutil
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from shardgen import png_bytes, write_shards
from test_pack import _all_shards, _read_tars, _write_csv, _write_png

from streamaug import XRayShards
from streamaug.cli.pack import PackError, pack
from streamaug.data.decode import decode_sample
from streamaug.data.shardlist import expand_urls
from streamaug.io.errors import MissingCodecError, SampleError, ShardError, XRayDecodeError
from streamaug.io.readers import decode_xray
from streamaug.io.tar import iter_tar_files

_JSON = b'{"label": "normal"}'


def _tar(path: Path, members: list[tuple[str, bytes | tuple[bytes, str]]], fmt: int = tarfile.GNU_FORMAT) -> Path:
    """A tar of ``(name, data)`` files and ``(name, (type, target))`` links."""
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                info.type, info.linkname = data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _stream(spec, **kw) -> tuple[list[dict], dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = XRayShards(spec, shuffle=False, equalize="none", **kw)
        return list(ds), ds.stats


# --- 1: hard and symbolic links in a shard ------------------------------------------------------

def test_link_member_with_an_extension_raises_naming_it(tmp_path):
    png = png_bytes(np.full((8, 8), 9, np.uint8))
    long = "n" * 120 + ".png"
    for kind, target, name in ((tarfile.LNKTYPE, "a.png", "d.png"), (tarfile.SYMTYPE, "../raw/a.png", long)):
        path = _tar(tmp_path / "s.tar", [("a.png", png), ("a.json", _JSON), (name, (kind, target))])
        with open(path, "rb") as fh, pytest.raises(tarfile.ReadError) as info:
            list(iter_tar_files(fh))
        msg = str(info.value)
        assert repr(name) in msg and repr(target) in msg and "--hard-dereference -h" in msg, msg
    path = _tar(tmp_path / "ok.tar", [("a.png", png), ("some/alias", (tarfile.SYMTYPE, "a.png"))])
    with open(path, "rb") as fh:
        assert [n for n, _ in iter_tar_files(fh)] == ["a.png"]  # a link no sample holds is skipped


def test_link_shard_follows_on_error(tmp_path):
    """GNU tar stores a second name of one inode as a hard link: its sample was dropped silently."""
    png = png_bytes(np.full((8, 8), 9, np.uint8))
    shard = _tar(tmp_path / "hard.tar", [("a.png", png), ("b.png", png), ("c.png", png),
                                         ("d.png", (tarfile.LNKTYPE, "a.png"))])
    with pytest.raises(ShardError, match=r"hard\.tar.*'d\.png'.*hard link.*--hard-dereference") as info:
        _stream([str(shard)])
    assert "truncated" not in str(info.value)
    got, stats = _stream([str(shard)], on_error="skip")
    assert stats["bad_shards"] == 1 and [s["key"] for s in got] == ["a", "b"]


# --- 2: masks whose foreground is a small value ----------------------------------------------------

def test_packer_reads_masks_by_the_streams_rule(tmp_path):
    root = tmp_path / "root"
    rows = []
    for key, value in (("lab2", 2), ("v76", 76), ("v100", 100), ("v255", 255), ("one", 1)):
        _write_png(root / f"{key}.png", np.full((16, 16), 128, np.uint8))
        mask = np.zeros((16, 16), np.uint8)
        mask[4:8, 4:8] = value
        _write_png(root / "m" / f"{key}.png", mask)
        rows.append({"image": f"{key}.png", "mask": f"m/{key}.png", "label": "tumor"})
    manifest = pack(root, _write_csv(tmp_path / "m.csv", rows, ["image", "mask", "label"]), tmp_path / "out",
                    progress=False)
    got, _ = _stream(str(tmp_path / "out"))
    assert {s["key"]: int(s["mask"].sum()) for s in got} == {r["image"][:-4]: 16 for r in rows}
    assert manifest["warnings"] == []


def test_mask_that_packs_empty_is_warned(tmp_path):
    """A mask marked only in its alpha channel has no foreground by the rule: packed empty, with a warning."""
    _write_png(tmp_path / "img.png", np.full((16, 16), 128, np.uint8))
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[4:8, 4:8, 3] = 255
    _write_png(tmp_path / "alpha.png", rgba)
    rows = [{"image": "img.png", "mask": "alpha.png", "boxes_xyxy": "4 4 8 8"}]
    manifest = pack(tmp_path, _write_csv(tmp_path / "m.csv", rows, ["image", "mask", "boxes_xyxy"]),
                    tmp_path / "out", progress=False)
    assert [(w["kind"], w["line"]) for w in manifest["warnings"]] == [("empty_mask", 2)]
    assert "alpha.png is not blank" in manifest["warnings"][0]["reason"]


# --- 3: zarr values, boxes and a store changed after writing ---------------------------------------

def test_write_zarr_refuses_values_beyond_bits_and_bad_boxes(tmp_path):
    from streamaug.data.zarr_source import write_zarr

    img16 = np.array([[0, 4095, 8000, 65535]], np.uint16)
    with pytest.raises(ValueError, match=r"'a' holds 65535, above 4095.*bits"):
        write_zarr(tmp_path / "a.zarr", [("a", img16, {"bits": 12})])
    with pytest.raises(ValueError, match=r"meta\['bits'\] of 'a' is 20"):
        write_zarr(tmp_path / "b.zarr", [("a", img16, {"bits": 20})])
    img = np.zeros((8, 8), np.uint8)
    for boxes, why in (([[1, 2, 3]], r"shape \(1, 3\)"), ([[5, 5, 1, 1]], "degenerate"), ([[0, 0, 9, 4]], "outside")):
        with pytest.raises(ValueError, match=rf"boxes .* of 'a' are unusable: .*{why}"):
            write_zarr(tmp_path / "c.zarr", [("a", img, {"boxes": boxes})], overwrite=True)
    write_zarr(tmp_path / "d.zarr", [("a", img, {"boxes": [[0, 0, 8, 8]]}), ("b", img16, {"bits": 16.0})])


def test_zarr_read_checks_arrays_against_the_table(tmp_path):
    import zarr

    from streamaug.data.zarr_source import ZarrXRays, write_zarr

    path = tmp_path / "a.zarr"
    write_zarr(path, [("a", np.zeros((2, 4), np.uint16), {"bits": 12})])
    group = zarr.open_group(str(path), mode="a")
    del group["images/a"]
    group.create_array("images/a", shape=(3, 3, 3), dtype="int32")[...] = -5
    with pytest.raises(SampleError, match=r"a\.zarr: array 'images/a' is \(3, 3, 3\) int32.*\(2, 4\) uint16.*write_zarr"):
        next(iter(ZarrXRays(path, shuffle=False)))
    del group["images/a"]
    with pytest.raises(SampleError, match=r"a\.zarr: array 'images/a' is missing.*write_zarr"):
        next(iter(ZarrXRays(path, shuffle=False)))
    group.attrs.update({"samples": None})
    with pytest.raises(ValueError, match=r"a\.zarr: the store's 'samples' table is missing"):
        ZarrXRays(path)


# --- 4: corrupt compressed DICOM is not a missing codec ---------------------------------------------

def _corrupt_frame(name: str) -> bytes:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate, generate_frames

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} not available")
    ds = pydicom.dcmread(path)
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    for i in range(len(frame) // 2, len(frame) - 4, 3):
        frame[i] ^= 0xFF
    ds.PixelData = encapsulate([bytes(frame)])
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm"])
def test_corrupt_compressed_pixel_data_says_corrupt(name):
    data = _corrupt_frame(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(XRayDecodeError) as info:
            decode_xray(data, "dcm", source=name)
    assert not isinstance(info.value, MissingCodecError), info.value
    assert name in str(info.value) and "corrupt" in str(info.value) and "re-export" in str(info.value)


@pytest.mark.skipif(any(importlib.util.find_spec(m) for m in ("pylibjpeg", "gdcm")), reason="12-bit JPEG decodes")
def test_plugin_that_cannot_handle_the_data_is_still_a_missing_codec():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("JPEG-lossy.dcm", download=False)  # 12-bit JPEG: Pillow does not support it
    with pytest.raises(MissingCodecError, match="pylibjpeg"):
        decode_xray(Path(path).read_bytes(), "dcm", source="JPEG-lossy.dcm")


@pytest.mark.skipif(any(importlib.util.find_spec(m) for m in ("pylibjpeg", "gdcm")), reason="it decodes")
def test_data_only_a_missing_plugin_decodes_names_that_plugin_too():
    """GDCMJ2K_TextGBR.dcm is valid JPEG 2000 that Pillow fails on and gdcm/pylibjpeg decode: the error
    may not call it corrupt alone (the review of the first fix called such files corrupt)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("GDCMJ2K_TextGBR.dcm", download=False)
    if path is None:
        pytest.skip("GDCMJ2K_TextGBR.dcm not available")
    with pytest.raises(XRayDecodeError, match=r"Either the data is corrupt .*or it needs a plugin that is not "
                                              r"installed \(gdcm, pylibjpeg: pip install pylibjpeg"):
        decode_xray(Path(path).read_bytes(), "dcm", source="GDCMJ2K_TextGBR.dcm")


# --- 5: a shard's mask and boxes against its image ---------------------------------------------------

def _raw(key: str, **members) -> dict:
    return {"__key__": key, "__url__": "/s/x.tar", "png": png_bytes(np.full((32, 32), 128, np.uint8)), **members}


@pytest.mark.parametrize("boxes,why", [([[40, 40, 90, 90]], "outside the 32x32"), ([[20, 20, 5, 5]], "degenerate"),
                                       ([[float("nan"), 1, 5, 5]], "non-finite"), ([[1, 2, 3]], r"shape \(1, 3\)"),
                                       ("1 2 3 4", "not numbers")])
def test_decode_refuses_bad_boxes(boxes, why):
    raw = _raw("k", json=json.dumps({"label": "tumor", "boxes": boxes}).encode())
    with pytest.raises(SampleError, match=rf"sample 'k' in /s/x\.tar: its JSON 'boxes' .*{why}.*re-pack"):
        decode_sample(raw)


def test_decode_accepts_boxes_on_the_border():
    raw = _raw("k", json=json.dumps({"boxes": [[0, 0, 32, 32], [0.5, 1.5, 31.5, 2]]}).encode())
    assert decode_sample(raw)["boxes"].tolist() == [[0, 0, 32, 32], [0.5, 1.5, 31.5, 2]]


def test_decode_refuses_a_mask_of_another_size(tmp_path):
    raw = _raw("k", **{"mask.png": png_bytes(np.full((16, 16), 255, np.uint8)), "json": _JSON})
    with pytest.raises(SampleError, match=r"sample 'k' in /s/x\.tar: its mask is 16x16.*image 32x32"):
        decode_sample(raw)
    path = _tar(tmp_path / "s-000000.tar", [("bad.png", raw["png"]), ("bad.mask.png", raw["mask.png"]),
                                            ("bad.json", _JSON), ("ok.png", raw["png"]), ("ok.json", _JSON)])
    got, stats = _stream(str(path), on_error="skip", resize=(64, 64))
    assert [s["key"] for s in got] == ["ok"] and stats["skipped_samples"] == 1


# --- 6: a shard copied under a new name in the manifest -----------------------------------------------

def test_manifest_listing_one_shard_twice_is_refused(tmp_path):
    paths = write_shards(tmp_path, n=8, shard_size=4, sha256=True)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    shutil.copy(paths[0], tmp_path / "t-copy.tar")
    entry = dict(manifest["splits"]["all"]["shards"][0], name="t-copy.tar")
    manifest["splits"]["all"]["shards"].append(entry)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=r"t-copy\.tar: .*same sha256.*t-000000\.tar: it is a copy"):
        _stream(str(tmp_path / "manifest.json"))
    got, stats = _stream(str(tmp_path / "manifest.json"), on_error="skip")
    assert len(got) == 8 and stats["bad_shards"] == 1 and stats["lost_samples"] == 4


# --- 7, 10: the packer's CSV ----------------------------------------------------------------------------

def test_rows_of_one_image_with_different_labels_are_a_clash(tmp_path):
    _write_png(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    rows = [{"image": "a.png", "label": "tumor"}, {"image": "a.png", "label": "normal"}]
    csv_path = _write_csv(tmp_path / "m.csv", rows, ["image", "label"])
    with pytest.raises(PackError, match=r"line 3 .*different label \('tumor' there, 'normal' here\)"):
        pack(tmp_path, csv_path, tmp_path / "out", progress=False)
    manifest = pack(tmp_path, csv_path, tmp_path / "out", on_error="skip", progress=False)
    assert [e["line"] for e in manifest["skipped"]] == [3] and manifest["count"] == 1
    rows = [{"image": "a.png", "finding": "Mass"}, {"image": "a.png", "finding": "normal"}]
    csv_path = _write_csv(tmp_path / "f.csv", rows, ["image", "finding"])
    manifest = pack(tmp_path, csv_path, tmp_path / "out2", label_column="finding", progress=False)
    assert [(w["kind"], w["line"]) for w in manifest["warnings"]] == [("label_conflict", 3)]


@pytest.mark.parametrize("column", ["label", "finding"])
def test_labels_spelled_otherwise_but_read_alike_are_one_label(tmp_path, column):
    """The review of the first fix: tumor/Tumor, 1/1.0 (and findings Mass/Nodule, both label 1) were
    refused as a clash, dropping the second row and its box under skip."""
    _write_png(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    values = ["tumor", "Tumor", "1.0"] if column == "label" else ["Mass", "Nodule", "Mass"]
    rows = [{"image": "a.png", column: v, "boxes_xyxy": f"{i} 0 {i + 2} 2"} for i, v in enumerate(values)]
    csv_path = _write_csv(tmp_path / "m.csv", rows, ["image", column, "boxes_xyxy"])
    manifest = pack(tmp_path, csv_path, tmp_path / "out", label_column=None if column == "label" else column,
                    progress=False)
    assert manifest["count"] == 1 and manifest["skipped"] == []
    assert [(w["kind"], w["line"]) for w in manifest["warnings"]] == (
        [("label_spelling", 3), ("label_spelling", 4)] if column == "label" else [])
    (doc,) = [json.loads(v["json"]) for v in _read_tars(_all_shards(tmp_path / "out", manifest)).values()]
    assert len(doc["boxes"]) == 3


def test_missing_file_is_quoted(tmp_path):
    for name in ("a.png", "b.png"):
        _write_png(tmp_path / name, np.zeros((8, 8), np.uint8))
    csv_path = _write_csv(tmp_path / "m.csv", [{"image": "a.png"}, {"image": "b.png "}], ["image"])
    manifest = pack(tmp_path, csv_path, tmp_path / "out", on_error="skip", progress=False)
    assert manifest["skipped"][0]["reason"] == f"missing file: {str(tmp_path / 'b.png ')!r}"  # the space shows


# --- 8, 9: folder suffixes, failing pipe: commands ----------------------------------------------------

def test_folder_lists_every_suffix_the_reader_opens(tmp_path):
    (src,) = write_shards(tmp_path / "src", n=2, shard_size=2, manifest=False)
    folder = tmp_path / "f"
    folder.mkdir()
    for name in ("s-0.tar", "s-1.TAR", "s-2.tgz", "s-3.tar.gz", "s-4.tar.zst", "._s-0.tar", ".hidden.tar"):
        shutil.copy(src, folder / name)  # hidden files (macOS's ._ copies) are not shards
    with pytest.warns(UserWarning, match=r"not reading \['s-4\.tar\.zst'\]"):
        listed = expand_urls(str(folder))
    assert [Path(p).name for p in listed] == ["s-0.tar", "s-1.TAR", "s-2.tgz", "s-3.tar.gz"]


def test_failing_pipe_command_is_named_with_its_status():
    with pytest.raises(ShardError, match=r"pipe:false: its command 'false' failed with exit status 1") as info:
        _stream(["pipe:false"])
    assert "truncated" not in str(info.value)
