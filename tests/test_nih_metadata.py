"""benchmarks/nih_metadata.py: the chest box table as one row per image, positives by finding, split by patient."""
from __future__ import annotations

import csv

from benchload import load_benchmark


def _module():
    return load_benchmark("nih_metadata")


def test_rows_label_by_boxed_finding_drop_unboxed_positives_and_split_by_patient(tmp_path):
    fields = ["image_id", "image", "finding", "box_xywh_1024", "box_xyxy_256", "all_findings", "patient_id", "age",
              "sex", "view"]
    table = []
    for i in range(60):  # patient i // 2; images with a Nodule box, an Effusion box, both, or a Mass without box
        kind = i % 4
        box = f"{i} 10 {i + 20} 40"
        base = {"image_id": f"img{i}", "image": f"images/img{i}.png", "box_xywh_1024": "0 0 1 1", "age": "50",
                "sex": "F", "view": "PA", "patient_id": str(i // 2)}
        if kind in (0, 2):
            table.append({**base, "finding": "Nodule", "box_xyxy_256": box, "all_findings": "Nodule"})
        if kind in (1, 2):
            table.append({**base, "finding": "Effusion", "box_xyxy_256": "1 1 5 5", "all_findings": "Effusion"})
        if kind == 3:
            table.append({**base, "finding": "Effusion", "box_xyxy_256": "1 1 5 5", "all_findings": "Effusion|Mass"})
    table.append({**base, "image_id": "img60", "image": "images/img60.png", "patient_id": "30", "finding": "Mass",
                  "box_xyxy_256": "3 3 9 9", "all_findings": "Mass"})  # a Mass with its box
    with open(tmp_path / "boxes.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(table)
    rows = _module().build_rows(tmp_path / "boxes.csv", ["Mass", "Nodule"], [0.6, 0.2, 0.2], seed=0)
    by_id = {r["image_id"]: r for r in rows}
    assert "img3" not in by_id  # lists a Mass but has no box for it
    assert by_id["img0"]["label"] == "lesion" and by_id["img0"]["boxes_xyxy"] == "0 10 20 40"
    assert by_id["img2"]["label"] == "lesion" and by_id["img2"]["boxes_xyxy"] == "2 10 22 40"  # its Nodule box only
    assert by_id["img1"]["label"] == "negative" and by_id["img1"]["boxes_xyxy"] == ""
    split_of: dict[str, set[str]] = {}
    for r in rows:
        split_of.setdefault(r["group"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of.values())  # no patient in two splits
    assert {r["split"] for r in rows if r["label"] == "lesion"} == {"train", "val", "test"}
    assert {r["region"] for r in rows} == {"chest"}


def test_the_two_spellings_of_infiltration_are_one_finding_and_unknown_findings_are_refused(tmp_path):
    """Before: boxes say 'Infiltrate', all_findings says 'Infiltration'; an image listing it without its
    box was kept as a negative, and a --positive no box has gave an empty positive class silently."""
    import pytest

    fields = ["image_id", "image", "finding", "box_xyxy_256", "all_findings", "patient_id", "age", "sex", "view"]
    base = {"age": "50", "sex": "F", "view": "PA", "box_xyxy_256": "1 1 5 5"}
    table = [{**base, "image_id": f"img{i}", "image": f"images/img{i}.png", "patient_id": str(i),
              "finding": "Infiltrate" if i % 3 == 0 else "Effusion",
              "all_findings": "Infiltration" if i % 3 == 0 else "Effusion|Infiltration" if i % 3 == 1 else "Effusion"}
             for i in range(30)]
    with open(tmp_path / "boxes.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(table)
    for name in ("Infiltrate", "Infiltration"):
        rows = _module().build_rows(tmp_path / "boxes.csv", [name], [0.6, 0.2, 0.2], seed=0)
        assert sorted(r["label"] for r in rows) == ["lesion"] * 10 + ["negative"] * 10  # i % 3 == 1 left out
    for positive in (["Hernia"], ["Infiltrate", "Hernia"]):  # the review: Hernia beside a boxed finding passed
        with pytest.raises(SystemExit, match="--positive Hernia: .*boxed findings are Effusion, Infiltrate"):
            _module().build_rows(tmp_path / "boxes.csv", positive, [0.6, 0.2, 0.2], seed=0)
