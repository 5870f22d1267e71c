"""A BTXRD-style metadata CSV for the NIH chest X-ray box subset (``../shared/data/nih-bbox``), so the
bone experiment's driver runs on it unchanged:

    python benchmarks/nih_metadata.py --data ../shared/data/nih-bbox --out /tmp/nih_metadata.csv
    python benchmarks/btxrd_experiment.py --data ../shared/data/nih-bbox --metadata /tmp/nih_metadata.csv \\
        --regions chest --arms baseline oversample copy_paste oversample_copy_paste inpaint oversample_inpaint \\
        --out /tmp/nih_exp --budget cpu128 --jobs 2

The set has no normal images (every image has at least one boxed finding), so the task is one
finding group against the rest: an image is positive when it has a box of a ``--positive`` finding
(default: Mass or Nodule, the focal lesions, closest to a bone tumour), negative when none of its
findings (``all_findings``, boxed or not) is one of them; an image that lists a positive finding
without a box for it is left out (its label would be right, but it has no lesion box to learn or
paste from). Positives keep the boxes of their positive findings (``box_xyxy_256``); negatives
carry none, like the bone normals. Every image is ``region`` ``chest``; ``group`` is the patient,
and the split (``--shares`` train / val / test) is drawn by patient, seeded, each label's patients
dealt apart so each split gets about its share of positives.
"""
from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
#: the image-level ``all_findings`` spelling -> the box table's ``finding`` spelling
BOX_SPELLING = {"Infiltration": "Infiltrate"}


def _box_names(findings) -> set[str]:
    return {BOX_SPELLING.get(f, f) for f in findings}


def build_rows(boxes_csv: Path, positive: Sequence[str], shares: Sequence[float], seed: int) -> list[dict[str, str]]:
    """One row per kept image (see the module docstring)."""
    by_image: dict[str, list[dict[str, str]]] = defaultdict(list)
    with open(boxes_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            by_image[row["image_id"]].append(row)
    positive = _box_names(positive)
    boxed = {b["finding"] for boxes in by_image.values() for b in boxes}
    if not positive <= boxed:  # its images would all be left out (a positive finding without its box)
        raise SystemExit(f"--positive {' '.join(sorted(positive - boxed))}: no box in {boxes_csv} has "
                         f"{'that finding' if len(positive - boxed) == 1 else 'these findings'}; the boxed findings "
                         f"are {', '.join(sorted(boxed))}")
    rows = []
    for image_id, boxes in sorted(by_image.items()):
        first = boxes[0]
        mine = [b["box_xyxy_256"] for b in boxes if b["finding"] in positive]
        listed = _box_names(first["all_findings"].split("|")) | {b["finding"] for b in boxes}
        if not mine and listed & positive:
            continue  # a positive finding without its box
        rows.append({"image_id": image_id, "image": first["image"], "label": "lesion" if mine else "negative",
                     "finding": "|".join(sorted({b["finding"] for b in boxes})), "boxes_xyxy": ";".join(mine),
                     "region": "chest", "view": first["view"].lower(), "group": first["patient_id"],
                     "age": first["age"], "sex": first["sex"]})
    # patients: a positive patient is any with a positive image; each kind dealt into the splits by share
    patients: dict[str, bool] = defaultdict(bool)
    for r in rows:
        patients[r["group"]] |= r["label"] == "lesion"
    rng = np.random.default_rng([seed, 0xC4E57])
    split_of = {}
    for kind in (True, False):
        ids = sorted(p for p, positive_patient in patients.items() if positive_patient == kind)
        rng.shuffle(ids)
        edges = np.round(np.cumsum(shares) / np.sum(shares) * len(ids)).astype(int)
        for i, pid in enumerate(ids):
            split_of[pid] = SPLITS[int(np.searchsorted(edges, i, side="right"))]
    for r in rows:
        r["split"] = split_of[r["group"]]
    return rows


def main(argv: Sequence[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the nih-bbox folder (boxes.csv, images/)")
    p.add_argument("--out", required=True, help="the CSV to write (outside --data)")
    p.add_argument("--positive", nargs="+", default=["Mass", "Nodule"], help="findings that make a positive")
    p.add_argument("--shares", nargs=3, type=float, default=[0.6, 0.2, 0.2], help="train / val / test shares")
    p.add_argument("--seed", type=int, default=0, help="seed of the patient split")
    args = p.parse_args(argv)
    rows = build_rows(Path(args.data) / "boxes.csv", args.positive, args.shares, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for split in SPLITS:
        part = [r for r in rows if r["split"] == split]
        print(f"{split}: {sum(r['label'] == 'lesion' for r in part)} positive / {len(part)} images, "
              f"{len({r['group'] for r in part})} patients")
    return out


if __name__ == "__main__":
    main()
