"""Packer: byte-exact samples, json with every column, splits, merged rows, bad rows, manifest."""
from __future__ import annotations

import csv
import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from streamaug.cli.pack import PackError, main, pack
from streamaug.sites.boxes import parse_boxes

COLUMNS = ["image_id", "image", "mask", "label", "region", "view", "age", "boxes_xyxy", "split"]


def _write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _dataset(root: Path, n: int = 6) -> list[dict]:
    """``n`` images (alternating 8/16-bit, 16 x 20) with masks, labels, boxes and splits."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        dtype, top = (np.uint8, 256) if i % 2 == 0 else (np.uint16, 65536)
        _write_png(root / "images" / f"IMG{i}.png", rng.integers(0, top, (16, 20)).astype(dtype))
        _write_png(root / "masks" / f"IMG{i}.png", np.zeros((16, 20), np.uint8))
        tumor = i % 3 == 0
        rows.append({"image_id": f"IMG{i}", "image": f"images/IMG{i}.png", "mask": f"masks/IMG{i}.png",
                     "label": "tumor" if tumor else "normal", "region": ["lower_limb", "pelvis"][i % 2],
                     "view": "frontal", "age": str(10 + i), "boxes_xyxy": "1 2 5 6;10 3 20 16" if tumor else "",
                     "split": ["train", "train", "test"][i % 3]})
    return rows


def _read_tars(paths) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for path in paths:
        with tarfile.open(path) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def _all_shards(out: Path, manifest: dict) -> list[Path]:
    return [out / s["name"] for split in manifest["splits"].values() for s in split["shards"]]


def test_pack_round_trip_and_manifest(tmp_path):
    root, out = tmp_path / "data", tmp_path / "out"
    rows = _dataset(root)
    csv_path = _write_csv(tmp_path / "meta.csv", rows, COLUMNS)
    manifest = pack(root, csv_path, out, shard_size=2, prefix="x", progress=False, shuffle_seed=None)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["format"] == "streamaug-shards/1" and manifest["count"] == 6
    train, test = manifest["splits"]["train"], manifest["splits"]["test"]
    assert [s["name"] for s in train["shards"]] == ["train/x-train-000000.tar", "train/x-train-000001.tar"]
    assert [s["count"] for s in train["shards"]] == [2, 2] and train["count"] == 4 and test["count"] == 2
    assert train["labels"] == {"normal": 2, "tumor": 2} and test["labels"] == {"normal": 2}
    assert train["regions"] == {"lower_limb": 2, "pelvis": 2}
    for split in manifest["splits"].values():
        for entry in split["shards"]:
            assert hashlib.sha256((out / entry["name"]).read_bytes()).hexdigest() == entry["sha256"]

    samples = _read_tars(_all_shards(out, manifest))
    assert sorted(samples) == [f"IMG{i}" for i in range(6)]
    for row in rows:
        s = samples[row["image_id"]]
        assert set(s) == {"png", "mask.png", "json"}
        assert s["png"] == (root / row["image"]).read_bytes()  # bytes exactly as stored
        assert s["mask.png"] == (root / row["mask"]).read_bytes()
        doc = json.loads(s["json"])
        assert {k: doc[k] for k in COLUMNS} == row  # every column, as given
        assert doc["boxes"] == parse_boxes(row["boxes_xyxy"]).tolist() and "rows" not in doc
    assert [b["key"] for b in manifest["lesion_boxes"]] == ["IMG0", "IMG3"]
    bank = manifest["lesion_boxes"][0]
    assert bank == {"key": "IMG0", "split": "train", "label": "tumor", "region": "lower_limb", "view": "frontal",
                    "width": 20, "height": 16, "boxes": [[1, 2, 5, 6], [10, 3, 20, 16]],
                    "shard": "train/x-train-000000.tar"}
    assert manifest["skipped"] == [] and manifest["skipped_count"] == 0


def test_shards_read_by_webdataset_and_repack_is_reproducible(tmp_path):
    import webdataset as wds

    root = tmp_path / "data"
    csv_path = _write_csv(tmp_path / "meta.csv", _dataset(root), COLUMNS)
    first = pack(root, csv_path, tmp_path / "out", shard_size=10, progress=False)
    urls = [str(p) for p in _all_shards(tmp_path / "out", first)]
    got = {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False)}
    assert set(got) == {f"IMG{i}" for i in range(6)} and {"png", "mask.png", "json"} <= set(got["IMG1"])
    with pytest.raises(PackError, match="already holds a pack"):
        pack(root, csv_path, tmp_path / "out", progress=False)
    again = pack(root, csv_path, tmp_path / "out", shard_size=10, overwrite=True, progress=False)
    assert [s["sha256"] for s in again["splits"]["train"]["shards"]] == \
        [s["sha256"] for s in first["splits"]["train"]["shards"]]


def test_no_split_column_and_key_from_stem(tmp_path):
    root = tmp_path / "data"
    rows = [{"image": r["image"], "label": r["label"]} for r in _dataset(root, 3)]
    csv_path = _write_csv(tmp_path / "m.csv", rows, ["image", "label"])
    manifest = pack(root, csv_path, tmp_path / "out", prefix="p", progress=False)
    assert list(manifest["splits"]) == ["all"] and manifest["splits"]["all"]["shards"][0]["name"] == "p-000000.tar"
    samples = _read_tars([tmp_path / "out" / "p-000000.tar"])
    assert sorted(samples) == ["IMG0", "IMG1", "IMG2"] and "mask.png" not in samples["IMG0"]
    assert json.loads(samples["IMG2"]["json"]) == {"image": "images/IMG2.png", "label": "normal", "boxes": []}


def test_duplicate_rows_merge_into_one_sample(tmp_path):
    root = tmp_path / "data"
    _dataset(root, 2)
    cols = ["image_id", "image", "finding", "box", "view"]
    rows = [{"image_id": "IMG0", "image": "images/IMG0.png", "finding": "Mass", "box": "1.5 2 5 6", "view": "PA"},
            {"image_id": "IMG1", "image": "images/IMG1.png", "finding": "Nodule", "box": "0 0 4 4", "view": "AP"},
            {"image_id": "IMG0", "image": "images/IMG0.png", "finding": "Nodule", "box": "7 8 9 10", "view": "PA"}]
    csv_path = _write_csv(tmp_path / "b.csv", rows, cols)
    manifest = pack(root, csv_path, tmp_path / "out", boxes_column="box", label_column="finding", progress=False)
    samples = _read_tars(_all_shards(tmp_path / "out", manifest))
    assert manifest["count"] == 2 and manifest["source"]["csv_rows"] == 3
    doc = json.loads(samples["IMG0"]["json"])
    assert doc["boxes"] == [[1.5, 2, 5, 6], [7, 8, 9, 10]]
    assert doc["finding"] == "Mass" and doc["label"] == "Mass" and doc["view"] == "PA"
    assert doc["rows"] == [{"line": 2, "finding": "Mass", "box": "1.5 2 5 6", "boxes": [[1.5, 2, 5, 6]]},
                           {"line": 4, "finding": "Nodule", "box": "7 8 9 10", "boxes": [[7, 8, 9, 10]]}]
    assert json.loads(samples["IMG1"]["json"])["label"] == "Nodule"
    assert manifest["splits"]["all"]["labels"] == {"Mass": 1, "Nodule": 1}


def _bad_dataset(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "data"
    rows = _dataset(root, 3)
    (root / "images" / "corrupt.png").write_bytes((root / "images" / "IMG0.png").read_bytes()[:40])
    rows += [
        dict(rows[1], image_id="GONE", image="images/missing.png"),                 # line 5
        dict(rows[1], image_id="BROKEN", image="images/corrupt.png"),               # line 6
        dict(rows[1], image_id="IMG1", boxes_xyxy="0 0 30 5"),                      # line 7: outside 20 wide
        dict(rows[2], boxes_xyxy="4 4 4 9"),                                       # line 8: degenerate
        dict(rows[2], split="train"),                                              # line 9: split conflict
    ]
    return root, _write_csv(tmp_path / "bad.csv", rows, COLUMNS)


def test_bad_rows_skipped_and_recorded(tmp_path):
    root, csv_path = _bad_dataset(tmp_path)
    manifest = pack(root, csv_path, tmp_path / "out", on_error="skip", progress=False)
    skipped = {e["line"]: e for e in manifest["skipped"]}
    assert sorted(skipped) == [5, 6, 7, 8, 9] and manifest["skipped_count"] == 5
    assert "missing file" in skipped[5]["reason"] and skipped[5]["file"] == "images/missing.png"
    assert "corrupt.png" in skipped[6]["reason"] and skipped[6]["key"] == "BROKEN"
    assert "outside" in skipped[7]["reason"] and "degenerate" in skipped[8]["reason"]
    assert "split" in skipped[9]["reason"]
    samples = _read_tars(_all_shards(tmp_path / "out", manifest))
    assert sorted(samples) == ["IMG0", "IMG1", "IMG2"]  # good rows of the same images are kept
    assert json.loads(samples["IMG1"]["json"])["boxes"] == [] and "rows" not in json.loads(samples["IMG1"]["json"])


def test_bad_row_raises_naming_the_row(tmp_path):
    root, csv_path = _bad_dataset(tmp_path)
    # rows are checked image by image in order of first appearance: IMG1 (line 7) before GONE (line 5)
    with pytest.raises(PackError, match=r"bad\.csv line 7 \(key 'IMG1', images/IMG1\.png\): .*outside the 20x16"):
        pack(root, csv_path, tmp_path / "out", on_error="raise", progress=False, shuffle_seed=None)
    csv_path.write_text("\n".join(csv_path.read_text().splitlines()[:5]) + "\n")  # keep up to line 5
    with pytest.raises(PackError, match=r"bad\.csv line 5 \(key 'GONE', images/missing\.png\): missing file"):
        pack(root, csv_path, tmp_path / "out2", on_error="raise", progress=False, shuffle_seed=None)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_csv_errors(tmp_path):
    csv_path = _write_csv(tmp_path / "m.csv", [{"path": "a.png"}], ["path"])
    with pytest.raises(PackError, match="'image' column"):
        pack(tmp_path, csv_path, tmp_path / "out", progress=False)
    csv_path = _write_csv(tmp_path / "k.csv", [{"image": "a.png"}], ["image"])
    with pytest.raises(PackError, match="--key-column 'id'"):
        pack(tmp_path, csv_path, tmp_path / "out", key_column="id", progress=False)
    _write_png(tmp_path / "a.b.png", np.zeros((4, 4), np.uint8))
    csv_path = _write_csv(tmp_path / "d.csv", [{"image": "a.b.png"}], ["image"])
    with pytest.raises(PackError, match="invalid key 'a.b'"):
        pack(tmp_path, csv_path, tmp_path / "out", progress=False)


def test_cli(tmp_path, capsys):
    root = tmp_path / "data"
    csv_path = _write_csv(tmp_path / "meta.csv", _dataset(root), COLUMNS)
    argv = ["--root", str(root), "--metadata", str(csv_path), "--out", str(tmp_path / "o"), "--shard-size", "3",
            "--prefix", "cli", "--no-progress"]
    assert main(argv) == 0
    assert "packed 6 samples" in capsys.readouterr().out
    assert (tmp_path / "o" / "train" / "cli-train-000001.tar").exists()
    assert main(argv) == 2 and "already holds a pack" in capsys.readouterr().err


def _subset_csv(src: Path, dst: Path, n: int) -> tuple[Path, list[str]]:
    with open(src, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [row for _, row in zip(range(n), reader)]
        return _write_csv(dst, rows, reader.fieldnames), list(reader.fieldnames)


@pytest.mark.realdata
def test_real_btxrd_subset_is_lossless(shared_data, tmp_path):
    root = shared_data / "btxrd"
    csv_path, columns = _subset_csv(root / "metadata.csv", tmp_path / "m.csv", 200)
    manifest = pack(root, csv_path, tmp_path / "out", shard_size=64, progress=False)
    assert manifest["count"] == 200 and manifest["skipped"] == []
    samples = _read_tars(_all_shards(tmp_path / "out", manifest))
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(samples) == 200
    for row in rows:
        s = samples[row["image_id"]]
        assert s["png"] == (root / row["image"]).read_bytes() and s["mask.png"] == (root / row["mask"]).read_bytes()
        doc = json.loads(s["json"])
        assert {c: doc[c] for c in columns} == row and doc["boxes"] == parse_boxes(row["boxes_xyxy"]).tolist()
    n_boxes = sum(1 for r in rows if r["boxes_xyxy"])
    assert len(manifest["lesion_boxes"]) == n_boxes


@pytest.mark.realdata
def test_real_nih_subset_merges_boxes(shared_data, tmp_path):
    root = shared_data / "nih-bbox"
    csv_path, columns = _subset_csv(root / "boxes.csv", tmp_path / "b.csv", 120)
    manifest = pack(root, csv_path, tmp_path / "out", boxes_column="box_xyxy_256", progress=False)
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    samples = _read_tars(_all_shards(tmp_path / "out", manifest))
    assert manifest["skipped"] == [] and len(samples) == len({r["image_id"] for r in rows})
    for key, s in samples.items():
        mine = [r for r in rows if r["image_id"] == key]
        doc = json.loads(s["json"])
        assert s["png"] == (root / mine[0]["image"]).read_bytes()
        assert doc["boxes"] == [b for r in mine for b in parse_boxes(r["box_xyxy_256"]).tolist()]
        assert set(columns) <= set(doc)
        if len(mine) > 1:  # merged: one entry per CSV row, differing columns kept per row
            assert len(doc["rows"]) == len(mine)
            assert [r.get("finding", doc["finding"]) for r in doc["rows"]] == [r["finding"] for r in mine]
    assert sum(len(b["boxes"]) for b in manifest["lesion_boxes"]) == len(rows)


# --- what the packer may read and write ---------------------------------------------------------

def test_paths_outside_root_are_bad_rows_and_never_read(tmp_path):
    root = tmp_path / "data"
    rows = _dataset(root, 2)
    secret = tmp_path / "secret.png"
    _write_png(secret, np.full((16, 20), 7, np.uint8))
    (root / "images" / "link.png").symlink_to(secret)
    rows += [dict(rows[1], image_id="UP", image="../secret.png", mask=""),             # line 4
             dict(rows[1], image_id="ABS", image=str(secret), mask=""),                # line 5
             dict(rows[1], image_id="LINK", image="images/link.png", mask=""),         # line 6
             dict(rows[1], image_id="MASK", image="images/IMG0.png", mask="../secret.png")]  # line 7
    csv_path = _write_csv(tmp_path / "m.csv", rows, COLUMNS)
    manifest = pack(root, csv_path, tmp_path / "out", on_error="skip", progress=False)
    skipped = {e["line"]: e["reason"] for e in manifest["skipped"]}
    assert sorted(skipped) == [4, 5, 6, 7] and manifest["count"] == 2
    assert "'..'" in skipped[4] and "absolute" in skipped[5] and "outside --root" in skipped[6]
    assert "'..'" in skipped[7]
    for shard in _all_shards(tmp_path / "out", manifest):
        assert secret.read_bytes() not in shard.read_bytes()
    with pytest.raises(PackError, match=r"m\.csv line 4 \(key 'UP', \.\./secret\.png\): path '\.\./secret\.png'"):
        pack(root, csv_path, tmp_path / "out2", progress=False, shuffle_seed=None)


def test_empty_image_cell_is_a_bad_row(tmp_path, capsys):
    root = tmp_path / "data"
    rows = _dataset(root, 2) + [dict(_dataset(root, 1)[0], image_id="NOIMG", image="", mask="")]
    csv_path = _write_csv(tmp_path / "m.csv", rows, COLUMNS)
    argv = ["--root", str(root), "--metadata", str(csv_path), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(argv) == 2
    assert "m.csv line 4 (key 'NOIMG', ): empty 'image' cell" in capsys.readouterr().err
    assert main([*argv, "--on-error", "skip"]) == 0
    assert "skipped: line 4 (NOIMG, ): empty 'image' cell" in capsys.readouterr().err
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["count"] == 2


def test_unexpected_decoder_error_is_reported_with_its_line(tmp_path, monkeypatch):
    import streamaug.io.readers as readers

    root = tmp_path / "data"
    csv_path = _write_csv(tmp_path / "m.csv", _dataset(root, 3), COLUMNS)
    real = readers._decode_pillow

    def flaky(data, *, source, **kwargs):
        if "IMG1.png" in source and "images" in source:
            raise RuntimeError("decoder bug")
        return real(data, source=source, **kwargs)

    monkeypatch.setattr(readers, "_decode_pillow", flaky)
    manifest = pack(root, csv_path, tmp_path / "out", on_error="skip", progress=False)
    assert manifest["count"] == 2 and manifest["skipped"] == [
        {"line": 3, "key": "IMG1", "file": "images/IMG1.png",
         "reason": "unexpected RuntimeError while decoding: decoder bug"}]
    with pytest.raises(PackError, match=r"m\.csv line 3 \(key 'IMG1'.*RuntimeError") as info:
        pack(root, csv_path, tmp_path / "out2", progress=False)
    assert isinstance(info.value.__cause__, RuntimeError)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_failed_pack_leaves_out_as_it_was(tmp_path, monkeypatch):
    import streamaug.io.readers as readers

    root, out = tmp_path / "data", tmp_path / "out"
    good = _write_csv(tmp_path / "good.csv", _dataset(root, 4), COLUMNS)
    bad = _write_csv(tmp_path / "bad.csv", _dataset(root, 4) + [dict(_dataset(root, 1)[0], image_id="X",
                                                                      image="images/none.png")], COLUMNS)
    with pytest.raises(PackError, match="missing file"):  # shards of the first 4 were written, then this
        pack(root, bad, out, shard_size=1, progress=False)
    assert not out.exists() and _leftovers(tmp_path) == []  # nothing for XRayShards(out) to stream
    out.mkdir()
    with pytest.raises(PackError):
        pack(root, bad, out, shard_size=1, progress=False)
    assert list(out.iterdir()) == []

    first = pack(root, good, out, shard_size=1, progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(PackError, match="missing file"):
        pack(root, bad, out, shard_size=3, overwrite=True, progress=False)
    monkeypatch.setattr(readers, "_decode_pillow", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        pack(root, good, out, shard_size=3, overwrite=True, progress=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # the good pack, untouched
    assert json.loads((out / "manifest.json").read_text()) == first and _leftovers(tmp_path) == []
    monkeypatch.undo()

    again = pack(root, good, out, shard_size=3, overwrite=True, progress=False)
    assert sorted(p.relative_to(out) for p in out.rglob("*.tar")) == sorted(Path(p.relative_to(out)) for p in
                                                                           _all_shards(out, again))
    assert _leftovers(tmp_path) == []
    (out / "notes.txt").write_text("mine")
    with pytest.raises(PackError, match=r"more than a pack: \['notes\.txt'\]"):
        pack(root, good, out, overwrite=True, progress=False)
    assert (out / "notes.txt").read_text() == "mine" and (out / "manifest.json").exists()


@pytest.mark.parametrize("prefix", ["../x", "a/b", "..", "a\\b"])
def test_prefix_must_be_a_plain_name(tmp_path, prefix):
    root = tmp_path / "data"
    csv_path = _write_csv(tmp_path / "m.csv", _dataset(root, 2), COLUMNS)
    with pytest.raises(PackError, match="--prefix .* must be a plain file name"):
        pack(root, csv_path, tmp_path / "sub" / "out", prefix=prefix, progress=False)
    assert not (tmp_path / "sub").exists() and not list(tmp_path.rglob("*.tar"))


def test_boxes_are_read_by_the_sites_parser(tmp_path):
    import streamaug.cli.pack_csv as pack_csv

    assert pack_csv.parse_boxes is parse_boxes  # one parser for the packer and the site bank
    root = tmp_path / "data"
    rows = _dataset(root, 5)
    cells = ["1 2 3 4;5,6,7.5,8", "5.0 1 8 9", "1 2 3", "1 2 3 x", "nan 1 2 3"]
    csv_path = _write_csv(tmp_path / "m.csv", [dict(r, boxes_xyxy=c) for r, c in zip(rows, cells)], COLUMNS)
    manifest = pack(root, csv_path, tmp_path / "out", on_error="skip", progress=False)
    docs = {k: json.loads(s["json"]) for k, s in _read_tars(_all_shards(tmp_path / "out", manifest)).items()}
    assert docs["IMG0"]["boxes"] == [[1, 2, 3, 4], [5, 6, 7.5, 8]] and docs["IMG1"]["boxes"] == [[5, 1, 8, 9]]
    assert isinstance(docs["IMG1"]["boxes"][0][0], int)  # whole numbers are written as ints
    reasons = {e["line"]: e["reason"] for e in manifest["skipped"]}
    assert "cannot read '1 2 3' as boxes" in reasons[4] and "cannot read '1 2 3 x'" in reasons[5]
    assert "non-finite" in reasons[6]


def test_default_pack_mixes_labels_across_shards(tmp_path):
    """A CSV sorted by label (as BTXRD's is) must not give shards of one label each."""
    root = tmp_path / "root"
    rows = [{"image_id": f"IMG{i}", "image": f"images/IMG{i}.png", "label": "tumor" if i < 20 else "normal"}
            for i in range(40)]
    for i in range(40):
        _write_png(root / "images" / f"IMG{i}.png", np.full((8, 8), i, np.uint8))
    csv_path = _write_csv(root / "meta.csv", rows, ["image_id", "image", "label"])

    def shard_labels(out: Path, manifest: dict) -> list[set[str]]:
        return [{json.loads(f["json"])["label"] for f in _read_tars([path]).values()}
                for path in _all_shards(out, manifest)]

    shuffled = pack(root, csv_path, tmp_path / "a", shard_size=10, progress=False)
    labels = shard_labels(tmp_path / "a", shuffled)
    assert len(labels) == 4 and all(lab == {"tumor", "normal"} for lab in labels)
    again = pack(root, csv_path, tmp_path / "b", shard_size=10, progress=False)  # seeded: the same every time
    assert [p.read_bytes() for p in _all_shards(tmp_path / "b", again)] == \
        [p.read_bytes() for p in _all_shards(tmp_path / "a", shuffled)]
    ordered = pack(root, csv_path, tmp_path / "c", shard_size=10, progress=False, shuffle_seed=None)
    assert shard_labels(tmp_path / "c", ordered)[0] == {"tumor"}
