"""Tiny generated DICOM files for the reader tests (uncompressed, Explicit VR Little Endian)."""
from __future__ import annotations

import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def raw_dicom(**fields) -> bytes:
    """A DICOM file with exactly the given fields (plus file meta, SOP UIDs, 1 sample, MONOCHROME2)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    for name, value in fields.items():
        setattr(ds, name, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_bytes(arr: np.ndarray, *, bits: int = 12, photometric: str = "MONOCHROME2", signed: bool = False,
                **fields) -> bytes:
    """A minimal single-frame DICOM file holding ``arr`` (stored as uint16 or int16)."""
    return raw_dicom(Rows=arr.shape[0], Columns=arr.shape[1], PhotometricInterpretation=photometric,
                     BitsAllocated=16, BitsStored=bits, HighBit=bits - 1, PixelRepresentation=int(signed),
                     PixelData=arr.astype(np.int16 if signed else np.uint16).tobytes(), **fields)
