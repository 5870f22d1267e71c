"""Decode one X-ray (PNG, JPEG, TIFF, DICOM) into a ``(1, H, W)`` float32 tensor in ``[0, 1]``.

Two entry points:

* :func:`decode_xray` takes raw bytes plus the extension they were stored under. The shard stream
  calls it on every tar member (``ext`` is the member suffix, e.g. ``"png"`` or ``"dcm"``).
* :func:`read_xray` takes a path (or bytes) and calls :func:`decode_xray`.

Intensity conventions (every format ends the same way: float32, ``[0, 1]``, bone bright):

* 8-bit images are divided by 255, 16-bit grayscale PNG/TIFF by 65535 (full precision is kept:
  the PNG specification requires encoders to scale samples to the full bit depth, so the ``sBIT``
  chunk does not change the divisor). 32-bit integer images (Pillow mode ``"I"``) are divided by
  65535 when their values fit in 16 bits, else by ``2**31 - 1``; float images must already lie in
  ``[0, 1]`` and are clipped.
* Colour images become gray with the ITU-R 601 luma weights ``0.299 R + 0.587 G + 0.114 B``,
  computed in float32 channel by channel (no rounding to 8 bits, no float64 copy); alpha is dropped.
* DICOM goes through :mod:`streamaug.io.dicom` (modality LUT, VOI LUT / window, MONOCHROME1
  inversion); see :func:`streamaug.io.dicom.decode_dicom` for its normalisation.

Size: images with more than ``max_pixels`` pixels (default :data:`MAX_PIXELS`, 50 megapixels) are
refused from their header, before any pixel is decoded (a 187 KB PNG can hold 8000 x 8000 pixels).

Errors: anything that cannot be decoded raises :class:`XRayDecodeError` (a ``ValueError``) whose
message names the file (or ``source``) and what to do about it: too many pixels (also Pillow's own
decompression-bomb limit), and any NaN or infinite value in the result (a decoded image is always
finite).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamaug.io.dicom import decode_dicom
from streamaug.io.errors import MissingCodecError, XRayDecodeError
from streamaug.io.pixels import MAX_PIXELS, check_pixel_count, rgb_to_gray, to_image

__all__ = ["XRayDecodeError", "MissingCodecError", "MAX_PIXELS", "decode_xray", "read_xray", "normalize_ext",
           "sniff_ext"]

#: Extensions decoded as DICOM (compared after lower-casing, without the dot).
DICOM_EXTS = frozenset({"dcm", "dicom", "dic"})
#: Extensions handed to Pillow.
PILLOW_EXTS = frozenset({"png", "jpg", "jpeg", "tif", "tiff", "bmp", "pgm", "ppm", "webp", "jp2"})


def normalize_ext(ext: str | None) -> str:
    """Lower-case an extension and drop dots and compound prefixes.

    >>> [normalize_ext(e) for e in (".PNG", "png", "mask.png", None)]
    ['png', 'png', 'png', '']
    """
    if not ext:
        return ""
    return str(ext).lower().rsplit(".", 1)[-1]


def sniff_ext(data: bytes) -> str:
    """Guess an extension from magic bytes: ``"dcm"``, ``"png"``, ``"jpg"``, ``"tif"`` or ``""``."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dcm"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tif"
    return ""


def decode_xray(data: bytes, ext: str | None, *, source: str = "<bytes>",
                max_pixels: int | None = MAX_PIXELS) -> tuple[torch.Tensor, dict]:
    """Decode encoded image bytes into a normalised single-channel tensor.

    Args:
        data: the encoded file exactly as stored (PNG/JPEG/TIFF/DICOM bytes).
        ext: the extension the bytes were stored under (``"png"``, ``".dcm"``, ``"mask.png"``);
            ``None`` or an unknown extension falls back to sniffing the magic bytes.
        source: a name for the bytes (file path or ``shard.tar:key``) used in ``meta`` and errors.
        max_pixels: refuse images with more pixels than this (height x width, times the frames of
            a multi-frame DICOM), checked from the header before decoding; ``None``: no limit
            (Pillow's ``PIL.Image.MAX_IMAGE_PIXELS`` still applies to PNG/JPEG).

    Returns:
        ``(image, meta)``: ``image`` is a float32 tensor of shape ``(1, H, W)`` in ``[0, 1]``, bone
        bright. ``meta`` has ``source``, ``format`` (``"png"``, ``"jpeg"``, ``"dicom"``, ...),
        ``size`` ``(H, W)``, ``bits`` (bits per sample of the stored data), ``pixel_spacing``
        (``(row, col)`` mm or ``None``), ``body_part``, ``view``, ``photometric`` and ``modality``
        (``None`` where the format has no such field).

    Raises:
        XRayDecodeError: truncated, corrupt or unsupported data, more than ``max_pixels`` pixels,
            or a result with NaN/inf values (``MissingCodecError`` for a compressed DICOM without
            a pixel-data plugin).
        ValueError: ``max_pixels`` is neither ``None`` nor a positive integer.

    Examples:
        >>> import io, numpy as np
        >>> from PIL import Image
        >>> buf = io.BytesIO(); Image.fromarray(np.full((4, 6), 255, np.uint8)).save(buf, "PNG")
        >>> img, meta = decode_xray(buf.getvalue(), "png")
        >>> tuple(img.shape), float(img.max()), meta["size"], meta["bits"]
        ((1, 4, 6), 1.0, (4, 6), 8)
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise XRayDecodeError(f"{source}: expected encoded bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise XRayDecodeError(f"{source}: empty file (0 bytes); re-export or re-copy the image")
    check_pixel_count(0, 0, max_pixels, source)  # a bad max_pixels is a ValueError, not a decode error
    kind = normalize_ext(ext)
    if kind not in DICOM_EXTS and kind not in PILLOW_EXTS:
        kind = sniff_ext(data) or kind
    if kind in DICOM_EXTS:  # pydicom itself is imported lazily, on the first DICOM
        return decode_dicom(data, source=source, max_pixels=max_pixels)
    if kind in PILLOW_EXTS:
        return _decode_pillow(data, source=source, ext=kind, max_pixels=max_pixels)
    raise XRayDecodeError(
        f"{source}: unsupported image type (extension {ext!r}, unrecognised magic bytes); "
        f"expected one of {sorted(PILLOW_EXTS | DICOM_EXTS)}"
    )


def read_xray(src: str | os.PathLike | bytes, *, ext: str | None = None,
              max_pixels: int | None = MAX_PIXELS) -> tuple[torch.Tensor, dict]:
    """Read an X-ray from a file path (or bytes) into a ``(1, H, W)`` float32 tensor in ``[0, 1]``.

    Args:
        src: a path to the file, or its bytes.
        ext: overrides the extension (default: the path's suffix, else sniffed from the bytes).
        max_pixels: the size limit of :func:`decode_xray`.

    Returns:
        ``(image, meta)`` as in :func:`decode_xray`; ``meta["source"]`` is the path.

    Raises:
        XRayDecodeError: the file is missing, unreadable or cannot be decoded.
    """
    if isinstance(src, (bytes, bytearray, memoryview)):
        return decode_xray(bytes(src), ext, max_pixels=max_pixels)
    path = Path(src)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise XRayDecodeError(f"{path}: cannot read file ({err.strerror or err}); check the path") from err
    return decode_xray(data, ext if ext is not None else path.suffix, source=str(path), max_pixels=max_pixels)


def _decode_pillow(data: bytes, *, source: str, ext: str, max_pixels: int | None) -> tuple[torch.Tensor, dict]:
    """Decode PNG/JPEG/TIFF bytes with Pillow; see the module docstring for the scaling rules."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            check_pixel_count(im.height, im.width, max_pixels, source)
            im.load()
            fmt = (im.format or ext).lower()
            arr, bits, photometric = _pillow_to_gray(im, source)
    except Image.DecompressionBombError as err:  # raised by open() past 2x PIL.Image.MAX_IMAGE_PIXELS
        raise XRayDecodeError(f"{source}: too large to decode ({err}); downscale the image, or raise "
                              "PIL.Image.MAX_IMAGE_PIXELS and max_pixels if the file is trusted") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        if isinstance(err, XRayDecodeError):
            raise
        raise XRayDecodeError(
            f"{source}: cannot decode as {ext.upper()} ({err}); the file is truncated or not a "
            f"{ext.upper()}: re-export it or check its extension"
        ) from err
    image = to_image(arr, source)
    meta: dict[str, Any] = {
        "source": source,
        "format": "jpeg" if fmt in ("jpg", "jpeg", "mpo") else fmt,
        "size": (int(image.shape[1]), int(image.shape[2])),
        "bits": bits,
        "pixel_spacing": None,  # PNG/JPEG resolution tags are display DPI, not detector spacing
        "body_part": None,
        "view": None,
        "photometric": photometric,
        "modality": None,
    }
    return image, meta


def _pillow_to_gray(im: Any, source: str) -> tuple[np.ndarray, int, str]:
    """``(array in [0, 1] of shape (H, W) float64-or-32, bits, photometric)`` from a PIL image."""
    mode = im.mode
    if mode in ("1", "L", "P", "LA", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        if mode == "1":
            return np.asarray(im, dtype=np.float32), 1, "MONOCHROME2"
        if mode in ("L", "LA"):
            return np.asarray(im.getchannel(0), dtype=np.float32) / 255.0, 8, "MONOCHROME2"
        return rgb_to_gray(np.asarray(im.convert("RGB")), 255), 8, "RGB"
    if mode.startswith("I;16"):
        return np.asarray(im, dtype=np.float64) / 65535.0, 16, "MONOCHROME2"
    if mode == "I":
        arr = np.asarray(im, dtype=np.int64)
        if arr.min(initial=0) < 0:
            raise XRayDecodeError(f"{source}: signed 32-bit image with negative values; store it as "
                                  "unsigned 8/16-bit PNG or as DICOM with a rescale")
        if arr.max(initial=0) <= 65535:
            return arr / 65535.0, 16, "MONOCHROME2"
        return arr / float(2**31 - 1), 32, "MONOCHROME2"
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise XRayDecodeError(f"{source}: float image contains NaN/inf; fix or re-export it")
        return np.clip(arr, 0.0, 1.0), 32, "MONOCHROME2"
    raise XRayDecodeError(f"{source}: unsupported Pillow image mode {mode!r}; convert it to "
                          "8/16-bit grayscale PNG")
