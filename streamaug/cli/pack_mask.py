"""The packer's masks: any mask file Pillow reads -> the binary 8-bit PNG the stream reads.

The stream reads a sample's mask only from its ``mask.png`` member, as its grey level above half
its maximum (:func:`streamaug.data.decode.decode_sample`), so a JPEG/TIFF mask packed as given would
not be read at all, and a colour mask by its luma only. :func:`binary_mask_png` stores every mask as
0/255 mode ``L`` PNG bytes, by this rule:

* the colour channels are compared (alpha is dropped; a palette image is read as its RGB colours;
  a 1-bit image as 0/1), with their values as stored (16-bit values are not scaled);
* a pixel is foreground if any channel is above half the largest value of the whole mask: the
  stream's own rule (:func:`streamaug.data.decode.above_half_max`, one function for both), so
  0/255, 0/1, 0/2 and 0/76 masks all keep their nonzero part, and a label map (0/1/2) its top label.

A PNG already in mode ``L`` holding only 0 and 255 keeps its bytes exactly, so a pack of such
masks is byte-identical to one made before this rule. A mask that is not blank but has no
foreground by this rule (marks only in its alpha channel or palette indices) is reported by
:func:`binary_mask_png`, for the packer to warn about.
"""
from __future__ import annotations

import io

import numpy as np

from streamaug.data.decode import above_half_max

__all__ = ["MaskError", "binary_mask_png", "mask_foreground"]


class MaskError(ValueError):
    """A mask file that cannot be read, or whose size is not the image's."""


def mask_foreground(im) -> np.ndarray:
    """``(H, W)`` bool foreground of a loaded PIL image, by the rule in the module docstring.

    >>> from PIL import Image
    >>> mask_foreground(Image.fromarray(np.array([[0, 1]], np.uint8))).tolist()
    [[False, True]]
    >>> mask_foreground(Image.fromarray(np.array([[0, 1, 200]], np.uint8))).tolist()
    [[False, False, True]]
    >>> mask_foreground(Image.fromarray(np.array([[0, 2, 76]], np.uint8))).tolist()
    [[False, False, True]]
    """
    if im.mode == "1":
        return np.asarray(im, dtype=bool)
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        im = im.convert("RGB")
    arr = np.asarray(im)
    if im.mode in ("LA", "La", "RGBA", "RGBa"):
        arr = arr[..., :-1]
    if arr.ndim == 2:
        arr = arr[..., None]
    return above_half_max(arr).any(axis=-1)


def binary_mask_png(data: bytes, *, source: str, size: tuple[int, int]) -> tuple[bytes, int, bool]:
    """The mask in ``data`` as ``(0/255 mode-L PNG bytes, foreground pixel count, emptied)``;
    ``emptied``: the mask is not blank (some channel, alpha or palette index varies) yet has no
    foreground pixel, so what it marks would be lost.

    Args:
        data: the mask file's bytes (any format Pillow reads).
        source: the file, named in messages.
        size: the image's ``(H, W)``; the mask must match it (checked before its pixels are decoded).

    Raises:
        MaskError: the bytes are not an image Pillow reads, or the size differs from ``size``.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            if (im.height, im.width) != tuple(size):
                raise MaskError(f"mask {source} is {(im.height, im.width)}, image is {tuple(size)}")
            im.load()
            if im.format == "PNG" and im.mode == "L":
                counts = np.bincount(np.asarray(im).ravel(), minlength=256)
                if not counts[1:255].any():  # already what the stream reads: keep the bytes
                    return data, int(counts[255]), False
            fg = mask_foreground(im)
            emptied = not fg.any() and _varies(np.asarray(im))
    except MaskError:
        raise
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for one bad file
        raise MaskError(f"mask {source}: cannot decode it as an image ({type(err).__name__}: {err}); re-export "
                        "it as a PNG of the image's size") from err
    out = io.BytesIO()
    Image.fromarray(fg.astype(np.uint8) * 255).save(out, format="PNG")
    return out.getvalue(), int(fg.sum()), emptied


def _varies(arr: np.ndarray) -> bool:
    """Whether some channel of a mask's stored values (alpha and palette indices included) is not constant."""
    flat = arr.reshape(arr.shape[0] * arr.shape[1], -1) if arr.ndim >= 2 else arr.reshape(-1, 1)
    return bool(flat.size) and bool((flat != flat[:1]).any())
