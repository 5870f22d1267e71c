"""A fast reader for the regular files of a tar stream (the hot path of :func:`streamaug.data.stream.read_tar`).

Why not :mod:`tarfile`: it parses each 512-byte header through several layers of Python, a
noticeable share of decoding a small image; this reader parses the fields a shard needs with a few
slices (``benchmarks/tar_read.py`` compares the two; figures in ``benchmarks/RESULTS.md``). It reads ustar, pax
(``x``/``g`` records: ``path``, ``size``) and GNU long names (``L``); other member types
(directories, links, devices, GNU sparse) are skipped with their data. Compressed shards
(gzip, bzip2, xz) are read through the standard library's decompressors. Shards may be local
paths or, as in WebDataset, ``http(s)://...`` and ``pipe:CMD`` URLs, opened by webdataset's own
URL opener (:func:`webdataset.gopen.gopen`); a failing command or download is an ``OSError``.

It is stricter than ``tarfile`` where ``tarfile`` loses data silently: a header with a bad
checksum after the first member raises instead of ending the archive there. Errors are
:class:`tarfile.ReadError` subclasses, so callers handle them like ``tarfile``'s.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import io
import os
import re
import tarfile
import zlib
from typing import BinaryIO, Iterator

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_REGULAR = (b"0", b"\0", b"7")  # regular file, old-style regular file, contiguous file
#: what reading a damaged (possibly compressed) shard can raise
READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


class TarTruncated(tarfile.ReadError):
    """The stream ended inside a header or a member's data."""


class TarHeaderError(tarfile.ReadError):
    """A header failed its checksum or holds an unreadable field."""


_URL = re.compile(r"^(pipe:|[A-Za-z][A-Za-z0-9+.-]*://)")
_COMPRESSED = {b"\x1f\x8b": lambda f: gzip.GzipFile(fileobj=f), b"BZh": bz2.BZ2File, b"\xfd7zXZ": lzma.LZMAFile}


def is_url(spec: str | os.PathLike) -> bool:
    """True for ``pipe:CMD`` and ``scheme://...`` shard specs (read through webdataset's opener).

    >>> [is_url(s) for s in ("pipe:cat a.tar", "http://host/a.tar", "/data/a.tar", "a.tar")]
    [True, True, False, False]
    """
    return bool(_URL.match(os.fspath(spec)))


class _Source(io.RawIOBase):
    """A raw, read-only, non-seekable view of any object with ``read(n)``; closing it closes
    ``closers`` in order (the decompressor, then the pipe, whose close checks the exit status)."""

    def __init__(self, source: BinaryIO, *closers: BinaryIO) -> None:
        self._source, self._closers = source, (source, *closers)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._source.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                for c in self._closers:
                    c.close()
            finally:
                super().close()


def open_tar_stream(path: str | os.PathLike) -> BinaryIO:
    """Open a shard for sequential reading, decompressing gzip, bzip2 or xz by their magic bytes.

    Args:
        path: a local path, or an ``http(s)://`` / ``pipe:CMD`` URL (see :func:`is_url`).

    Returns:
        A binary stream; closing it closes the file, decompressor or pipe behind it.
    """
    spec = os.fspath(path)
    if is_url(spec):
        from webdataset.gopen import gopen

        pipe = gopen(spec, "rb")
        fh: BinaryIO = io.BufferedReader(_Source(pipe), buffer_size=1 << 16)  # type: ignore[assignment]
    else:
        fh = open(spec, "rb", buffering=1 << 16)  # noqa: SIM115 - returned to the caller
    magic = fh.peek(6)[:6]  # type: ignore[attr-defined]
    for prefix, decompressor in _COMPRESSED.items():
        if magic.startswith(prefix):
            return io.BufferedReader(_Source(decompressor(fh), fh), buffer_size=1 << 16)  # type: ignore
    return fh


def _read_exact(fh: BinaryIO, size: int, what: str) -> bytes:
    data = fh.read(size)
    if len(data) != size:
        raise TarTruncated(f"unexpected end of data in {what} ({len(data)} of {size} bytes)")
    return data


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or base-256 when the first byte has its high bit set."""
    if field[0] in (0x80, 0xFF):
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] == 0xFF else value
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError as err:
        raise TarHeaderError(f"bad numeric field {field!r}") from err


def _checksum_ok(header: bytes) -> bool:
    try:
        stored = _number(header[148:156])
    except TarHeaderError:
        return False
    unsigned = sum(header) - sum(header[148:156]) + 256  # the checksum field counts as 8 spaces
    if stored == unsigned:
        return True
    signed = sum(b - 256 if b > 127 else b for b in header[:148] + header[156:]) + 256
    return stored == signed


def _pax_records(data: bytes) -> dict[str, str]:
    """``"%d key=value\\n"`` records of a pax header."""
    out, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError as err:
            raise TarHeaderError(f"bad pax record at byte {pos}") from err
        if space < 0 or length <= 0:
            raise TarHeaderError(f"bad pax record at byte {pos}")
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _skip(fh: BinaryIO, size: int, end: int | None) -> None:
    """Move ``size`` bytes on: a seek when ``end`` (the file's size) is known, else a read."""
    if end is None:
        _read_exact(fh, size, "a member")
    elif fh.seek(size, os.SEEK_CUR) > end:
        raise TarTruncated(f"unexpected end of data in a member (the file ends at byte {end})")


def _file_size(fh: BinaryIO) -> int | None:
    """Size of an uncompressed regular file behind ``fh``; None for other streams (read, not seek)."""
    try:
        if not fh.seekable() or not hasattr(fh, "raw"):
            return None
        return os.fstat(fh.fileno()).st_size
    except (OSError, AttributeError, ValueError):
        return None


def iter_tar_files(fh: BinaryIO, *, headers_only: bool = False) -> Iterator[tuple[str, bytes]]:
    """``(name, data)`` of every regular file of the tar stream ``fh``, in archive order.

    Ends at the end-of-archive block or at a clean end of the stream between members.
    ``headers_only``: yield ``b""`` as the data and seek past it where the stream allows (listing a
    shard without reading its images).

    Raises:
        TarTruncated: the stream ends inside a header or a member's data.
        TarHeaderError: a header's checksum or a field is wrong.

    Examples:
        >>> import io, tarfile
        >>> buf = io.BytesIO()
        >>> with tarfile.open(fileobj=buf, mode="w") as tar:
        ...     info = tarfile.TarInfo("a.txt"); info.size = 2
        ...     tar.addfile(info, io.BytesIO(b"hi"))
        >>> _ = buf.seek(0)
        >>> list(iter_tar_files(buf))
        [('a.txt', b'hi')]
    """
    pax_global: dict[str, str] = {}
    pax: dict[str, str] = {}
    long_name: str | None = None
    first = True
    end = _file_size(fh) if headers_only else None
    while True:
        header = fh.read(BLOCK)
        if not header or header == _ZERO_BLOCK:
            return
        if len(header) != BLOCK:
            raise TarTruncated(f"unexpected end of data in a header ({len(header)} of {BLOCK} bytes)")
        if not _checksum_ok(header):
            raise TarHeaderError("bad header checksum" + (" (not a tar file?)" if first else ""))
        first = False
        kind = header[156:157]
        fields = {**pax_global, **pax} if pax_global else pax
        size = _number(header[124:136])
        if "size" in fields and kind in _REGULAR:
            try:
                size = int(fields["size"])
            except ValueError as err:
                raise TarHeaderError(f"bad pax size {fields['size']!r}") from err
        pad = -size % BLOCK
        if headers_only and kind in _REGULAR:
            data = b""
            _skip(fh, size + pad, end)
        else:
            data = _read_exact(fh, size, "a member") if size else b""
            if pad:
                _read_exact(fh, pad, "a member's padding")
        if kind == b"x":
            pax = _pax_records(data)
        elif kind == b"g":
            pax_global.update(_pax_records(data))
        elif kind == b"L":
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        else:
            if kind in _REGULAR:
                name = fields.get("path") or long_name
                if name is None:
                    name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                    if header[257:262] == b"ustar" and header[345] != 0:
                        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                        name = f"{prefix}/{name}"
                yield name, data
            pax, long_name = {}, None
