"""Readers: PNG/JPEG via Pillow, DICOM via pydicom, errors that name the file."""
from __future__ import annotations

import importlib.util
import io

import numpy as np
import pydicom
import pytest
import torch
from dicomgen import dicom_bytes as _dicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from streamaug.io import dicom as dicom_mod
from streamaug.io.readers import MissingCodecError, XRayDecodeError, decode_xray, read_xray


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _testfile(name: str) -> str:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} not available (pip install pydicom-data)")
    return path


# --- PNG / JPEG ---------------------------------------------------------------------------------

def test_png_8bit_exact():
    arr = np.arange(256, dtype=np.uint8).reshape(16, 16)
    img, meta = decode_xray(_png(arr), "png", source="a.png")
    assert img.dtype == torch.float32 and img.shape == (1, 16, 16)
    assert torch.equal(img[0], torch.from_numpy(arr.astype(np.float32) / 255))
    assert meta["bits"] == 8 and meta["size"] == (16, 16) and meta["format"] == "png"
    assert meta["source"] == "a.png" and meta["pixel_spacing"] is None


def test_png_16bit_keeps_full_precision():
    arr = np.array([[0, 1, 2, 257], [4095, 32768, 65534, 65535]], dtype=np.uint16)
    img, meta = decode_xray(_png(arr), ".PNG")
    assert meta["bits"] == 16
    expected = torch.from_numpy(arr.astype(np.float64) / 65535).float()
    assert torch.equal(img[0], expected)
    assert img[0, 0, 1] > 0 and img[0, 0, 1] != img[0, 0, 2]  # 1 and 2 stay distinct (no 8-bit cut)


def test_rgb_png_becomes_luma():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (0, 0, 255)
    rgb[1] = 255
    img, meta = decode_xray(_png(rgb), "png")
    assert img.shape == (1, 2, 3) and meta["photometric"] == "RGB"
    assert torch.allclose(img[0, 0], torch.tensor([0.299, 0.587, 0.114]), atol=1e-6)
    assert torch.allclose(img[0, 1], torch.ones(3), atol=1e-6)


def test_jpeg_and_sniffing_and_read_from_path(tmp_path):
    arr = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1))
    path = tmp_path / "x.jpg"
    Image.fromarray(arr).save(path, quality=95)
    img, meta = read_xray(path)
    assert meta["format"] == "jpeg" and meta["source"] == str(path) and img.shape == (1, 32, 32)
    assert (img[0] - torch.from_numpy(arr / 255.0).float()).abs().max() < 0.05
    for ext in (None, "bin", "mask.jpg"):  # unknown or compound extension: sniffed / last part
        again, _ = decode_xray(path.read_bytes(), ext)
        assert torch.equal(again, img)
    same, _ = read_xray(path.read_bytes())
    assert torch.equal(same, img)


# --- errors -------------------------------------------------------------------------------------

def test_truncated_png_names_source():
    data = _png(np.zeros((64, 64), np.uint8) + np.arange(64, dtype=np.uint8))
    with pytest.raises(XRayDecodeError, match=r"broken\.png.*truncated or not a PNG"):
        decode_xray(data[: len(data) // 2], "png", source="broken.png")
    with pytest.raises(XRayDecodeError, match="junk.png"):
        decode_xray(b"not an image at all", "png", source="junk.png")
    with pytest.raises(XRayDecodeError, match="empty"):
        decode_xray(b"", "png", source="e.png")
    with pytest.raises(XRayDecodeError, match="unsupported image type"):
        decode_xray(b"hello", "txt")


def test_missing_file_is_decode_error(tmp_path):
    with pytest.raises(XRayDecodeError, match="nope.png"):
        read_xray(tmp_path / "nope.png")
    assert issubclass(XRayDecodeError, ValueError)


# --- DICOM: synthetic ---------------------------------------------------------------------------

def test_dicom_monochrome1_is_inverted_by_bits_stored_range():
    arr = np.array([[0, 1023], [4095, 2048]], np.uint16)
    img, meta = decode_xray(_dicom(arr, photometric="MONOCHROME1", BodyPartExamined="HAND",
                                   ViewPosition="PA", Modality="DX", PixelSpacing=[0.1, 0.2]), "dcm",
                            source="m1.dcm")
    assert torch.allclose(img[0], torch.from_numpy(1 - arr / 4095.0).float(), atol=1e-7)
    assert img[0, 0, 0] == 1.0 and img[0, 1, 0] == 0.0  # low stored value is bright in MONOCHROME1
    assert meta["photometric"] == "MONOCHROME1" and meta["bits"] == 12 and meta["voi"] == "none"
    assert meta["body_part"] == "HAND" and meta["view"] == "PA" and meta["modality"] == "DX"
    assert meta["pixel_spacing"] == (0.1, 0.2) and meta["size"] == (2, 2) and meta["format"] == "dicom"
    plain, _ = decode_xray(_dicom(arr), "dcm")
    assert torch.allclose(plain[0], torch.from_numpy(arr / 4095.0).float(), atol=1e-7)


def test_dicom_bits_stored_masks_high_bits():
    arr = np.array([[0x1000 | 5, 100]], np.uint16)  # bit 12 is outside BitsStored=12
    img, _ = decode_xray(_dicom(arr), "dcm")
    assert torch.allclose(img[0], torch.tensor([[5 / 4095, 100 / 4095]]), atol=1e-7)


def test_dicom_rescale_slope_intercept():
    arr = np.array([[0, 100], [200, 255]], np.uint16)
    img, meta = decode_xray(_dicom(arr, bits=8, RescaleSlope=2, RescaleIntercept=-100), "dcm")
    # modality output 2 * v - 100 normalised by the rescaled stored range [-100, 410]
    expected = ((2.0 * arr - 100) + 100) / (255 * 2.0)
    assert torch.allclose(img[0], torch.from_numpy(expected).float(), atol=1e-7)
    # negative slope: the range is reordered, so the brightest stored value becomes 0
    neg, _ = decode_xray(_dicom(arr, bits=8, RescaleSlope=-1, RescaleIntercept=0), "dcm")
    assert torch.allclose(neg[0], torch.from_numpy(1 - arr / 255.0).float(), atol=1e-7)


def test_dicom_window_is_applied_and_normalised():
    arr = np.array([[0, 400, 500], [599, 600, 4000]], np.uint16)
    img, meta = decode_xray(_dicom(arr, WindowCenter=500, WindowWidth=201), "dcm")
    c, w = 500 - 0.5, 201 - 1  # DICOM LINEAR window (PS3.3 C.11.2.1.2.1)
    expected = np.clip((arr - c) / w + 0.5, 0, 1)
    assert meta["voi"] == "window" and meta["window"] == (500.0, 201.0)
    assert torch.allclose(img[0], torch.from_numpy(expected).float(), atol=1e-6)
    assert img[0, 0, 0] == 0 and img[0, 1, 2] == 1
    off, meta_off = dicom_mod.decode_dicom(_dicom(arr, WindowCenter=500, WindowWidth=201), apply_voi=False)
    assert meta_off["voi"] == "none" and torch.allclose(off[0], torch.from_numpy(arr / 4095.0).float())


def test_dicom_window_with_rescale_matches_pydicom():
    arr = np.array([[0, 1000, 1500], [2000, 3000, 4095]], np.uint16)
    data = _dicom(arr, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=400, WindowWidth=1500)
    img, _ = decode_xray(data, "dcm")
    ds = pydicom.dcmread(io.BytesIO(data))
    ref = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    lo, hi = -1024.0, 4095.0 - 1024.0
    assert torch.allclose(img[0], torch.from_numpy((ref - lo) / (hi - lo)).float(), atol=1e-6)


def test_dicom_voi_lut_sequence_normalised_by_lut_range():
    arr = np.array([[0, 1000], [3000, 4095]], np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = (np.arange(4096) // 2 + 100).astype("<u2").tobytes()  # entries 100..2147 (OW)
    data = _dicom(arr, VOILUTSequence=[item], WindowCenter=2000, WindowWidth=100)
    img, meta = decode_xray(data, "dcm")
    assert meta["voi"] == "lut"  # the LUT is preferred over the window, as in pydicom; declared 16 bits
    expected = (arr // 2) / 2047.0
    assert torch.allclose(img[0], torch.from_numpy(expected).float(), atol=1e-6)


def _pydicom_display(data: bytes) -> np.ndarray:
    """pydicom's float64 pipeline (modality LUT, first window) normalised by the window's output
    range as pydicom defines it (PS3.3 C.11.2.1.2), clipped, MONOCHROME1 inverted."""
    ds = pydicom.dcmread(io.BytesIO(data))
    bits, signed = int(ds.BitsStored), int(ds.PixelRepresentation) == 1
    y_min, y_max = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        y_min, y_max = (v * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for v in (y_min, y_max))
    ref = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, prefer_lut=False)
    ref = np.clip((ref - y_min) / (y_max - y_min), 0, 1)
    return 1 - ref if ds.PhotometricInterpretation == "MONOCHROME1" else ref


_WINDOW_CASES = {  # name: (stored values, _dicom() keyword arguments)
    "linear": (np.arange(0, 4096, 3), dict(WindowCenter=1200, WindowWidth=801)),
    "linear_m1_rescale": (np.arange(0, 4096, 3), dict(photometric="MONOCHROME1", RescaleSlope=0.37,
                                                        RescaleIntercept=-1024.5, WindowCenter=-400, WindowWidth=900)),
    "linear_exact": (np.arange(0, 4096, 3), dict(WindowCenter=1000.25, WindowWidth=500.5,
                                                 VOILUTFunction="LINEAR_EXACT")),
    "sigmoid": (np.arange(0, 4096, 3), dict(WindowCenter=2000, WindowWidth=700, VOILUTFunction="SIGMOID")),
    "sigmoid_m1": (np.arange(0, 4096, 3), dict(photometric="MONOCHROME1", WindowCenter=100, WindowWidth=30,
                                               VOILUTFunction="SIGMOID", RescaleSlope=2, RescaleIntercept=5)),
    "signed": (np.arange(-2048, 2048, 3), dict(signed=True, WindowCenter=-100, WindowWidth=2000)),
    # a 3-value window at the top of 16-bit data: float32 must keep ~1e-7 near a large centre
    "narrow_high": (np.arange(65500, 65536), dict(bits=16, WindowCenter=65520, WindowWidth=3,
                                                  RescaleSlope=1.5, RescaleIntercept=0.25)),
    "threshold": (np.arange(0, 64), dict(WindowCenter=30, WindowWidth=1)),  # LINEAR width 1: a step
}


@pytest.mark.parametrize("case", sorted(_WINDOW_CASES))
def test_dicom_windows_match_pydicom(case):
    values, fields = _WINDOW_CASES[case]
    arr = np.resize(values, (8, (len(values) + 7) // 8))
    data = _dicom(arr, **{"bits": 12, **fields})
    img, meta = decode_xray(data, "dcm")
    assert meta["voi"] == "window" and img.dtype == torch.float32
    np.testing.assert_allclose(img[0].numpy(), _pydicom_display(data), rtol=0, atol=1e-6)
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0


def test_dicom_fast_path_does_not_call_pydicom_voi(monkeypatch):
    """Windows and the stored-range normalisation run in float32 numpy, not pydicom's float64 LUTs."""
    def boom(*args, **kwargs):
        raise AssertionError("pydicom LUT called")

    arr = np.array([[0, 400, 500], [599, 600, 4000]], np.uint16)
    want_window, _ = decode_xray(_dicom(arr, WindowCenter=500, WindowWidth=201), "dcm")
    want_none, _ = decode_xray(_dicom(arr, RescaleSlope=2, RescaleIntercept=1), "dcm")
    monkeypatch.setattr(pydicom.pixels, "apply_voi_lut", boom)
    monkeypatch.setattr(pydicom.pixels, "apply_modality_lut", boom)
    got, meta = decode_xray(_dicom(arr, WindowCenter=500, WindowWidth=201), "dcm")
    assert meta["voi"] == "window" and torch.equal(got, want_window)
    got, meta = decode_xray(_dicom(arr, RescaleSlope=2, RescaleIntercept=1), "dcm")
    assert meta["voi"] == "none" and torch.equal(got, want_none)


@pytest.mark.parametrize("fields", [dict(WindowWidth=0.5), dict(WindowWidth=0, VOILUTFunction="SIGMOID"),
                                    dict(WindowWidth=100, VOILUTFunction="GAMMA")])
def test_dicom_invalid_window_warns_and_uses_stored_range(fields):
    arr = np.array([[0, 1023], [4095, 2048]], np.uint16)
    with pytest.warns(UserWarning, match="ignoring invalid VOI window"):
        img, meta = decode_xray(_dicom(arr, WindowCenter=500, **fields), "dcm", source="bad.dcm")
    assert meta["voi"] == "none" and meta["window"] is None
    assert torch.allclose(img[0], torch.from_numpy(arr / 4095.0).float(), atol=1e-7)


def test_dicom_without_pixels_or_truncated():
    data = _dicom(np.zeros((8, 8), np.uint16))
    with pytest.raises(XRayDecodeError, match="t.dcm"):
        decode_xray(data[: len(data) - 40], "dcm", source="t.dcm")
    with pytest.raises(XRayDecodeError, match="not a DICOM|no pixel data"):
        decode_xray(b"\0" * 200, "dcm", source="zeros.dcm")


# --- DICOM: real radiographs (pydicom-data) -----------------------------------------------------

@pytest.mark.parametrize("name", ["RG1_UNCI.dcm", "RG3_UNCI.dcm"])
def test_real_radiograph_matches_pydicom_pipeline(name):
    path = _testfile(name)
    img, meta = read_xray(path)
    ds = pydicom.dcmread(path)
    ref = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)  # pydicom's own display pipeline
    y_max = 2 ** int(ds.BitsStored) - 1  # unsigned, no rescale: window output is [0, 2**bits - 1]
    ref = 1.0 - np.clip(ref / y_max, 0, 1)  # MONOCHROME1 -> bone bright
    assert img.shape == (1, ds.Rows, ds.Columns) and img.dtype == torch.float32
    assert torch.allclose(img[0], torch.from_numpy(ref).float(), atol=1e-6)
    assert meta["photometric"] == "MONOCHROME1" and meta["bits"] == ds.BitsStored
    assert meta["voi"] == "window" and meta["modality"] == "CR" and meta["view"] == ds.ViewPosition
    assert 0.0 <= float(img.min()) < float(img.max()) <= 1.0


# --- compressed DICOM ---------------------------------------------------------------------------

_HAVE_CODECS = any(importlib.util.find_spec(m) for m in ("pylibjpeg", "gdcm"))


@pytest.mark.skipif(_HAVE_CODECS, reason="pylibjpeg/gdcm installed: JPEG Lossless decodes")
def test_compressed_dicom_without_plugin_raises_clear_error():
    path = _testfile("JPEG-LL.dcm")
    with pytest.raises(MissingCodecError) as info:
        read_xray(path)
    msg = str(info.value)
    assert "JPEG-LL.dcm" in msg and "JPEG Lossless" in msg and "1.2.840.10008.1.2.4.70" in msg
    assert "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg" in msg and "dicom-codecs" in msg


def test_compressed_dicom_plugin_failure_is_reported(monkeypatch):
    path = _testfile("JPEG2000.dcm")  # Pillow decodes it here; simulate a missing plugin

    def fail(self):
        raise RuntimeError("Unable to decompress: all plugins are missing dependencies")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(fail))
    with pytest.raises(MissingCodecError, match=r"JPEG2000\.dcm.*JPEG 2000.*pylibjpeg"):
        read_xray(path)


# --- 32-bit and float images, DICOM without an extension ----------------------------------------

def _tiff(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="TIFF")
    return buf.getvalue()


def test_32bit_integer_images_are_scaled_by_the_range_their_values_fit():
    """Mode "I": values that fit in 16 bits are divided by 65535, larger ones by 2**31 - 1."""
    small = np.array([[0, 1, 32768, 65535]], dtype=np.int32)
    assert Image.open(io.BytesIO(_tiff(small))).mode == "I"
    img, meta = decode_xray(_tiff(small), "tif")
    assert torch.equal(img[0], torch.from_numpy(small / 65535.0).float()) and img.max() == 1.0
    assert meta["bits"] == 16
    large = np.array([[0, 65535, 70000, 2**31 - 1]], dtype=np.int32)
    img, meta = decode_xray(_tiff(large), "tif")
    assert torch.equal(img[0], torch.from_numpy(large / float(2**31 - 1)).float()) and img.max() == 1.0
    assert meta["bits"] == 32


def test_float_images_are_clipped_to_the_unit_range():
    arr = np.array([[-0.5, 0.0, 0.25, 1.0, 1.5]], dtype=np.float32)
    assert Image.open(io.BytesIO(_tiff(arr))).mode == "F"
    img, _ = decode_xray(_tiff(arr), "tif")
    assert img[0].tolist() == [[0.0, 0.0, 0.25, 1.0, 1.0]]


@pytest.mark.parametrize("ext", [None, "bin"])
def test_dicom_without_its_extension_is_sniffed(ext):
    arr = np.arange(12, dtype=np.uint16).reshape(3, 4) * 300
    img, meta = decode_xray(_dicom(arr), ext)
    assert meta["format"] == "dicom" and img.shape == (1, 3, 4)
    assert torch.equal(img, decode_xray(_dicom(arr), "dcm")[0])
