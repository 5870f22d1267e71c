"""The errors streamaug raises for bad input; every message names the file and the fix."""
from __future__ import annotations

__all__ = ["MissingCodecError", "SampleError", "ShardError", "XRayDecodeError"]


class XRayDecodeError(ValueError):
    """An image that cannot be decoded; the message names the source and the fix."""


class MissingCodecError(XRayDecodeError):
    """A compressed DICOM whose transfer syntax needs a pixel-data plugin that is not installed."""


class ShardError(RuntimeError):
    """A shard could not be listed or read; the message names the shard and the fix."""


class SampleError(RuntimeError):
    """A sample could not be decoded; the message names shard and key."""
