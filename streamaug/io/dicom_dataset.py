"""Reading a DICOM's dataset and checking its header before its intensities are touched: the
parse (errors that name the file), the Photometric Interpretation, the pixel array (a missing codec
named with what to install), frame 0 against Rows x Columns, and the header fields the reader keeps
(:func:`dicom_meta`). :mod:`streamaug.io.dicom` turns the array into intensities.
"""
from __future__ import annotations

import io
import re
from typing import Any

import numpy as np

from streamaug.io.errors import MissingCodecError, XRayDecodeError

__all__ = ["CODEC_HINT", "check_photometric", "dicom_meta", "first_line", "frame0", "header_text", "pixel_array",
           "read_dataset"]

#: What to install for compressed transfer syntaxes (JPEG, JPEG-LS, JPEG 2000).
CODEC_HINT = 'pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or pip install "streamaug[dicom-codecs]")'



def dicom_meta(ds: Any, source: str) -> dict:
    """Header fields of a pydicom ``Dataset`` in the reader's ``meta`` layout (no ``size``)."""
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    spacing = tuple(float(v) for v in spacing) if spacing is not None else None
    if spacing is not None and (len(spacing) != 2 or min(spacing) <= 0):
        spacing = None  # e.g. RG1_UNCI.dcm stores [0, 0]: unknown, not zero
    return {
        "source": source,
        "format": "dicom",
        "bits": int(ds.get("BitsStored") or 0) or None,
        "pixel_spacing": spacing,
        "body_part": header_text(ds.get("BodyPartExamined")),
        "view": header_text(ds.get("ViewPosition")),
        "photometric": header_text(ds.get("PhotometricInterpretation")),
        "modality": header_text(ds.get("Modality")),
        "transfer_syntax": str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "")) or None,
    }


def read_dataset(pydicom: Any, data: bytes, source: str) -> Any:
    """``dcmread`` with errors that name ``source``; tolerates a missing 128-byte preamble."""
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        except Exception as err:  # noqa: BLE001 - any parser failure means "not a DICOM"
            raise XRayDecodeError(f"{source}: not a DICOM file ({err}); check the file and its extension") from err
    except Exception as err:  # noqa: BLE001
        raise XRayDecodeError(f"{source}: truncated or corrupt DICOM ({type(err).__name__}: {err}); "
                              "re-export or re-copy the file") from err
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise XRayDecodeError(f"{source}: DICOM has no pixel data (truncated, or not an image object "
                              "such as a structured report); check the file")
    return ds


_PHOTOMETRIC = frozenset({"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "HSV", "ARGB", "CMYK", "YBR_FULL",
                          "YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT"})


def check_photometric(ds: Any, samples: int, source: str) -> str:
    """The header's *Photometric Interpretation* (MONOCHROME2 when absent), checked before decoding.

    Raises:
        XRayDecodeError: a value the DICOM standard does not define (misspelt, lower case, empty),
            or PALETTE COLOR, whose grey levels are indices into a colour table, not intensities.
    """
    value = ds.get("PhotometricInterpretation", "MONOCHROME2")
    text = str(value).strip()
    if text not in _PHOTOMETRIC:
        raise XRayDecodeError(f"{source}: Photometric Interpretation {text!r} is not a DICOM value (expected "
                              "MONOCHROME2 or MONOCHROME1 for a radiograph, exact upper case); fix the header, "
                              "e.g. ds.PhotometricInterpretation = 'MONOCHROME2' with pydicom, or re-export")
    if text == "PALETTE COLOR" and samples == 1:
        raise XRayDecodeError(f"{source}: a PALETTE COLOR image holds colour-table indices, not intensities; "
                              "convert it to a greyscale (MONOCHROME2) DICOM or a PNG first")
    return text


def pixel_array(ds: Any, source: str) -> np.ndarray:
    """``ds.pixel_array`` with a clear error when it fails.

    Raises:
        MissingCodecError: compressed data that no installed plugin can decode: none is installed
            for the transfer syntax, or each one that ran refused the data as a kind it does not
            support (e.g. Pillow and 12-bit JPEG).
        XRayDecodeError: an installed plugin ran and failed on the data: corrupt compressed pixel
            data (or, while other plugins for the syntax are missing, data only they decode: the
            message names both), or uncompressed pixel data that cannot be read.
    """
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        return ds.pixel_array
    except Exception as err:  # noqa: BLE001 - pydicom raises RuntimeError/NotImplementedError/ValueError
        if tsyntax is None or not tsyntax.is_compressed:
            raise XRayDecodeError(f"{source}: cannot read DICOM pixel data ({type(err).__name__}: "
                                  f"{first_line(err)}); the file is truncated or corrupt") from err
        installed, missing = _plugins(tsyntax)
        if not installed or _all_unsupported(err):
            raise MissingCodecError(
                f"{source}: cannot decode compressed pixel data with transfer syntax "
                f"'{tsyntax.name}' ({tsyntax}): no installed pixel-data plugin could decode it. "
                f"Install the codecs: {CODEC_HINT}. (pydicom said: {first_line(err)})"
            ) from err
        tried = f"the installed plugin{'s' if len(installed) > 1 else ''} ({', '.join(installed)})"
        others = (f", or it needs a plugin that is not installed ({', '.join(m.split(' ')[0] for m in missing)}: "
                  f"{CODEC_HINT})" if missing else "")
        raise XRayDecodeError(f"{source}: {tried} failed on the compressed pixel data ('{tsyntax.name}'): "
                              f"{type(err).__name__}: {first_line(err)}. {'Either the' if missing else 'The'} data is "
                              f"corrupt (re-export or re-copy the file){others}") from err


#: What a plugin says when it cannot handle a kind of data (not damage): "Pillow does not support
#: 'JPEG Extended' for samples with 12-bit precision", "Pillow cannot decode 12-bit multi-sample data"
_UNSUPPORTED = re.compile(r"not support|unsupported|cannot decode \d+-bit|are supported|"
                          r"precision less than|precision of", re.I)


def _plugins(tsyntax: Any) -> tuple[list[str], list[str]]:
    """``(installed, missing)`` pixel-data plugins of pydicom for ``tsyntax`` (both empty on pydicom 2
    or a syntax without a decoder)."""
    try:
        from pydicom.pixels import get_decoder  # pydicom >= 3

        decoder = get_decoder(tsyntax)
        return list(decoder.available_plugins), list(decoder.missing_dependencies)
    except Exception:  # noqa: BLE001 - pydicom 2 (ImportError), or no decoder for the syntax
        return [], []


def _all_unsupported(err: BaseException) -> bool:
    """Whether every plugin that ran refused the data as a kind it does not support (not as damage)."""
    text = str(err)
    if "missing dependencies" in text or "missing required dependencies" in text:
        return True
    _, sep, tail = text.partition("raised by all available plugins:")
    failures = [line.strip() for line in tail.splitlines() if line.strip()]
    return bool(sep and failures) and all(_UNSUPPORTED.search(line) for line in failures)


def frame0(arr: np.ndarray, size: tuple[int, int], frames: int, samples: int, source: str) -> np.ndarray:
    """Frame 0 of ``ds.pixel_array``, ``(H, W)`` or ``(H, W, 3)``, once its shape matches the header.

    Raises:
        XRayDecodeError: a shape other than the header's (e.g. pydicom reads the excess data of a
            1 x 1 image as frames) or a Samples per Pixel other than 1 or 3.
    """
    if samples not in (1, 3):
        raise XRayDecodeError(f"{source}: Samples per Pixel {samples} is not supported (1 gray or 3 colour); "
                              "convert the image to MONOCHROME2 or RGB")
    want = ((frames,) if frames > 1 else ()) + size + ((3,) if samples == 3 else ())
    if arr.shape != want:
        raise XRayDecodeError(f"{source}: pixel data decodes to shape {arr.shape} but the header (Rows, Columns, "
                              f"Number of Frames, Samples per Pixel) says {want}; the header or the pixel data "
                              "is corrupt: re-export the file")
    return arr[0] if frames > 1 else arr


def header_text(value: Any) -> str | None:
    """A header value as stripped text, or None when absent or empty."""
    text = str(value).strip() if value is not None else ""
    return text or None


def first_line(err: BaseException) -> str:
    """An error's message on one line, at most 400 characters (for messages that quote pydicom)."""
    return " ".join(str(err).split())[:400]
