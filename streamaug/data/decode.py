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


def above_half_max(values: np.ndarray) -> np.ndarray:
    """The one mask rule of the stream and the packer (:mod:`streamaug.cli.pack_mask`): a value is
    foreground when above half the mask's largest value, so 0/255, 0/1, 0/2 and 0/76 (red on black)
    masks all read their nonzero part, a label map (0/1/2) its top label, and an all-zero mask nothing.

    >>> above_half_max(np.array([[0, 2], [2, 0]], np.uint8)).tolist()
    [[False, True], [True, False]]
    >>> above_half_max(np.array([0, 1, 2])).tolist(), above_half_max(np.zeros(2)).tolist()
    ([False, False, True], [False, False])
    """
    top = values.max() if values.size else 0
    return values > top / 2


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
    height, width = image.shape[-2:]
    meta = json.loads(raw["json"]) if "json" in raw else {}
    meta.update({"reader": reader_meta, "shard": url})
    boxes = _checked_boxes(meta.get("boxes"), height, width, f"sample {key!r} in {url}")
    sample = {"key": key, "image": image, "label": label_fn(meta.get("label")), "boxes": boxes, "meta": meta}
    if "mask.png" in raw:
        from PIL import Image

        with Image.open(io.BytesIO(raw["mask.png"])) as im:  # the size from the header, before decoding
            if (im.height, im.width) != (height, width):
                raise SampleError(f"sample {key!r} in {url}: its mask is {im.height}x{im.width} (HxW), its image "
                                  f"{height}x{width}: a mask of another image, or resized on its own. Re-pack the "
                                  "sample with the mask at the image's size")
            grey = np.asarray(im.convert("L"))
        mask = above_half_max(grey)
        # numpy, not Tensor.to: a small torch op runs on the intra-op thread pool, which on a busy
        # machine cost ~100x the conversion itself (15 ms vs 0.16 ms per 256 px mask, 2 threads)
        sample["mask"] = torch.from_numpy(mask.astype(np.float32))[None]
    return sample


def box_array(value: Any, height: int, width: int) -> tuple[np.ndarray, str | None]:
    """``(boxes as a (k, 4) float64 array, None)`` for a sample's ``boxes`` metadata, or ``(empty, why
    not)``: boxes must be ``[[x0, y0, x1, y1], ...]`` numbers that pass the packer's rule
    (:func:`streamaug.sites.boxes.box_problem`: finite, ``x0 < x1``, ``y0 < y1``, inside the image,
    its border included). ``None`` or ``[]``: no box. Used by the stream and the zarr source.

    >>> box_array([[1, 1, 4, 4]], 8, 8)[0].tolist(), box_array([[1, 2, 3]], 8, 8)[1]
    ([[1.0, 1.0, 4.0, 4.0]], 'they have shape (1, 3), not (k, 4) [x0, y0, x1, y1] lists')
    """
    empty = np.zeros((0, 4), dtype=np.float64)
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return empty, None
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        return empty, f"they are not numbers ({err})"
    if arr.shape != (4,) and (arr.ndim != 2 or arr.shape[1] != 4):
        return empty, f"they have shape {arr.shape}, not (k, 4) [x0, y0, x1, y1] lists"
    from streamaug.sites.boxes import box_problem

    problem = box_problem(arr, height, width)
    return (empty, problem) if problem else (arr.reshape(-1, 4), None)


def _checked_boxes(value: Any, height: int, width: int, where: str) -> torch.Tensor:
    """``(k, 4)`` float32 boxes of a sample's JSON (:func:`box_array`).

    Raises:
        SampleError: boxes that are not ``[[x0, y0, x1, y1], ...]`` numbers, or that break the rule.
    """
    arr, problem = box_array(value, height, width)
    if problem is not None:
        raise SampleError(f"{where}: its JSON 'boxes' {str(value)[:120]} are unusable: {problem}. Fix the boxes "
                          "(x0 y0 x1 y1, end-exclusive pixels of the image) and re-pack the sample")
    return torch.from_numpy(arr.astype(np.float32))


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
