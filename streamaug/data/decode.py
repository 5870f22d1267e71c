"""The decode stage: a raw WebDataset sample (``{"__key__", "__url__", "png"|"dcm"|..., "json",
"mask.png"}``) -> a sample dict, and resizing one. Both work as ``wds.map`` stages in a user's own
WebDataset pipeline (README); :class:`streamaug.XRayShards` runs them in its readers.
"""
from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from streamaug.io.errors import SampleError
from streamaug.io.labels import to_int_label

IMAGE_EXTS = ("png", "jpg", "jpeg", "dcm", "dicom", "tif", "tiff")


def decode_sample(raw: dict[str, Any], label_fn: Callable[[Any], int] = to_int_label) -> dict[str, Any]:
    """Raw tar sample -> sample dict (see docs/ARCHITECTURE.md): ``key``, ``image`` (1, H, W),
    ``label``, ``boxes`` (k, 4), ``meta`` and ``mask`` when present."""
    from streamaug.io.readers import decode_xray

    key, url = raw["__key__"], raw["__url__"]
    ext = next((e for e in IMAGE_EXTS if e in raw), None)
    if ext is None:
        raise SampleError(f"sample {key!r} in {url} has no image (found {sorted(k for k in raw if k[0] != '_')}; "
                          f"expected one of {IMAGE_EXTS})")
    image, reader_meta = decode_xray(raw[ext], ext, source=f"{url}:{key}.{ext}")
    meta = json.loads(raw["json"]) if "json" in raw else {}
    meta.update({"reader": reader_meta, "shard": url})
    boxes = torch.as_tensor(meta.get("boxes") or [], dtype=torch.float32).reshape(-1, 4)
    sample = {"key": key, "image": image, "label": label_fn(meta.get("label")), "boxes": boxes, "meta": meta}
    if "mask.png" in raw:
        from PIL import Image

        grey = np.asarray(Image.open(io.BytesIO(raw["mask.png"])).convert("L"))
        mask = grey > grey.max() / 2  # above half its maximum: 0/255, 0/1 and 0/76 (red on black) masks alike
        # numpy, not Tensor.to: a small torch op runs on the intra-op thread pool, which on a busy
        # machine cost ~100x the conversion itself (15 ms vs 0.16 ms per 256 px mask, 2 threads)
        sample["mask"] = torch.from_numpy(mask.astype(np.float32))[None]
    return sample


def resize_sample(sample: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    """Resize ``image`` (area/bilinear, antialiased) and ``mask`` (nearest) to ``size = (H, W)``
    and scale ``boxes`` to match; ``meta["reader"]`` gets the new ``size`` and ``pixel_spacing``
    (mm per pixel, so it grows as the image shrinks) and keeps the decoded size in ``resized_from``."""
    _, h, w = sample["image"].shape
    if (h, w) == tuple(size):
        return sample
    reader = sample.get("meta", {}).get("reader")
    if isinstance(reader, dict):
        reader.setdefault("resized_from", (h, w))
        reader["size"] = (int(size[0]), int(size[1]))
        spacing = reader.get("pixel_spacing")
        if spacing is not None:
            reader["pixel_spacing"] = (float(spacing[0]) * h / size[0], float(spacing[1]) * w / size[1])
    sample["image"] = torch.nn.functional.interpolate(
        sample["image"][None], size=size, mode="bilinear", antialias=True, align_corners=False)[0].clamp_(0, 1)
    if "mask" in sample:
        # nearest-exact samples pixel centres, as the image's align_corners=False does ("nearest" took each
        # block's top-left corner: the mask sat up to half an output pixel right of and below the image)
        sample["mask"] = torch.nn.functional.interpolate(sample["mask"][None], size=size, mode="nearest-exact")[0]
    scale = torch.tensor([size[1] / w, size[0] / h, size[1] / w, size[0] / h])
    sample["boxes"] = sample["boxes"] * scale
    return sample
