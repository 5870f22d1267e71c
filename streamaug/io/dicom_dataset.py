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
        MissingCodecError: compressed data that no installed plugin can decode (none installed for
            the transfer syntax, or each one available refused it as unsupported, e.g. Pillow and
            12-bit JPEG).
        XRayDecodeError: a plugin ran and failed on the data (corrupt compressed pixel data), or
            uncompressed pixel data that cannot be read.
    """
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        return ds.pixel_array
    except Exception as err:  # noqa: BLE001 - pydicom raises RuntimeError/NotImplementedError/ValueError
        if tsyntax is not None and tsyntax.is_compressed and _codec_missing(tsyntax, err):
            raise MissingCodecError(
                f"{source}: cannot decode compressed pixel data with transfer syntax "
                f"'{tsyntax.name}' ({tsyntax}): no installed pixel-data plugin could decode it. "
                f"Install the codecs: {CODEC_HINT}. (pydicom said: {first_line(err)})"
            ) from err
        if tsyntax is not None and tsyntax.is_compressed:
            raise XRayDecodeError(f"{source}: the compressed pixel data ('{tsyntax.name}') is corrupt: the installed "
                                  f"plugin failed to decode it ({type(err).__name__}: {first_line(err)}); re-export "
                                  "or re-copy the file") from err
        raise XRayDecodeError(f"{source}: cannot read DICOM pixel data ({type(err).__name__}: "
                              f"{first_line(err)}); the file is truncated or corrupt") from err


#: What a plugin says when it cannot handle a kind of data (not damage): "Pillow does not support
#: 'JPEG Extended' for samples with 12-bit precision", "Pillow cannot decode 12-bit multi-sample data"
_UNSUPPORTED = re.compile(r"not support|unsupported|cannot decode \d+-bit|are supported|"
                          r"precision less than|precision of", re.I)


def _codec_missing(tsyntax: Any, err: BaseException) -> bool:
    """Whether pydicom failed for want of a usable plugin (rather than on corrupt data): none is
    installed, or each plugin that ran refused the data as a kind it does not support."""
    text = str(err)
    if "missing dependencies" in text or "missing required dependencies" in text:
        return True
    head, sep, tail = text.partition("raised by all available plugins:")
    if sep:  # pydicom 3: one "name: message" line per plugin that ran
        failures = [line.strip() for line in tail.splitlines() if line.strip()]
        return bool(failures) and all(_UNSUPPORTED.search(line) for line in failures)
    try:
        from pydicom.pixels import get_decoder  # pydicom >= 3
    except ImportError:
        return True  # pydicom 2 cannot tell which plugin ran: as before, name the codecs
    try:
        return not get_decoder(tsyntax).is_available
    except Exception:  # noqa: BLE001 - a transfer syntax pydicom has no decoder for
        return True


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
