"""Readers: X-ray images (PNG/JPEG 8/16-bit, DICOM), shard files and their tar reader, labels, error types."""
from streamaug.io.readers import MissingCodecError, XRayDecodeError, decode_xray, read_xray

__all__ = ["MissingCodecError", "XRayDecodeError", "decode_xray", "read_xray"]
