"""Packer input validation: CSV reading, header spellings, labels, image types, masks, duplicates, box cells.

Every problem is reported by CSV line (a bad row, a warning or a PackError naming the CSV); nothing is
silently lost or changed.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from dicomgen import dicom_bytes
from PIL import Image
from test_pack import _all_shards, _read_tars, _write_csv, _write_png

from streamaug.cli.pack import PackError, main, pack
from streamaug.io.labels import to_int_label


def _images(root: Path, n: int, size: tuple[int, int] = (8, 8)) -> None:
    for i in range(n):
        _write_png(root / f"img{i}.png", np.full(size, 10 * i, np.uint8))


def _argv(root: Path, csv_path: Path, out: str = "o") -> list[str]:
    """``streamaug-pack`` options packing ``csv_path`` under ``root`` into ``root / out``, without a progress bar."""
    return ["--root", str(root), "--metadata", str(csv_path), "--out", str(root / out), "--no-progress"]


def _samples(out: Path, manifest: dict) -> dict[str, dict[str, bytes]]:
    return _read_tars(_all_shards(out, manifest))


# --- 1, 7: the CSV file itself -------------------------------------------------------------------

def test_unterminated_quote_stops_naming_the_line(tmp_path):
    """An unclosed quote would read every later line into one cell (rows vanish, exit 0)."""
    _images(tmp_path, 4)
    csv_path = tmp_path / "m.csv"
    csv_path.write_bytes(b'image,label\nimg0.png,normal\nimg1.png,"tumor\nimg2.png,normal\nimg3.png,tumor\n')
    with pytest.raises(PackError, match=r"m\.csv line 3: a quoted cell .* never closed.*\(to line 5\)"):
        pack(tmp_path, csv_path, tmp_path / "out", progress=False)
    csv_path.write_bytes(b'image,label\nimg0.png,"nor"mal\n')  # a stray quote after a quoted cell
    with pytest.raises(PackError, match=r"m\.csv line 2: malformed CSV"):
        pack(tmp_path, csv_path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("encoding, line, what", [("latin-1", 3, r"byte 54 is 0xf6"), ("utf-16", 1, "UTF-16")])
def test_non_utf8_csv_is_a_pack_error(tmp_path, encoding, line, what):
    _images(tmp_path, 2)
    csv_path = tmp_path / "m.csv"
    csv_path.write_bytes("image,label,site\nimg0.png,normal,Bonn\nimg1.png,tumor,K\xf6ln\n".encode(encoding))
    with pytest.raises(PackError, match=rf"m\.csv line {line}: the metadata CSV is not UTF-8 text; .*{what}.*"
                                        "save it as UTF-8"):
        pack(tmp_path, csv_path, tmp_path / "out", progress=False)
    csv_path.write_bytes(b"image,label\nimg0.png,nor\x00mal\n")
    with pytest.raises(PackError, match=r"m\.csv line 2: .*NUL byte.*save it as UTF-8"):
        pack(tmp_path, csv_path, tmp_path / "out", progress=False)


# --- 5: header spellings ----------------------------------------------------------------------------

@pytest.mark.parametrize("column", ["Label", " label", "LABEL ", "Split", "Mask", "Boxes_XYXY", "Image"])
def test_known_column_spelled_otherwise_stops(tmp_path, column):
    _images(tmp_path, 1)
    cols = ["image", column] if column != "Image" else [column, "label"]
    csv_path = _write_csv(tmp_path / "m.csv", [dict(zip(cols, ["img0.png", "x"]))], cols)
    canon = column.strip().lower()
    with pytest.raises(PackError, match=rf"m\.csv: column '{column}' is not '{canon}'.*rename it to '{canon}'"):
        pack(tmp_path, csv_path, tmp_path / "out", progress=False)


def test_label_column_named_on_purpose_passes(tmp_path):
    _images(tmp_path, 1)
    csv_path = _write_csv(tmp_path / "m.csv", [{"image": "img0.png", "Label": "tumor"}], ["image", "Label"])
    manifest = pack(tmp_path, csv_path, tmp_path / "out", label_column="Label", progress=False)
    assert manifest["splits"]["all"]["labels"] == {"tumor": 1}


# --- 8: short rows ----------------------------------------------------------------------------------

def test_short_row_is_a_bad_row(tmp_path, capsys):
    _images(tmp_path, 3)
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("image,label,split\nimg0.png,normal,train\nimg1.png\nimg2.png,tumor,\n")
    argv = _argv(tmp_path, csv_path)
    assert main(argv) == 2
    assert "m.csv line 3 (key 'img1', img1.png): 1 cells, the header has 3 columns" in capsys.readouterr().err
    assert main([*argv, "--on-error", "skip"]) == 0
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert [e["line"] for e in manifest["skipped"]] == [3] and manifest["count"] == 2  # an empty cell is fine


def test_a_csv_without_rows_packs_nothing_and_says_so(tmp_path, capsys):
    """Before: a header-only CSV (e.g. filtered by a grep that missed CRLF line ends) packed 0 samples,
    wrote a manifest and exited 0."""
    _images(tmp_path, 2)
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("image,label\r\n")
    argv = _argv(tmp_path, csv_path)
    assert main(argv) == 2
    assert "m.csv: a header (2 columns) but no row: nothing to pack" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# --- 2: labels --------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("0.0", 0), ("0", 0), ("-0.0", 0), ("1.0", 1), ("2", 1), (" 3.5 ", 1), ("-1", -1), ("-2.0", -1),
    ("no", 0), ("No", 0), ("absent", 0), ("normal", 0),
    ("n/a", -1), ("N/A", -1), ("na", -1), ("null", -1), ("?", -1), ("", -1), ("NaN", -1),
    ("tumor", 1), ("benign", 1), ("Atelectasis", 1), ("yes", 1), ("1_0", 1)])
def test_to_int_label_spellings(value, expected):
    assert to_int_label(value) == expected


def test_summary_prints_each_label_with_its_int(tmp_path, capsys):
    _images(tmp_path, 5)
    rows = [{"image": f"img{i}.png", "label": lab} for i, lab in enumerate(["0.0", "normal", "tumor", "tumor", ""])]
    csv_path = _write_csv(tmp_path / "m.csv", rows, ["image", "label"])
    assert main(_argv(tmp_path, csv_path)) == 0
    assert "labels: 0.0 -> 0 (1), normal -> 0 (1), tumor -> 1 (2), unknown -> -1 (1)\n" in capsys.readouterr().out


# --- 4: image types ---------------------------------------------------------------------------------

def test_image_types_the_stream_cannot_read_are_bad_rows(tmp_path):
    _images(tmp_path, 1)
    arr = np.full((8, 8), 77, np.uint8)
    for name in ("a.bmp", "b.webp", "c.pgm"):
        Image.fromarray(arr).save(tmp_path / name)
    Image.fromarray(arr).save(tmp_path / "scan.json", format="PNG")  # would overwrite the json member
    (tmp_path / "film.dic").write_bytes(dicom_bytes(np.full((8, 8), 300)))
    images = ["img0.png", "a.bmp", "b.webp", "c.pgm", "scan.json", "film.dic"]
    csv_path = _write_csv(tmp_path / "m.csv", [{"image": p, "label": "normal"} for p in images], ["image", "label"])
    manifest = pack(tmp_path, csv_path, tmp_path / "out", on_error="skip", progress=False)
    skipped = {e["line"]: e["reason"] for e in manifest["skipped"]}
    assert sorted(skipped) == [3, 4, 5, 6, 7] and manifest["count"] == 1
    assert "image type 'json' is not one the stream reads" in skipped[6] and "'dic'" in skipped[7]
    samples = _samples(tmp_path / "out", manifest)
    assert set(samples) == {"img0"} and json.loads(samples["img0"]["json"])["image"] == "img0.png"
    with pytest.raises(PackError, match=r"m\.csv line 3 \(key 'a', a\.bmp\): image type 'bmp'"):
        pack(tmp_path, csv_path, tmp_path / "out2", progress=False, shuffle_seed=None)


# --- 3: masks ---------------------------------------------------------------------------------------

def _mask_cases() -> dict[str, tuple[np.ndarray, str]]:
    lesion = np.zeros((16, 16), np.uint8)
    lesion[4:10, 4:10] = 1
    red = np.stack([lesion * 255, lesion * 0, lesion * 0], -1).astype(np.uint8)
    return {"l255": (lesion * 255, "png"), "l01": (lesion, "png"), "i16": (lesion.astype(np.uint16) * 65535, "png"),
            "i16one": (lesion.astype(np.uint16), "png"), "rgb": (red, "png"), "bool": (lesion.astype(bool), "png"),
            "jpg": (lesion * 255, "jpg"), "tif": (lesion * 255, "tif"),
            "rgba": (np.dstack([red, np.full((16, 16), 255, np.uint8)]), "png")}


def test_masks_are_stored_as_binary_png(tmp_path):
    from streamaug.data.decode import decode_sample

    cases = _mask_cases()
    rows = []
    for name, (arr, ext) in cases.items():
        _write_png(tmp_path / f"{name}.png", np.full((16, 16), 120, np.uint8))
        (tmp_path / "m").mkdir(exist_ok=True)
        Image.fromarray(arr).save(tmp_path / "m" / f"{name}.{ext}")
        rows.append({"image": f"{name}.png", "mask": f"m/{name}.{ext}", "label": "tumor", "boxes_xyxy": "4 4 10 10"})
    csv_path = _write_csv(tmp_path / "m.csv", rows, ["image", "mask", "label", "boxes_xyxy"])
    manifest = pack(tmp_path, csv_path, tmp_path / "out", progress=False)
    assert manifest["count"] == len(cases) and manifest["warnings"] == []
    for key, raw in _samples(tmp_path / "out", manifest).items():
        assert set(raw) == {"png", "mask.png", "json"}, key
        mask = Image.open(io.BytesIO(raw["mask.png"]))
        assert mask.format == "PNG" and mask.mode == "L" and set(np.unique(np.asarray(mask))) <= {0, 255}, key
        sample = decode_sample({"__key__": key, "__url__": "x", **raw})  # what the stream reads
        assert int(sample["mask"].sum()) == 36, key
    l255 = _samples(tmp_path / "out", manifest)["l255"]["mask.png"]
    assert l255 == (tmp_path / "m" / "l255.png").read_bytes()  # already binary: bytes kept


def test_empty_mask_beside_boxes_is_a_warning(tmp_path, capsys):
    _images(tmp_path, 3)
    _write_png(tmp_path / "m" / "empty.png", np.zeros((8, 8), np.uint8))
    rows = [{"image": "img0.png", "mask": "m/empty.png", "boxes_xyxy": "", "split": "train"},
            {"image": "img1.png", "mask": "m/empty.png", "boxes_xyxy": "", "split": "train"},
            {"image": "img1.png", "mask": "m/empty.png", "boxes_xyxy": "1 1 4 4", "split": "train"},
            {"image": "img2.png", "mask": "", "boxes_xyxy": "1 1 4 4", "split": "train"}]
    csv_path = _write_csv(tmp_path / "m.csv", rows, ["image", "mask", "boxes_xyxy", "split"])
    assert main(_argv(tmp_path, csv_path)) == 0
    out, err = capsys.readouterr()
    assert "warnings: 1 (empty_mask=1)" in out
    assert "warning: line 4 (img1, img1.png): mask m/empty.png has no foreground pixel" in err
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["count"] == 3 and manifest["skipped"] == []
    assert [(w["line"], w["kind"]) for w in manifest["warnings"]] == [(4, "empty_mask")]


# --- 6: duplicate rows and boxes --------------------------------------------------------------------

def test_exact_duplicate_row_is_dropped_with_a_warning(tmp_path):
    _images(tmp_path, 2, size=(16, 16))
    cols = ["image", "finding", "boxes_xyxy"]
    rows = [{"image": "img0.png", "finding": "Mass", "boxes_xyxy": "2 2 8 8"},
            {"image": "img1.png", "finding": "Mass", "boxes_xyxy": "1 1 5 5"},
            {"image": "img0.png", "finding": "Mass", "boxes_xyxy": "2 2 8 8"},       # line 4: exact duplicate
            {"image": "img1.png", "finding": "Nodule", "boxes_xyxy": "1 1 5 5;6 6 9 9"}]  # line 5: box repeats
    csv_path = _write_csv(tmp_path / "m.csv", rows, cols)
    manifest = pack(tmp_path, csv_path, tmp_path / "out", progress=False, shuffle_seed=None)
    docs = {k: json.loads(s["json"]) for k, s in _samples(tmp_path / "out", manifest).items()}
    assert docs["img0"]["boxes"] == [[2, 2, 8, 8]] and "rows" not in docs["img0"]
    assert docs["img1"]["boxes"] == [[1, 1, 5, 5], [6, 6, 9, 9]]
    assert [r["line"] for r in docs["img1"]["rows"]] == [3, 5]  # the Nodule row is kept, its finding too
    assert [(w["line"], w["kind"]) for w in manifest["warnings"]] == [(4, "duplicate_row"), (5, "duplicate_box")]
    assert "the same row as line 2" in manifest["warnings"][0]["reason"] and manifest["skipped"] == []
    assert manifest["lesion_boxes"][0]["boxes"] == [[2, 2, 8, 8]]


# --- 9: box cells -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", ["1_0 1 12 5", "\uff11 1 5 5", "0x1 1 5 5"])
def test_box_number_spelled_oddly_is_unreadable(tmp_path, cell):
    _images(tmp_path, 1, size=(16, 16))
    csv_path = _write_csv(tmp_path / "m.csv", [{"image": "img0.png", "boxes_xyxy": cell}], ["image", "boxes_xyxy"])
    manifest = pack(tmp_path, csv_path, tmp_path / "out", on_error="skip", progress=False)
    assert manifest["count"] == 0 and len(manifest["skipped"]) == 1
    assert f"cannot read {cell!r} as boxes" in manifest["skipped"][0]["reason"]
    assert "is not a plain number" in manifest["skipped"][0]["reason"]


# --- the output folder and the options ----------------------------------------------------------------

def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_replaces_only_the_pack_at_the_top_of_out(tmp_path, capsys):
    """Before: --out PARENT --overwrite deleted every pack in PARENT's subfolders (any .tar or
    manifest.json at any depth passed as part of the pack)."""
    from test_pack import COLUMNS, _dataset

    root, parent = tmp_path / "data", tmp_path / "parent"
    csv_path = _write_csv(tmp_path / "m.csv", _dataset(root, 4), COLUMNS)
    for name in ("a", "b"):
        pack(root, csv_path, parent / name, shard_size=2, progress=False)
    before = _tree(parent)
    argv = ["--root", str(root), "--metadata", str(csv_path), "--out", str(parent), "--overwrite", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "has no manifest.json: ['a/', 'b/']" in err and len(err.strip().splitlines()) == 1
    pack(root, csv_path, parent / "a", shard_size=3, overwrite=True, progress=False)  # a pack at the top: replaced
    (parent / "a" / "train" / "old").mkdir()
    (parent / "a" / "train" / "old" / "x-000000.tar").write_bytes(b"")  # not listed: someone else's shard
    (parent / "a" / "nested").mkdir()
    (parent / "a" / "nested" / "manifest.json").write_text("{}")
    with pytest.raises(PackError, match=r"holds more than a pack: \['nested/', 'train/old/'\]"):
        pack(root, csv_path, parent / "a", overwrite=True, progress=False)
    (parent / "a" / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(PackError, match="a manifest.json that is not a pack manifest"):
        pack(root, csv_path, parent / "a", overwrite=True, progress=False)
    assert _tree(parent / "b") == {k.removeprefix("b/"): v for k, v in before.items() if k.startswith("b/")}


@pytest.mark.parametrize("size", ["0", "-1"])
def test_shard_size_below_one_is_a_user_error(tmp_path, capsys, size):
    """Before: a ValueError outside the PackError catch: a traceback."""
    _images(tmp_path, 1)
    csv_path = _write_csv(tmp_path / "m.csv", [{"image": "img0.png"}], ["image"])
    assert main(["--root", str(tmp_path), "--metadata", str(csv_path), "--out", str(tmp_path / "out"),
                 "--shard-size", size]) == 2
    assert f"error: --shard-size must be a whole number >= 1 (samples per shard), got {size}" in \
        capsys.readouterr().err
    with pytest.raises(PackError, match="--shard-size"):
        pack(tmp_path, csv_path, tmp_path / "out", shard_size=0, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_split_cell_that_is_a_path_is_skipped_and_nothing_leaves_out(tmp_path):
    """A split cell names a folder under --out: '../../escaped' would have written shards outside it."""
    root, out = tmp_path / "root", tmp_path / "a" / "b" / "out"
    _images(root, 2)
    rows = [{"image": "img0.png", "label": "normal", "split": "train"},
            {"image": "img1.png", "label": "normal", "split": "../../escaped"}]
    csv_path = _write_csv(tmp_path / "m.csv", rows, ["image", "label", "split"])
    outside = lambda: {p for p in tmp_path.rglob("*") if out not in p.parents and p not in (out, *out.parents)}  # noqa: E731
    before = outside()
    manifest = pack(root, csv_path, out, on_error="skip", progress=False)
    assert manifest["count"] == 1 and set(manifest["splits"]) == {"train"}
    (skipped,) = manifest["skipped"]
    assert skipped["line"] == 3 and "split '../../escaped' is not a plain name" in skipped["reason"]
    assert outside() == before and not list(tmp_path.rglob("*escaped*"))
