"""Tests for the procedural X-ray phantom (streamaug.phantom)."""
from __future__ import annotations

import csv
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from streamaug.cli.phantom import main
from streamaug.phantom import COLUMNS, components, make_phantom, write_phantom_dataset

BTXRD_COLUMNS = ["image_id", "image", "mask", "label", "malignancy", "subtype", "bone", "region", "view", "center",
                 "age", "sex", "boxes_xyxy", "mask_pixels", "group", "split"]
CASES = [(seed, region, view) for seed in range(6) for region, view in
         [("lower_limb", "frontal"), ("upper_limb", "lateral"), ("lower_limb", "oblique")]]


def _erode(m: np.ndarray, k: int) -> np.ndarray:
    """Binary erosion with a (2k+1)^2 square, numpy only."""
    out = m.astype(bool)
    for _ in range(k):
        p = np.pad(out, 1, constant_values=False)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                out = out & p[dy:dy + out.shape[0], dx:dx + out.shape[1]]
    return out


def _dilate(m: np.ndarray, k: int) -> np.ndarray:
    return ~_erode(~m.astype(bool), k)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames or []), list(r)


def test_same_seed_same_arrays_other_seed_differs():
    a = make_phantom(7, lesion=True)
    b = make_phantom(7, lesion=True)
    c = make_phantom(8, lesion=True)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])
    assert a["boxes"] == b["boxes"] and a["lesions"] == b["lesions"]
    assert not np.array_equal(a["image"], c["image"])


def test_lesion_flag_keeps_the_same_limb():
    normal, tumor = make_phantom(11, lesion=False), make_phantom(11, lesion=True)
    assert np.array_equal(normal["bone_mask"], tumor["bone_mask"]) and normal["bones"] == tumor["bones"]
    m = tumor["mask"].astype(bool)
    assert tumor["image"][m].mean() < normal["image"][m].mean() - 0.03  # the lesion is what darkens it
    far = ~_dilate(m, 12)
    assert np.abs(tumor["image"][far] - normal["image"][far]).mean() < 0.02


@pytest.mark.parametrize("size", [(256, 256), (200, 320), (1100, 1300)])
def test_types_shapes_and_range(size):
    out = make_phantom(3, size=size, lesion=True, region="upper_limb", view="oblique")
    img, mask = out["image"], out["mask"]
    assert img.shape == size and img.dtype == np.float32
    assert mask.shape == size and mask.dtype == np.uint8 and out["bone_mask"].shape == size
    assert img.min() >= 0.0 and img.max() <= 1.0 and img.std() > 0.05
    assert set(np.unique(mask)) == {0, 1}
    assert out["label"] == "tumor" and out["region"] == "upper_limb" and out["view"] == "oblique"
    inside = (mask.astype(bool) & out["bone_mask"].astype(bool)).sum() / mask.sum()
    assert inside > 0.99  # exact at render resolution, nearest-upsampled bone mask above MAX_RENDER


def test_bone_brighter_than_soft_tissue_brighter_than_background():
    for seed in range(5):
        out = make_phantom(seed, lesion=False)
        img, bone = out["image"], out["bone_mask"].astype(bool)
        assert img[bone].mean() > np.median(img[~bone]) + 0.1
        assert np.quantile(img, 0.02) < 0.15  # some air in every picture


@pytest.mark.parametrize("seed,region,view", CASES)
def test_lesion_mask_boxes_and_bone(seed, region, view):
    out = make_phantom(seed, lesion=True, region=region, view=view)
    mask, boxes = out["mask"].astype(bool), out["boxes"]
    assert out["label"] == "tumor" and boxes and out["bone"]
    assert all(name in out["bones"] for name in out["bone"].split(";"))
    assert not (mask & ~out["bone_mask"].astype(bool)).any(), "lesion outside the bone"
    assert boxes == components(mask)
    covered = np.zeros_like(mask)
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= mask.shape[1] and 0 <= y0 < y1 <= mask.shape[0]
        crop = mask[y0:y1, x0:x1]
        assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any(), "box not tight"
        assert (x1 - x0) >= 8 and (y1 - y0) >= 8, "lesion too small to see"
        covered[y0:y1, x0:x1] = True
    assert not (mask & ~covered).any()
    assert int(mask.sum()) < 0.15 * mask.size


@pytest.mark.parametrize("seed", range(4))
def test_normals_have_no_lesion(seed):
    out = make_phantom(seed, lesion=False, region="upper_limb")
    assert out["boxes"] == [] and not out["mask"].any() and out["label"] == "normal" and out["bone"] == ""
    assert out["bone_mask"].any()


def test_lesion_core_darker_than_bone_rim_brighter_than_core():
    for seed in range(12):
        out = make_phantom(seed, lesion=True)
        img, m = out["image"], out["mask"].astype(bool)
        core = _erode(m, 4)
        band = m & ~_erode(m, 2)
        ring = _dilate(m, 7) & ~_dilate(m, 3) & out["bone_mask"].astype(bool)
        assert core.sum() > 10 and ring.sum() > 10
        assert img[core].mean() < img[ring].mean() - 0.02, f"seed {seed}: core not darker than bone"
        assert img[band].mean() > img[core].mean() + 0.02, f"seed {seed}: rim not brighter than core"


def test_lesion_boxes_darker_than_same_size_bone_boxes_in_normals():
    """Classifier-free separability: bone inside lesion boxes is darker (relative to the image's bone)
    than bone inside same-size boxes at random bone sites of normal images."""
    rng = np.random.default_rng(0)
    n = 32
    sizes, les_ratio, norm_ratio = [], [], []
    for seed in range(n):
        out = make_phantom(1000 + seed, lesion=True, view=("frontal", "lateral")[seed % 2])
        img, bone = out["image"], out["bone_mask"].astype(bool)
        for x0, y0, x1, y1 in out["boxes"]:
            les_ratio.append(img[y0:y1, x0:x1][bone[y0:y1, x0:x1]].mean() / img[bone].mean())
            sizes.append((x1 - x0, y1 - y0))
    for seed in range(n):
        out = make_phantom(2000 + seed, lesion=False, view=("frontal", "lateral")[seed % 2])
        img, bone = out["image"], out["bone_mask"].astype(bool)
        ys, xs = np.nonzero(_erode(bone, 6))
        w, h = sizes[seed]
        i = rng.integers(len(ys))
        y0, x0 = max(ys[i] - h // 2, 0), max(xs[i] - w // 2, 0)
        norm_ratio.append(img[y0:y0 + h, x0:x0 + w][bone[y0:y0 + h, x0:x0 + w]].mean() / img[bone].mean())
    les, norm = np.array(les_ratio), np.array(norm_ratio)
    auc = (les[:, None] < norm[None, :]).mean()
    assert les.mean() < norm.mean() - 0.02 and auc > 0.6, (les.mean(), norm.mean(), auc)


def test_components_counts_blobs_and_merges_u_shapes():
    m = np.zeros((20, 30), dtype=np.uint8)
    m[2:5, 3:8] = 1  # blob
    m[10:18, 10:12] = 1  # U: two arms joined at the bottom row
    m[10:18, 20:22] = 1
    m[17, 10:22] = 1
    m[0, 29] = 1  # single pixel at the corner
    assert components(m) == [[29, 0, 30, 1], [3, 2, 8, 5], [10, 10, 22, 18]]
    assert components(np.zeros((4, 4), bool)) == []


def _flood_boxes(mask: np.ndarray) -> list[list[int]]:
    """Reference: 4-connected flood fill from each unvisited pixel in raster order."""
    seen, boxes = np.zeros(mask.shape, bool), []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        seen[y, x], stack, box = True, [(y, x)], [x, y, x + 1, y + 1]
        while stack:
            cy, cx = stack.pop()
            box = [min(box[0], cx), min(box[1], cy), max(box[2], cx + 1), max(box[3], cy + 1)]
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        boxes.append([int(v) for v in box])
    return sorted(boxes, key=lambda b: (b[1], b[0]))  # stable: ties stay in raster order of first pixel


def test_components_match_a_flood_fill_and_use_scipy(monkeypatch):
    import scipy.ndimage

    rng = np.random.default_rng(0)
    for density in (0.2, 0.45, 0.6):  # many diagonal-only contacts (separate under 4-connectivity)
        mask = rng.random((24, 31)) < density
        assert components(mask) == _flood_boxes(mask)
    nested = np.zeros((9, 9), bool)  # a ring and a dot inside: same (y0, x0) ordering rule
    nested[0, :], nested[:, 0], nested[8, :], nested[:, 8], nested[4, 4] = True, True, True, True, True
    assert components(nested) == [[0, 0, 9, 9], [4, 4, 5, 5]] == _flood_boxes(nested)
    calls = []
    real = scipy.ndimage.label
    monkeypatch.setattr(scipy.ndimage, "label", lambda *a, **k: calls.append(1) or real(*a, **k))
    components(nested)
    assert calls == [1]  # no hand-written labelling left


@pytest.mark.realdata
def test_components_reproduce_btxrd_boxes(shared_data):
    root = shared_data / "btxrd"
    with open(root / "metadata.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["boxes_xyxy"]][:150]
    for row in rows:
        want = [[int(v) for v in box.split()] for box in row["boxes_xyxy"].split(";")]
        got = components(np.asarray(Image.open(root / row["mask"])) > 0)
        assert got == sorted(want, key=lambda b: (b[1], b[0])), row["image_id"]


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError):
        make_phantom(0, lesion=True, region="pelvis")
    with pytest.raises(ValueError):
        make_phantom(0, lesion=True, view="axial")
    with pytest.raises(ValueError):
        write_phantom_dataset(tmp_path, 1, 1, fmt="jpg")
    with pytest.raises(ValueError):
        write_phantom_dataset(tmp_path, 1, 1, fmt="png", bits=12)
    with pytest.raises(ValueError):
        write_phantom_dataset(tmp_path, 1, 1, fmt="dcm", bits=8)


@pytest.fixture(scope="module")
def png_dataset(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("ph") / "ds", 14, 10, seed=5)


def test_dataset_layout_like_btxrd(png_dataset):
    cols, rows = _read_csv(png_dataset / "metadata.csv")
    assert cols == BTXRD_COLUMNS == list(COLUMNS)
    assert len(rows) == 24
    assert sum(r["label"] == "tumor" for r in rows) == 10 and sum(r["label"] == "normal" for r in rows) == 14
    assert [r["image_id"] for r in rows] == [f"IMG{i:06d}" for i in range(1, 25)]
    for r in rows:
        assert r["image"] == f"images/{r['image_id']}.png" and r["mask"] == f"masks/{r['image_id']}.png"
        img = Image.open(png_dataset / r["image"])
        mask = np.asarray(Image.open(png_dataset / r["mask"]))
        assert img.mode == "L" and img.size == (256, 256)
        assert set(np.unique(mask)) <= {0, 255} and int(r["mask_pixels"]) == int((mask > 0).sum())
        assert r["region"] in ("lower_limb", "upper_limb") and r["view"] in ("frontal", "lateral", "oblique")
        boxes = [list(map(int, b.split())) for b in r["boxes_xyxy"].split(";") if b]
        assert boxes == components(mask > 0)
        if r["label"] == "normal":
            assert boxes == [] and r["bone"] == "" and r["malignancy"] == ""
        else:
            assert boxes and r["bone"] and r["malignancy"] in ("benign", "malignant")


def test_splits_never_split_a_group(png_dataset):
    _, rows = _read_csv(png_dataset / "metadata.csv")
    by_group: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    for r in rows:
        assert r["split"] in ("train", "val", "test")
        by_group[r["group"]].add((r["split"], r["label"], r["region"]))
    assert all(len(v) == 1 for v in by_group.values())
    assert len(by_group) > 3 and {"train"} <= {r["split"] for r in rows}
    order = [int(r["group"]) for r in rows]
    assert order == sorted(order), "a group's images are consecutive"


def test_dataset_is_reproducible_byte_for_byte(png_dataset, tmp_path):
    again = write_phantom_dataset(tmp_path / "again", 14, 10, seed=5)
    for f in sorted(png_dataset.rglob("*")):
        if f.is_file():
            assert (again / f.relative_to(png_dataset)).read_bytes() == f.read_bytes(), f.name
    other = write_phantom_dataset(tmp_path / "other", 14, 10, seed=6)
    assert (other / "images/IMG000001.png").read_bytes() != (png_dataset / "images/IMG000001.png").read_bytes()


def test_png16_keeps_more_than_256_levels(tmp_path):
    out = write_phantom_dataset(tmp_path, 1, 1, bits=16, seed=1)
    arr = np.asarray(Image.open(out / "images/IMG000001.png"))
    assert arr.dtype == np.uint16 and len(np.unique(arr)) > 256 and arr.max() > 20000


@pytest.mark.parametrize("bits,photometric", [(16, "MONOCHROME2"), (12, "MONOCHROME1")])
def test_dicom_reads_back_with_tags(tmp_path, bits, photometric):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.uid import ExplicitVRLittleEndian

    out = write_phantom_dataset(tmp_path / "dcm", 2, 2, size=(192, 160), fmt="dcm", bits=bits, photometric=photometric,
                                seed=3)
    ref = write_phantom_dataset(tmp_path / "png", 2, 2, size=(192, 160), bits=16, seed=3)
    _, rows = _read_csv(out / "metadata.csv")
    for r in rows:
        path = out / r["image"]
        assert path.suffix == ".dcm" and path.read_bytes()[128:132] == b"DICM"
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "DX" and ds.PhotometricInterpretation == photometric
        assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (192, 160, 16, bits, bits - 1)
        assert ds.PixelRepresentation == 0 and float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == 0.0
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([350.0 / 160] * 2)
        assert ds.BodyPartExamined == {"lower_limb": "LEG", "upper_limb": "ARM"}[r["region"]]
        assert ds.ViewPosition == {"frontal": "AP", "lateral": "LL", "oblique": "LLO"}[r["view"]]
        px = ds.pixel_array.astype(np.int64)
        top = (1 << bits) - 1
        assert px.shape == (192, 160) and px.max() <= top and len(np.unique(px)) > 256
        png = np.asarray(Image.open(ref / f"images/{r['image_id']}.png")).astype(np.float64) / 65535
        shown = px / top if photometric == "MONOCHROME2" else 1 - px / top
        assert np.abs(shown - png).max() < 1.0 / top + 1e-6  # same picture, bone bright after inversion


def test_realdata_columns_match(shared_data):
    cols, _ = _read_csv(shared_data / "btxrd" / "metadata.csv")
    assert cols == list(COLUMNS)


def test_cli_in_process_and_as_module(tmp_path):
    assert main(["--out", str(tmp_path / "a"), "--n-normal", "2", "--n-lesion", "1", "--size", "96"]) == 0
    _, rows = _read_csv(tmp_path / "a" / "metadata.csv")
    assert len(rows) == 3 and Image.open(tmp_path / "a" / rows[0]["image"]).size == (96, 96)
    r = subprocess.run([sys.executable, "-m", "streamaug.cli.phantom", "--out", str(tmp_path / "b"), "--n-normal", "1",
                        "--n-lesion", "1", "--size", "64", "--format", "dcm", "--seed", "2"],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "b" / "images").glob("*.dcm"))) == 2


@pytest.mark.parametrize("args, said", [
    (["--n-normal", "-3", "--n-lesion", "1"], "--n-normal must be >= 0, got -3"),  # before: IndexError
    (["--n-normal", "0", "--n-lesion", "0"], "writes no image"),  # before: an empty dataset, exit 0
    (["--n-normal", "1", "--n-lesion", "1", "--bits", "12"], r"PNG bits \(--bits\) must be 8 or 16"),
    (["--n-normal", "1", "--n-lesion", "1", "--sheet", "sheet.txt"], "give a file name ending in .png"),
])
def test_cli_refuses_bad_counts_and_options_before_writing(tmp_path, capsys, args, said):
    assert main(["--out", str(tmp_path / "ds"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert re.search(said, err), err
    assert not (tmp_path / "ds").exists()


def test_cli_refuses_a_size_below_the_minimum_and_an_out_that_is_a_file(tmp_path, capsys):
    """Before: --size 0 raised ZeroDivisionError, --out a file NotADirectoryError (tracebacks)."""
    for size in ("0", "8", "abc"):
        with pytest.raises(SystemExit) as info:  # argparse: usage and the reason, exit 2
            main(["--out", str(tmp_path / "ds"), "--n-normal", "1", "--n-lesion", "1", "--size", size])
        assert info.value.code == 2 and "argument --size" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    for out in ("file", "file/ds"):
        assert main(["--out", str(tmp_path / out), "--n-normal", "1", "--n-lesion", "1"]) == 2
        assert "is a file, not a folder; choose another --out" in capsys.readouterr().err
    with pytest.raises(ValueError, match="size must be .* >= 32"):
        write_phantom_dataset(tmp_path / "lib", 1, 1, size=(0, 64))
    with pytest.raises(ValueError, match="n_normal must be a whole number >= 0"):
        write_phantom_dataset(tmp_path / "lib", -3, 1)
    with pytest.raises(ValueError, match="nothing to write"):
        write_phantom_dataset(tmp_path / "lib", 0, 0)
    with pytest.raises(ValueError, match="at least 2 px"):
        make_phantom(0, size=(1, 1), lesion=False)
    assert not (tmp_path / "lib").exists()


def test_split_counts_is_the_plan_the_writer_follows(tmp_path):
    from streamaug.phantom.writer import split_counts

    counts = split_counts(5, 4, seed=3)
    _, rows = _read_csv(write_phantom_dataset(tmp_path, 5, 4, size=(32, 32), seed=3) / "metadata.csv")
    got = {s: {0: 0, 1: 0} for s in ("train", "val", "test")}
    for row in rows:
        got[row["split"]][int(row["label"] == "tumor")] += 1
    assert counts == got and sum(c[0] for c in counts.values()) == 5


def test_splits_follow_the_fractions_in_order_within_every_label_and_region(tmp_path):
    """splits=(train, val, test): train gets the largest share, and the split is stratified by label and
    region, so each region of each label reaches every split."""
    from streamaug.phantom.writer import split_counts

    counts = split_counts(40, 30, seed=2, splits=(0.7, 0.2, 0.1))
    sizes = {s: sum(c.values()) for s, c in counts.items()}
    assert sizes["train"] > sizes["val"] > sizes["test"] > 0
    _, rows = _read_csv(write_phantom_dataset(tmp_path, 40, 30, size=(32, 32), seed=2,
                                              splits=(0.6, 0.2, 0.2)) / "metadata.csv")
    groups: dict[tuple[str, str], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for r in rows:
        groups[(r["label"], r["region"])][r["split"]].add(r["group"])
    assert set(groups) == {(label, region) for label in ("normal", "tumor") for region in ("lower_limb", "upper_limb")}
    for stratum, by_split in groups.items():
        assert set(by_split) == {"train", "val", "test"}, stratum
        n = sum(len(g) for g in by_split.values())  # each stratum's groups split by the fractions, within 1
        for split, frac in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
            assert abs(len(by_split[split]) - frac * n) < 1, (stratum, split, n)
