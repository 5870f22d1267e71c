"""Write phantom datasets laid out like BTXRD: ``images/``, ``masks/``, ``metadata.csv``."""
from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from streamaug.phantom.generator import REGIONS, VIEWS, make_phantom

COLUMNS = ("image_id", "image", "mask", "label", "malignancy", "subtype", "bone", "region", "view", "center",
           "age", "sex", "boxes_xyxy", "mask_pixels", "group", "split")
SPLITS = ("train", "val", "test")
_BODY_PART = {"lower_limb": "LEG", "upper_limb": "ARM"}
_VIEW_POSITION = {"frontal": "AP", "lateral": "LL", "oblique": "LLO"}
_DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
FIELD_MM = 350.0  # detector field of view across the image width, sets PixelSpacing
MIN_SIDE = 32  # below it a lesion can fall between pixels: a "tumor" row without a box or mask


def _quantize(image: np.ndarray, bits: int) -> np.ndarray:
    """``[0, 1]`` float ``(H, W)`` -> uint8 (``bits`` 8) or uint16 in ``[0, 2**bits - 1]``."""
    top = (1 << bits) - 1
    return np.rint(np.clip(image, 0.0, 1.0) * top).astype(np.uint8 if bits == 8 else np.uint16)


def write_png(path: Path, image: np.ndarray, bits: int = 8) -> None:
    """Save a ``[0, 1]`` image ``(H, W)`` as 8- or 16-bit grayscale PNG."""
    Image.fromarray(_quantize(image, bits)).save(path, format="PNG", compress_level=3)


def write_dicom(path: Path, image: np.ndarray, *, bits: int = 16, photometric: str = "MONOCHROME2",
                key: str = "", region: str = "lower_limb", view: str = "frontal", patient: str = "",
                age: int | None = None, sex: str = "", rescale: tuple[float, float] = (1.0, 0.0)) -> None:
    """Save a ``[0, 1]`` image ``(H, W)`` as an uncompressed DX DICOM (explicit VR little endian).

    Args:
        path: output file.
        image: float ``(H, W)`` in ``[0, 1]``, bone bright.
        bits: BitsStored, 12 or 16 (BitsAllocated is 16).
        photometric: ``"MONOCHROME2"`` (stored high = bright) or ``"MONOCHROME1"`` (stored high = dark).
        key: image id; also seeds the deterministic UIDs.
        region, view: map to BodyPartExamined and ViewPosition.
        patient, age, sex: PatientID, PatientAge, PatientSex.
        rescale: ``(RescaleSlope, RescaleIntercept)`` written as tags; stored values are not changed.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if bits not in (12, 16):
        raise ValueError(f"DICOM bits (BitsStored) must be 12 or 16, got {bits}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    stored = _quantize(image, bits)
    if photometric == "MONOCHROME1":
        stored = ((1 << bits) - 1 - stored).astype(np.uint16)
    uid = generate_uid(entropy_srcs=["streamaug-phantom", key, "image"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _DX_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = _DX_SOP_CLASS, uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["streamaug-phantom", patient, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["streamaug-phantom", key, "series"])
    ds.Modality, ds.PresentationIntentType, ds.ImageType = "DX", "FOR PRESENTATION", ["DERIVED", "PRIMARY"]
    ds.Manufacturer, ds.StudyDate, ds.StudyTime = "streamaug phantom", "20240101", "120000"
    ds.PatientID, ds.PatientSex = patient or key, sex
    if age is not None:
        ds.PatientAge = f"{int(age):03d}Y"
    ds.BodyPartExamined, ds.ViewPosition = _BODY_PART.get(region, "EXTREMITY"), _VIEW_POSITION.get(view, "")
    H, W = stored.shape
    spacing = round(FIELD_MM / W, 6)
    ds.PixelSpacing = ds.ImagerPixelSpacing = [spacing, spacing]
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = H, W, 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{rescale[0]:g}", f"{rescale[1]:g}", "US"
    ds.WindowCenter = f"{(1 << (bits - 1)) * rescale[0] + rescale[1]:g}"
    ds.WindowWidth = f"{(1 << bits) * rescale[0]:g}"
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def _plan(seed: int, n_normal: int, n_lesion: int, regions: Sequence[str],
          splits: Sequence[float]) -> list[dict[str, Any]]:
    """Rows without image data: pseudo-patient groups of 1-3 images sharing label and region (a
    function of the arguments: :func:`split_counts` and the writer get the same rows)."""
    rng = np.random.default_rng([int(seed), 0xB7])
    left = {"normal": n_normal, "tumor": n_lesion}
    groups: list[list[dict[str, Any]]] = []
    while left["normal"] + left["tumor"]:
        label = "tumor" if rng.random() < left["tumor"] / (left["normal"] + left["tumor"]) else "normal"
        n = min(int(rng.integers(1, 4)), left[label])
        left[label] -= n
        region = str(regions[int(rng.integers(len(regions)))])
        age, sex, v0 = int(rng.integers(6, 80)), "MF"[int(rng.integers(2))], int(rng.integers(3))
        groups.append([{"label": label, "region": region, "view": VIEWS[(v0 + i) % 3], "age": age, "sex": sex,
                        "group": len(groups) + 1} for i in range(n)])
    strata: dict[tuple[str, str], list[int]] = defaultdict(list)
    for gi, g in enumerate(groups):
        strata[(g[0]["label"], g[0]["region"])].append(gi)
    frac = np.asarray(splits, dtype=float) / float(np.sum(splits))
    for members in strata.values():  # stratified by label and region, whole groups only
        members = [members[i] for i in rng.permutation(len(members))]
        cuts = np.rint(np.cumsum(frac) * len(members)).astype(int)
        for rank, gi in enumerate(members):
            split = SPLITS[int(np.searchsorted(cuts, rank, side="right"))]
            for row in groups[gi]:
                row["split"] = split
    return [row for g in groups for row in g]


def split_counts(n_normal: int, n_lesion: int, *, seed: int = 0, splits: Sequence[float] = (0.6, 0.2, 0.2),
                 regions: Sequence[str] = REGIONS) -> dict[str, dict[int, int]]:
    """Images per split and label (0 normal, 1 lesion) that :func:`write_phantom_dataset` would write
    with these arguments, without writing anything (to check a plan before the work)."""
    rows = _plan(seed, n_normal, n_lesion, regions, splits)
    counts: dict[str, dict[int, int]] = {split: {0: 0, 1: 0} for split in SPLITS}
    for row in rows:
        counts[row["split"]][int(row["label"] == "tumor")] += 1
    return counts


def write_phantom_dataset(out_dir: str | Path, n_normal: int, n_lesion: int, *, size: tuple[int, int] = (256, 256),
                          seed: int = 0, splits: Sequence[float] = (0.6, 0.2, 0.2),
                          regions: Sequence[str] = REGIONS, fmt: str = "png", bits: int | None = None,
                          photometric: str = "MONOCHROME2", progress: bool = False) -> Path:
    """Generate ``n_normal + n_lesion`` phantom radiographs in the BTXRD folder layout.

    Writes ``out_dir/images/IMGnnnnnn.{png,dcm}``, ``out_dir/masks/IMGnnnnnn.png`` (8-bit, 255 =
    lesion) and ``out_dir/metadata.csv`` with BTXRD's columns (``COLUMNS``): ``label`` tumor/normal,
    ``boxes_xyxy`` as ``x0 y0 x1 y1;...`` (end-exclusive), ``group`` a pseudo-patient of 1-3
    consecutive images and ``split`` train/val/test by group, stratified by label and region.

    Args:
        out_dir: dataset root (created).
        n_normal, n_lesion: number of images without / with lesions.
        size: ``(H, W)`` of every image.
        seed: the whole folder is a function of the arguments (identical bytes on rerun).
        splits: train/val/test fractions of the groups in each label x region stratum.
        regions: regions drawn uniformly per group.
        fmt: ``"png"`` or ``"dcm"``.
        bits: PNG 8 (default) or 16; DICOM BitsStored 12 or 16 (default).
        photometric: DICOM only, ``"MONOCHROME2"`` or ``"MONOCHROME1"``.
        progress: show a tqdm progress bar.

    Returns:
        ``Path(out_dir)``.

    Raises:
        ValueError: a count below 0 or no image at all, a side below :data:`MIN_SIDE`, or a bad
            ``fmt``, ``bits``, ``photometric``, ``splits`` or region; nothing is written then.
    """
    for name, n in (("n_normal", n_normal), ("n_lesion", n_lesion)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"{name} must be a whole number >= 0, got {n!r}")
    if n_normal + n_lesion < 1:
        raise ValueError("n_normal + n_lesion is 0: nothing to write; ask for at least one image")
    if len(size) != 2 or min(int(v) for v in size) < MIN_SIDE:
        raise ValueError(f"size must be (H, W) with both sides >= {MIN_SIDE} px (smaller lesions fall between "
                         f"pixels and lose their boxes), got {tuple(size)}")
    if fmt not in ("png", "dcm"):
        raise ValueError(f"fmt must be 'png' or 'dcm', got {fmt!r}")
    bits = bits or (8 if fmt == "png" else 16)
    if fmt == "png" and bits not in (8, 16):
        raise ValueError(f"PNG bits (--bits) must be 8 or 16, got {bits}")
    if fmt == "dcm" and bits not in (12, 16):
        raise ValueError(f"DICOM bits (BitsStored, --bits) must be 12 or 16, got {bits}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if len(splits) != 3 or min(splits) < 0 or sum(splits) <= 0 or not np.isfinite(sum(splits)):
        raise ValueError(f"splits (--splits) must be three non-negative fractions, not all 0, got {list(splits)}")
    for r in regions:
        if r not in REGIONS:
            raise ValueError(f"unknown region {r!r}; choose from {REGIONS}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows = _plan(seed, n_normal, n_lesion, regions, splits)
    it: Any = enumerate(rows, start=1)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=len(rows), desc=f"phantoms -> {out}", unit="img", disable=None)  # off when not a terminal
    for i, row in it:
        key = f"IMG{i:06d}"
        img_seed = int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0])
        ph = make_phantom(img_seed, size=size, lesion=row["label"] == "tumor", region=row["region"], view=row["view"])
        image_rel = f"images/{key}.{fmt}"
        if fmt == "png":
            write_png(out / image_rel, ph["image"], bits)
        else:
            write_dicom(out / image_rel, ph["image"], bits=bits, photometric=photometric, key=key,
                        region=row["region"], view=row["view"], patient=f"PH{row['group']:06d}", age=row["age"],
                        sex=row["sex"])
        Image.fromarray(ph["mask"] * np.uint8(255)).save(out / "masks" / f"{key}.png", format="PNG", compress_level=1)
        tumor = row["label"] == "tumor"
        row.update(image_id=key, image=image_rel, mask=f"masks/{key}.png", malignancy="benign" if tumor else "",
                   subtype="lytic_phantom" if tumor else "", bone=ph["bone"], center="phantom",
                   boxes_xyxy=";".join(" ".join(map(str, b)) for b in ph["boxes"]),
                   mask_pixels=int(ph["mask"].sum()))
    with open(out / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return out
