"""Pixel-level rules every X-ray decoder shares: the size limit, colour to gray, the finite check.

:mod:`streamaug.io.readers` (Pillow) and :mod:`streamaug.io.dicom` (pydicom) both end here, so a
PNG and a DICOM are refused, converted and checked the same way.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from streamaug.io.errors import XRayDecodeError

__all__ = ["MAX_PIXELS", "check_pixel_count", "rgb_to_gray", "to_image"]

#: Default ``max_pixels`` of the readers: 50 megapixels (200 MB as float32). Large enough for any
#: radiograph (a 43 x 43 cm detector at 100 um is 18.5 Mpx, a mammogram about 30 Mpx), small
#: enough to refuse an 8000 x 8000 image (64 Mpx) whose tiny PNG would take gigabytes to decode.
MAX_PIXELS = 50_000_000
#: ITU-R BT.601 luma weights (R, G, B).
_LUMA = (0.299, 0.587, 0.114)


def check_pixel_count(height: int, width: int, max_pixels: int | None, source: str, *, frames: int = 1) -> None:
    """Refuse an image larger than ``max_pixels`` from its header, before decoding any pixel.

    Args:
        height, width: the image size the header declares.
        max_pixels: the limit on ``height * width * frames``; ``None``: no limit.
        source: the file's name, for the message.
        frames: frames that will be decoded (pydicom decodes every frame of a DICOM).

    Raises:
        XRayDecodeError: the image is too large, naming the file and how to raise the limit.
        ValueError: ``max_pixels`` is neither ``None`` nor a positive integer.
    """
    if max_pixels is None:
        return
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")
    count = int(height) * int(width) * max(int(frames), 1)
    if count > max_pixels:
        what = f"{height} x {width}" + (f" x {frames} frames" if frames > 1 else "")
        raise XRayDecodeError(f"{source}: image is {what} = {count:,} pixels, more than max_pixels={max_pixels:,}; "
                              "downscale it, or pass a larger max_pixels (None: no limit) if the file is trusted")


def rgb_to_gray(rgb: np.ndarray, max_value: float) -> np.ndarray:
    """ITU-R 601 luma ``(0.299 R + 0.587 G + 0.114 B) / max_value`` in float32, clipped to ``[0, 1]``.

    Works channel by channel, so the only float array is the ``(H, W)`` result plus one temporary
    of that size (no ``(H, W, 3)`` float copy).

    Args:
        rgb: ``(H, W, 3)`` samples (any numeric dtype).
        max_value: the value of full intensity (``255`` for 8 bits, ``2**bits - 1``).

    Returns:
        ``(H, W)`` float32.

    Examples:
        >>> [round(float(v), 3) for v in rgb_to_gray(np.array([[[255, 255, 255], [255, 0, 0]]], np.uint8), 255)[0]]
        [1.0, 0.299]
    """
    out = np.empty(rgb.shape[:2], dtype=np.float32)
    tmp = np.empty_like(out)
    for c, weight in enumerate(_LUMA):
        np.multiply(rgb[..., c], np.float32(weight / max_value), out=tmp if c else out, dtype=np.float32)
        if c:
            out += tmp
    return np.clip(out, 0.0, 1.0, out=out)


def to_image(out: np.ndarray, source: str) -> torch.Tensor:
    """The ``(1, H, W)`` float32 tensor of a finished ``(H, W)`` image, after a last finite check.

    Raises:
        XRayDecodeError: the image holds NaN or infinite values (a decoded image is never NaN).
    """
    arr = np.ascontiguousarray(out, dtype=np.float32)
    # a float64 sum is finite exactly when every value is: a NaN/inf propagates, and no sum of
    # float32 values of a decodable size can overflow float64. One pass, no mask allocated.
    if not math.isfinite(float(arr.sum(dtype=np.float64))):
        raise XRayDecodeError(f"{source}: decoding gave {int((~np.isfinite(arr)).sum())} NaN or infinite pixels "
                              "(corrupt pixel data or header values); fix or re-export the file")
    return torch.from_numpy(arr).unsqueeze(0)
