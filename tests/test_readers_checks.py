"""Readers refuse what they cannot decode safely: too many pixels, bad headers, NaN results."""
from __future__ import annotations

import struct
import tracemalloc
import zlib

import numpy as np
import pydicom
import pytest
import torch
from dicomgen import dicom_bytes, raw_dicom
from shardgen import png_bytes

from streamaug.io import dicom as dicom_mod
from streamaug.io import readers
from streamaug.io.pixels import MAX_PIXELS, rgb_to_gray
from streamaug.io.readers import XRayDecodeError, decode_xray, read_xray


def _png_claiming(width: int, height: int) -> bytes:
    """A 4 x 4 RGB PNG whose header claims ``width x height``: decoding its pixels would fail."""
    data = bytearray(png_bytes(np.zeros((4, 4, 3), np.uint8)))
    ihdr = struct.pack(">II", width, height) + bytes([8, 2, 0, 0, 0])  # 8-bit RGB
    data[16:29], data[29:33] = ihdr, struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


# --- size limit -------------------------------------------------------------------------------

def test_large_png_refused_from_its_header_before_decoding():
    # an 8000 x 8000 RGB PNG can be 187 KB; its pixels would take gigabytes
    assert 1000 * 1000 < MAX_PIXELS < 8000 * 8000
    with pytest.raises(XRayDecodeError, match=r"huge\.png: image is 8000 x 8000 = 64,000,000 pixels.*max_pixels"):
        decode_xray(_png_claiming(8000, 8000), "png", source="huge.png")


def test_max_pixels_keyword(tmp_path):
    path = tmp_path / "small.png"
    path.write_bytes(png_bytes(np.zeros((10, 10), np.uint8)))
    assert read_xray(path, max_pixels=100)[0].shape == (1, 10, 10)
    assert decode_xray(path.read_bytes(), "png", max_pixels=None)[0].shape == (1, 10, 10)
    with pytest.raises(XRayDecodeError, match=r"small\.png.*100 pixels, more than max_pixels=99"):
        read_xray(path, max_pixels=99)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="max_pixels must be a positive integer") as info:
            read_xray(path, max_pixels=bad)
        assert not isinstance(info.value, XRayDecodeError)  # a caller's mistake, not a bad file


def test_pillow_decompression_bomb_names_the_file():
    with pytest.raises(XRayDecodeError, match=r"bomb\.png: too large.*MAX_IMAGE_PIXELS"):
        decode_xray(_png_claiming(20000, 20000), "png", source="bomb.png", max_pixels=None)


def test_dicom_refused_from_its_header_before_pixel_data(monkeypatch):
    def boom(self):
        raise AssertionError("pixel data decoded")

    data = dicom_bytes(np.zeros((8, 8), np.uint16))
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(boom))
    with pytest.raises(XRayDecodeError, match=r"big\.dcm: image is 8 x 8 = 64 pixels.*max_pixels=63"):
        decode_xray(data, "dcm", source="big.dcm", max_pixels=63)
    frames = raw_dicom(Rows=4, Columns=4, NumberOfFrames=3, BitsAllocated=8, BitsStored=8, HighBit=7,
                       PixelRepresentation=0, PixelData=bytes(48))
    with pytest.raises(XRayDecodeError, match=r"4 x 4 x 3 frames = 48 pixels"):
        decode_xray(frames, "dcm", max_pixels=47)


# --- colour to gray -----------------------------------------------------------------------------

def test_rgb_png_to_gray_without_float64_copies():
    rgb = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    data = png_bytes(rgb)
    tracemalloc.start()
    try:
        img, _ = decode_xray(data, "png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak / rgb[..., 0].size < 16  # was 36 bytes a pixel through float64
    want = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255
    assert img.dtype == torch.float32 and np.abs(img[0].numpy() - want).max() < 1e-6


def test_rgb_to_gray_scales_and_clips():
    rgb = np.array([[[4095, 4095, 4095], [0, 4095, 0]]], np.uint16)
    gray = rgb_to_gray(rgb, 4095)
    assert gray.dtype == np.float32 and gray[0, 0] == 1.0 and abs(gray[0, 1] - 0.587) < 1e-6


# --- DICOM headers that used to give NaN or a numpy crash ---------------------------------------

def test_one_by_one_dicom_with_excess_data_names_the_file():
    data = raw_dicom(Rows=1, Columns=1, BitsAllocated=8, BitsStored=8, HighBit=7, PixelRepresentation=0,
                     PixelData=bytes(64))  # pydicom reads the excess bytes as 64 frames
    shape = r"one\.dcm: pixel data decodes to shape \(64, 1, 1\).*\(1, 1\)"
    with pytest.warns(UserWarning), pytest.raises(XRayDecodeError, match=shape):
        decode_xray(data, "dcm", source="one.dcm")
    ok = raw_dicom(Rows=1, Columns=1, BitsAllocated=8, BitsStored=8, HighBit=7, PixelRepresentation=0,
                   PixelData=b"\xff\x00")
    assert decode_xray(ok, "dcm")[0].tolist() == [[[1.0]]]


_ARR = np.array([[0, 100], [200, 255]], np.uint16)
_BAD_HEADERS = {
    "nan_slope": (dict(RescaleSlope="NaN", RescaleIntercept=0), "Rescale"),
    "nan_intercept": (dict(RescaleSlope=1, RescaleIntercept="NaN"), "Rescale"),
    "inf_slope": (dict(RescaleSlope="inf", RescaleIntercept=0), "Rescale"),
    "huge_slope": (dict(RescaleSlope=1e308, RescaleIntercept=0), "cannot hold apart"),
    "huge_intercept": (dict(RescaleSlope=1, RescaleIntercept=1e308), "cannot hold apart"),
    "huge_slope_with_window": (dict(RescaleSlope=1e308, RescaleIntercept=0, WindowCenter=100, WindowWidth=50),
                               "cannot hold apart"),
    "nan_center": (dict(WindowCenter="NaN", WindowWidth=100), "WindowCenter"),
    "nan_width": (dict(WindowCenter=100, WindowWidth="NaN"), "WindowCenter"),
    # a VOI LUT-free pydicom-path case: zero slope skips the fast path
    "nan_center_pydicom_path": (dict(RescaleSlope=0, RescaleIntercept=1, WindowCenter="NaN", WindowWidth=9),
                                "WindowCenter"),
}


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")  # pydicom on 'NaN' / 'inf'
@pytest.mark.parametrize("case", sorted(_BAD_HEADERS))
def test_non_finite_header_values_are_errors_not_nan_images(case):
    fields, what = _BAD_HEADERS[case]
    with pytest.raises(XRayDecodeError, match=rf"bad\.dcm: .*{what}.*fix"):
        decode_xray(dicom_bytes(_ARR, bits=8, **fields), "dcm", source="bad.dcm")


def test_float_pixel_data_with_nan_is_an_error():
    pixels = np.array([[0.0, 1.0], [np.nan, 3.0]], np.float32)
    fields = dict(Rows=2, Columns=2, BitsAllocated=32)
    with pytest.raises(XRayDecodeError, match=r"f\.dcm: float pixel data holds 1 NaN"):
        decode_xray(raw_dicom(FloatPixelData=pixels.tobytes(), **fields), "dcm", source="f.dcm")
    img, _ = decode_xray(raw_dicom(FloatPixelData=np.nan_to_num(pixels).tobytes(), **fields), "dcm")
    assert torch.allclose(img[0], torch.tensor([[0.0, 1 / 3], [0.0, 1.0]]))


def test_last_check_refuses_any_nan_image(monkeypatch):
    monkeypatch.setattr(dicom_mod, "_unit_affine", lambda arr, *a: np.full(arr.shape, np.nan, np.float32))
    with pytest.raises(XRayDecodeError, match=r"n\.dcm: decoding gave 4 NaN or infinite pixels"):
        decode_xray(dicom_bytes(_ARR), "dcm", source="n.dcm")
    monkeypatch.setattr(readers, "rgb_to_gray", lambda rgb, top: np.full(rgb.shape[:2], np.nan, np.float32))
    with pytest.raises(XRayDecodeError, match=r"c\.png: decoding gave 16 NaN"):
        decode_xray(png_bytes(np.zeros((4, 4, 3), np.uint8)), "png", source="c.png")


@pytest.mark.parametrize("value, message", [
    ("monochrome1", r"'monochrome1' is not a DICOM value.*exact upper case"),
    ("", r"'' is not a DICOM value"),
    ("PALETTE COLOR", r"colour-table indices, not intensities"),
])
def test_photometric_values_that_cannot_be_read_as_intensities_are_named(value, message):
    arr = (np.arange(64).reshape(8, 8) * 60).astype(np.uint16)
    with pytest.raises(XRayDecodeError, match=rf"x\.dcm: .*{message}"):
        decode_xray(dicom_bytes(arr, bits=12, photometric=value), "dcm", source="x.dcm")
    image, _ = decode_xray(dicom_bytes(arr, bits=12, photometric="MONOCHROME1"), "dcm", source="x.dcm")
    assert float(image[0, 0, 0]) == 1.0  # MONOCHROME1 still inverts: bone bright
