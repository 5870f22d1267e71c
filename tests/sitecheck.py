"""Helpers shared by the site tests: a sample dict, crop geometry checks, brute-force means."""
from __future__ import annotations

import numpy as np
import torch


def _sample(key, image, label=0, boxes=None, **meta):
    img = torch.as_tensor(image, dtype=torch.float32)
    if img.ndim == 2:
        img = img[None]
    b = torch.zeros(0, 4) if boxes is None else torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {"key": key, "image": img, "label": label, "boxes": b, "meta": dict(meta)}


def _check_geometry(crops, height, width):
    """Every crop is a non-empty square inside the image."""
    crops = np.asarray(crops)
    assert crops.dtype == np.int64 and crops.ndim == 2 and crops.shape[1] == 4
    side_x, side_y = crops[:, 2] - crops[:, 0], crops[:, 3] - crops[:, 1]
    np.testing.assert_array_equal(side_x, side_y)
    assert (side_x >= 1).all()
    assert (crops[:, :2] >= 0).all()
    assert (crops[:, 2] <= width).all() and (crops[:, 3] <= height).all()


def _brute_means(img, crops):
    return np.array([img[y0:y1, x0:x1].astype(np.float64).mean() for x0, y0, x1, y1 in crops])
