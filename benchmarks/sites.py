"""Site proposal per image vs PNG decode per image, at 256x256 and 2048x2048.

Usage: ``python benchmarks/sites.py [--reps 50] [--data ../shared/data]``

256x256: real BTXRD normal radiographs when ``--data`` has them, else generated images.
2048x2048: generated X-ray-like images (bright bone shapes on a dark background, noise), 8-bit PNG.
The bank is BTXRD's train-split tumour boxes (else random boxes), matched by region/view and
scaled to each image size. Decoding uses ``streamaug.io.readers.decode_xray`` when present, else
PIL -> float32 ``[0, 1]`` tensor (what a reader returns). One thread, kernels warmed up first.
Columns: ``sites normal`` is the whole proposer on a normal image (it sums the crops directly when
their total area is below ``H x W``, else builds an integral image); ``(direct)`` is the direct crop
sums alone on that image's candidate crops; ``(integral)`` is the integral image alone into a reused
buffer (the other path); ``(new buf)`` allocates a fresh table per call; ``area/img`` is the mean
total candidate-crop area over ``H x W`` (below 1: the direct path is taken).
"""
from __future__ import annotations

import argparse
import csv
import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from streamaug.sites import LesionBoxBank, SiteProposer, crop_means, integral_image

_DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _decoder() -> tuple[str, Callable[[bytes], torch.Tensor]]:
    try:
        from streamaug.io.readers import decode_xray

        return "streamaug decode_xray", lambda data: decode_xray(data, "png")[0]
    except Exception:  # the reader module may not exist yet
        def pil(data: bytes) -> torch.Tensor:
            arr = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32) / 255.0
            return torch.from_numpy(arr)[None]

        return "PIL -> float32", pil


def _fake_xray(size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 image: dark background, a few bright elongated 'bones', noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.full((size, size), 0.06, np.float32)
    for _ in range(3):
        cx, cy, ang = rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.8), rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
        v = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
        img = np.maximum(img, 0.75 * np.exp(-((u / 0.45) ** 2 + (v / 0.06) ** 2) ** 2))
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _load(
    data: Path, size: int, count: int, rng: np.random.Generator
) -> tuple[str, list[tuple[bytes, dict]]]:
    meta_csv = data / "btxrd" / "metadata.csv"
    if size == 256 and meta_csv.exists():
        with open(meta_csv, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["label"] == "normal"][:count]
        return "btxrd", [((data / "btxrd" / r["image"]).read_bytes(),
                          {"region": r["region"], "view": r["view"]}) for r in rows]
    meta = {"region": "lower_limb", "view": "frontal"}
    return "generated", [(_png(_fake_xray(size, rng)), meta) for _ in range(count)]


def _bank(data: Path, rng: np.random.Generator) -> tuple[str, LesionBoxBank]:
    meta_csv = data / "btxrd" / "metadata.csv"
    if meta_csv.exists():
        with open(meta_csv, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["label"] == "tumor" and r["split"] == "train"]
        return "btxrd train tumours", LesionBoxBank.from_records(
            {**r, "key": r["image_id"], "width": 256, "height": 256} for r in rows)
    recs = []
    for i in range(500):
        x0, y0 = rng.integers(0, 200, 2)
        w, h = rng.integers(10, 56, 2)
        recs.append({"key": str(i), "region": "lower_limb", "view": "frontal", "width": 256, "height": 256,
                     "boxes": [[x0, y0, x0 + w, y0 + h]]})
    return "random boxes", LesionBoxBank.from_records(recs)


def _time_ms(fn: Callable[[int], object], reps: int, count: int) -> float:
    """Median over ``reps`` passes of the mean time per image (ms)."""
    per_pass = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for i in range(count):
            fn(i)
        per_pass.append((time.perf_counter() - t0) / count * 1e3)
    return statistics.median(per_pass)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--count", type=int, default=8, help="distinct images per size")
    ap.add_argument("--data", type=Path, default=_DEFAULT_DATA)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    decoder_name, decode = _decoder()
    bank_name, bank = _bank(args.data, rng)
    proposer = SiteProposer(bank, s=1.0, n=7)
    lesion_boxes = torch.tensor([[0.30, 0.40, 0.45, 0.55], [0.6, 0.2, 0.7, 0.26]])  # relative, scaled below
    print(f"decoder: {decoder_name}; bank: {bank_name} ({len(bank)} records); SiteProposer(s=1, n=7, "
          f"min_intensity=0.15); torch threads 1; median of {args.reps} passes over {args.count} images")
    header = (f"{'size':>11} {'source':>9} | {'PNG decode':>10} | {'sites normal':>12} {'(direct)':>9} "
              f"{'(integral)':>10} {'(new buf)':>9} | {'area/img':>8} | {'sites lesion':>12} | "
              f"{'normal/decode':>13} | {'sites/img':>9}")
    print(header)
    print("-" * len(header))
    for size in (256, 2048):
        source, items = _load(args.data, size, args.count, rng)
        images = [decode(data) for data, _ in items]
        samples = [{"key": f"img{i}", "image": img, "label": 0, "boxes": torch.zeros(0, 4), "meta": meta}
                   for i, (img, (_, meta)) in enumerate(zip(images, items))]
        lesions = [{**s, "label": 1, "boxes": lesion_boxes * size} for s in samples]
        proposer(samples[0])  # warm up the kernels (compile or cache load)
        arrays = [s["image"][0].numpy() for s in samples]
        cands = [proposer.candidates(size, size, s["meta"], s["key"]) for s in samples]
        area = float(np.mean([((c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])).sum() / size**2 for c in cands]))
        t_direct = _time_ms(lambda i: crop_means(arrays[i], cands[i]), args.reps, args.count)
        t_decode = _time_ms(lambda i: decode(items[i][0]), args.reps, args.count)
        t_normal = _time_ms(lambda i: proposer(samples[i]), args.reps, args.count)
        buf = np.empty((size + 1, size + 1))
        t_integral = _time_ms(lambda i: integral_image(arrays[i], buf), args.reps, args.count)
        t_fresh = _time_ms(lambda i: integral_image(arrays[i]), args.reps, args.count)
        t_lesion = _time_ms(lambda i: proposer(lesions[i]), args.reps, args.count)
        n_sites = np.mean([len(proposer(s)["sites"]) for s in samples])
        print(f"{size:>5}x{size:<5} {source:>9} | {t_decode:>7.3f} ms | {t_normal:>9.3f} ms "
              f"{t_direct:>6.3f} ms {t_integral:>7.3f} ms {t_fresh:>6.2f} ms | {area:>8.3f} | "
              f"{t_lesion:>9.3f} ms | {t_normal / t_decode:>13.3f} | {n_sites:>9.1f}")


if __name__ == "__main__":
    main()
