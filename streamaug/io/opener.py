"""Opening a shard for sequential reading: local files, ``http(s)://`` and ``pipe:CMD`` URLs (through
webdataset's own opener, :func:`webdataset.gopen.gopen`, and its :class:`~webdataset.gopen.Pipe`),
gzip / bzip2 / xz found by their magic bytes, and an optional hasher fed the bytes as stored.
:func:`open_tar_stream` is the one place a shard is opened; :mod:`streamaug.io.tar` reads the
members of what it returns.

A URL's command is watched (a timeout, an early end): :mod:`streamaug.io.commands`.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import re
from typing import Any, BinaryIO

from streamaug.io.commands import open_url, pipe_timeout

_DECOMPRESSORS: tuple[tuple[bytes, Any], ...] = (
    (b"\x1f\x8b", lambda fh: gzip.GzipFile(fileobj=fh, mode="rb")),
    (b"BZh", lambda fh: bz2.BZ2File(fh, "rb")),
    (b"\xfd7zXZ", lambda fh: lzma.LZMAFile(fh, "rb")))  # noqa: SIM115 - closed by _Decompressed


_URL = re.compile(r"^(pipe:|[A-Za-z][A-Za-z0-9+.-]*://)")


def is_url(spec: str | os.PathLike) -> bool:
    """True for ``pipe:CMD`` and ``scheme://...`` shard specs (read through webdataset's opener).

    >>> [is_url(s) for s in ("pipe:cat a.tar", "http://host/a.tar", "/data/a.tar", "a.tar")]
    [True, True, False, False]
    """
    return bool(_URL.match(os.fspath(spec)))


class _HashingReader(io.RawIOBase):
    """A raw file that feeds every byte read from it to ``hasher`` (``hashlib``-like)."""

    def __init__(self, raw: BinaryIO, hasher: Any) -> None:
        super().__init__()
        self._raw, self._hasher = raw, hasher

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)
        if n:
            self._hasher.update(memoryview(buffer)[:n])
        return n

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


class _Decompressed:
    """A decompressing stream that also closes the file under it (read-only, not seekable)."""

    def __init__(self, stream: Any, under: BinaryIO) -> None:
        self._stream, self._under = stream, under
        self.read = stream.read

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._under.close()

    def __enter__(self) -> _Decompressed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_tar_stream(path: str | os.PathLike, *, decompress: bool = True, hasher: Any = None,
                    timeout: float | None = None) -> BinaryIO:
    """Open a shard for sequential reading, decompressing gzip, bzip2 or xz by their magic bytes.

    This is the one place a shard is opened.

    Args:
        path: the shard: a local path, or an ``http(s)://`` / ``pipe:CMD`` URL (see :func:`is_url`).
        decompress: False: the file's bytes as stored (e.g. to hash them).
        hasher: a ``hashlib`` object fed every byte read from the file as stored (before
            decompression). Read the stream to its end for the digest of the whole file.
        timeout: seconds a URL's command may go without output before a read raises
            :class:`TimeoutError`; None: :func:`streamaug.io.commands.pipe_timeout`; ``math.inf``:
            wait for ever.

    Returns:
        A binary stream; closing it closes the file, decompressor or pipe behind it.
    """
    spec = os.fspath(path)
    if is_url(spec):
        timeout = pipe_timeout() if timeout is None else timeout
        raw: Any = open_url(spec, None if timeout == float("inf") else timeout)
    else:
        raw = open(spec, "rb", buffering=0)  # noqa: SIM115 - returned to the caller
    if hasher is not None:
        raw = _HashingReader(raw, hasher)
    fh: BinaryIO = io.BufferedReader(raw, 1 << 16)  # type: ignore[assignment]
    if not decompress:
        return fh
    try:
        magic = fh.peek(6)[:6]  # type: ignore[attr-defined]
    except BaseException:  # e.g. a command that failed at once: the caller never gets fh to close
        fh.close()
        raise
    for prefix, decompressor in _DECOMPRESSORS:
        if magic.startswith(prefix):
            return _Decompressed(decompressor(fh), fh)  # type: ignore[return-value]
    return fh
