"""streamaug-pack's CSV rules: a BOM before the header, rows wider than the header, duplicate and
reserved column names, upper-case extensions, an empty split cell, and the sample order options."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from test_pack import _all_shards, _read_tars, _write_png

from streamaug.cli.pack import PackError, main, pack


def _images(root: Path, n: int, name: str = "img{}.png") -> None:
    for i in range(n):
        _write_png(root / name.format(i), np.full((8, 8), 10 * i, np.uint8))


def _csv(path: Path, text: str, *, bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def test_a_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path):
    """Spreadsheets save 'CSV UTF-8' with a BOM: it would glue itself to 'image' (no 'image' column)."""
    _images(tmp_path, 2)
    csv_path = _csv(tmp_path / "m.csv", "image,label\nimg0.png,normal\nimg1.png,tumor\n", bom=True)
    manifest = pack(tmp_path, csv_path, tmp_path / "out", progress=False)
    assert manifest["source"]["columns"] == ["image", "label"] and manifest["count"] == 2


def test_a_row_with_more_cells_than_the_header_is_refused(tmp_path):
    """An unquoted ',' inside a cell shifts every later value into the wrong column."""
    _images(tmp_path, 2)
    csv_path = _csv(tmp_path / "m.csv", "image,label\nimg0.png,normal\nimg1.png,tumor,Bonn, Germany\n")
    with pytest.raises(PackError, match=r"m\.csv line 3: more cells than the header has columns"):
        pack(tmp_path, csv_path, tmp_path / "out", on_error="skip", progress=False)
    assert not (tmp_path / "out").exists()


def test_duplicate_column_names_are_refused(tmp_path):
    """csv.DictReader keeps the last of two same-named columns: the first one's values would vanish."""
    _images(tmp_path, 1)
    csv_path = _csv(tmp_path / "m.csv", "image,label,label\nimg0.png,normal,tumor\n")
    with pytest.raises(PackError, match=r"m\.csv: duplicate column names in the header \['image', 'label', 'label'\]"):
        pack(tmp_path, csv_path, tmp_path / "out", progress=False)


@pytest.mark.parametrize("column", ["boxes", "rows"])
def test_columns_the_packer_writes_itself_are_reserved(tmp_path, column):
    _images(tmp_path, 1)
    csv_path = _csv(tmp_path / "m.csv", f"image,label,{column}\nimg0.png,normal,x\n")
    with pytest.raises(PackError, match=rf"columns \['{column}'\] are reserved by the packer.*rename them"):
        pack(tmp_path, csv_path, tmp_path / "out", progress=False)


def test_a_reserved_boxes_column_named_as_the_boxes_column_is_read_as_boxes(tmp_path):
    _write_png(tmp_path / "img0.png", np.zeros((16, 16), np.uint8))
    csv_path = _csv(tmp_path / "m.csv", "image,label,boxes\nimg0.png,tumor,2 3 8 9\n")
    manifest = pack(tmp_path, csv_path, tmp_path / "out", boxes_column="boxes", progress=False)
    (sample,) = _read_tars(_all_shards(tmp_path / "out", manifest)).values()
    assert json.loads(sample["json"])["boxes"] == [[2, 3, 8, 9]]


def test_an_upper_case_extension_is_stored_lower_case(tmp_path):
    """The stream decodes members by their lower-case extension: 'PNG' would be refused as unreadable."""
    _images(tmp_path, 1, name="IMG{}.PNG")
    csv_path = _csv(tmp_path / "m.csv", "image,label\nIMG0.PNG,normal\n")
    manifest = pack(tmp_path, csv_path, tmp_path / "out", progress=False)
    samples = _read_tars(_all_shards(tmp_path / "out", manifest))
    assert set(samples) == {"IMG0"} and set(samples["IMG0"]) == {"png", "json"}


def test_an_empty_split_cell_goes_to_unassigned(tmp_path):
    _images(tmp_path, 3)
    csv_path = _csv(tmp_path / "m.csv", "image,label,split\nimg0.png,normal,train\nimg1.png,tumor,\n"
                                        "img2.png,normal,train\n")
    manifest = pack(tmp_path, csv_path, tmp_path / "out", progress=False)
    assert {s: v["count"] for s, v in manifest["splits"].items()} == {"train": 2, "unassigned": 1}
    assert manifest["skipped"] == []
    (name,) = [s["name"] for s in manifest["splits"]["unassigned"]["shards"]]
    assert name.startswith("unassigned/") and list(_read_tars([tmp_path / "out" / name])) == ["img1"]


def test_shuffle_seed_and_keep_order_set_the_written_order(tmp_path, capsys):
    """Default: the keys shuffled by random.Random(0); --shuffle-seed N: by random.Random(N);
    --keep-order: the CSV's order."""
    n = 12
    _images(tmp_path / "root", n)
    keys = [f"img{i}" for i in range(n)]
    csv_path = _csv(tmp_path / "m.csv", "image,label\n" + "".join(f"img{i}.png,normal\n" for i in range(n)))

    def order(out: str, *options: str) -> list[str]:
        assert main(["--root", str(tmp_path / "root"), "--metadata", str(csv_path), "--out", str(tmp_path / out),
                     "--shard-size", "100", "--no-progress", *options]) == 0
        manifest = json.loads((tmp_path / out / "manifest.json").read_text())
        assert manifest["source"]["shuffle_seed"] == (None if "--keep-order" in options else
                                                      int(options[1]) if options else 0)
        return list(_read_tars(_all_shards(tmp_path / out, manifest)))

    def shuffled(seed: int) -> list[str]:
        copy = list(keys)
        random.Random(seed).shuffle(copy)
        return copy

    assert order("kept", "--keep-order") == keys
    assert order("default") == shuffled(0) != keys
    assert order("seed5", "--shuffle-seed", "5") == shuffled(5) != shuffled(0)
    capsys.readouterr()
