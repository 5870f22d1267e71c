"""A fast reader for the regular files of a tar stream (the hot path of :func:`streamaug.data.stream.read_tar`).

Why not :mod:`tarfile`: it parses each 512-byte header through several layers of Python, a
noticeable share of decoding a small image; this reader parses the fields a shard needs with a few
slices (``benchmarks/tar_read.py`` compares the two; figures in ``benchmarks/RESULTS.md``). It reads ustar, pax
(``x``/``g`` records: ``path``, ``size``) and GNU long names (``L``); other member types
(directories, devices, GNU sparse, links without an extension) are skipped with their data. A hard
or symbolic link named like a sample member (``d.png``) raises :class:`TarLinkError`: its sample
would be lost, as links are not followed. Shards are opened by
:func:`streamaug.io.opener.open_tar_stream` (local paths, ``http(s)://`` and ``pipe:CMD`` URLs,
gzip / bzip2 / xz); a failing command or download is an ``OSError``.

It is stricter than ``tarfile`` where ``tarfile`` loses data silently or fails without naming the
problem:

* a header with a bad checksum after the first member raises instead of ending the archive there;
* a size field is checked before anything is read: negative, not a number, or past the end of the
  file (when the file's size is known) raises; on a stream of unknown length (compressed) data is
  read in bounded chunks, so a size that lies costs no memory;
* a link member with an extension (GNU tar stores a second name of one inode as a hard link, and
  a symbolic link as a link unless ``-h``) raises instead of being skipped;
* the archive must end with its end-of-archive marker, two zero blocks followed by nothing but
  zeros: a stream that stops at a member boundary is truncated, and a zero block followed by data
  is a zeroed header, not the end.

Errors are :class:`tarfile.ReadError` subclasses (:class:`TarTruncated`, :class:`TarHeaderError`,
:class:`TarLinkError`),
so callers handle them like ``tarfile``'s.

On top of the members: :func:`group_samples` groups them into WebDataset samples (and refuses a
shard whose names are out of WebDataset order), :func:`tar_samples` reads a shard's samples, and
:func:`shard_sha256` hashes a shard's bytes as stored, as the packer's manifest records them.
"""
from __future__ import annotations

import hashlib
import io
import lzma
import os
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from webdataset.tariterators import base_plus_ext

from streamaug.io.opener import open_tar_stream

BLOCK = 512
#: the largest read this reader asks of a stream whose length it does not know
CHUNK = 1 << 20
_ZERO_BLOCK = bytes(BLOCK)
_REGULAR = (b"0", b"\0", b"7")  # regular file, old-style regular file, contiguous file
_LINKS = {b"1": "a hard link", b"2": "a symbolic link"}
_MAX_SIZE = 1 << 63  # no file system holds a member this large; a bigger field is damage
#: what reading a damaged (possibly compressed) shard can raise
READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


class TarTruncated(tarfile.ReadError):
    """The stream ended inside a header, a member's data or the end-of-archive marker, or a size
    field points past the end of the file."""


class TarHeaderError(tarfile.ReadError):
    """A header failed its checksum or holds an unreadable field (a bad or negative size, a
    zeroed header block followed by more members)."""


class TarLinkError(TarHeaderError):
    """A hard or symbolic link member named like a sample's file: the reader does not follow links,
    so the sample would be lost; the shard must store the file's bytes."""


def _read_exact(fh: BinaryIO, size: int, what: str, bounded: bool) -> bytes:
    """``size`` bytes; in chunks of at most :data:`CHUNK` unless ``bounded`` (the size was checked
    against the file's length), so a lying size field on a stream costs no memory."""
    if bounded or size <= CHUNK:
        data = fh.read(size)
    else:
        parts, left = [], size
        while left:
            part = fh.read(min(left, CHUNK))
            if not part:
                break
            parts.append(part)
            left -= len(part)
        data = b"".join(parts)
    if len(data) != size:
        raise TarTruncated(f"unexpected end of data in {what} ({len(data)} of {size} bytes)")
    return data


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or base-256 when the first byte has its high bit set."""
    if field[0] in (0x80, 0xFF):
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] == 0xFF else value
    text = field.split(b"\0", 1)[0].strip()
    if text.translate(None, b"01234567"):  # int(text, 8) would take "-7", "0o7" and "1_7"
        raise TarHeaderError(f"bad numeric field {field!r}")
    return int(text, 8) if text else 0


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


def _member_size(header: bytes, kind: bytes, fields: dict[str, str], at: int) -> int:
    """The data size of the member whose header starts at byte ``at``, checked for sanity."""
    size = _number(header[124:136])
    if "size" in fields and kind in _REGULAR:
        text = fields["size"]
        if not (text.isascii() and text.isdigit()) or len(text) > 20:
            raise TarHeaderError(f"bad pax size {text[:40]!r} for the member at byte {at}")
        size = int(text)
    if size < 0 or size >= _MAX_SIZE:
        raise TarHeaderError(f"impossible size {size} in the header at byte {at}")
    return size


def _check_end(fh: BinaryIO, at: int) -> None:
    """After the zero block at byte ``at``: at least one more zero block, then nothing but zeros."""
    tail = 0
    while True:
        chunk = fh.read(CHUNK)
        if not chunk:
            break
        rest = chunk.lstrip(b"\0")
        if rest:
            where = at + BLOCK + tail + len(chunk) - len(rest)
            raise TarHeaderError(f"a zero block at byte {at} is followed by data at byte {where}: a zeroed "
                                 "header, not the end of the archive")
        tail += len(chunk)
    if tail < BLOCK:
        raise TarTruncated(f"the archive ends {tail} bytes after the zero block at byte {at}: the end-of-archive "
                           "marker (two zero blocks) is cut short")


def _file_size(fh: BinaryIO) -> int | None:
    """Size of an uncompressed regular file behind ``fh``; None for other streams (read, not seek)."""
    try:
        if not fh.seekable() or not hasattr(fh, "raw"):
            return None
        return os.fstat(fh.fileno()).st_size
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        return None


def _text(field: bytes) -> str:
    """A NUL-terminated name field (or GNU long name data) as text."""
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _member_name(header: bytes, fields: dict[str, str], long_name: str | None) -> str:
    """A member's name: pax ``path``, else a GNU long name, else the header's (with its ustar prefix)."""
    name = fields.get("path") or long_name
    if name is None:
        name = _text(header[:100])
        if header[257:262] == b"ustar" and header[345] != 0:
            name = f"{_text(header[345:500])}/{name}"
    return name


def _refuse_link(header: bytes, kind: bytes, fields: dict[str, str], long_name: str | None,
                 long_link: str | None, at: int) -> None:
    """Raise :class:`TarLinkError` for a link member whose name has an extension (links without one,
    which no sample holds, are skipped like directories)."""
    name = _member_name(header, fields, long_name)
    if base_plus_ext(name)[0] is None:
        return
    target = fields.get("linkpath") or long_link or _text(header[157:257])
    raise TarLinkError(f"member {name!r} (header at byte {at}) is {_LINKS[kind]} to {target!r}, not a file: links "
                       "are not followed, so its sample would be lost. Re-create the shard storing the files' bytes: "
                       "`tar --hard-dereference -h -cf ...` or streamaug-pack")


def iter_tar_files(fh: BinaryIO, *, headers_only: bool = False) -> Iterator[tuple[str, bytes]]:
    """``(name, data)`` of every regular file of the tar stream ``fh``, in archive order.

    Ends at the end-of-archive marker, which must be there (two zero blocks, then only zeros).
    ``headers_only``: yield ``b""`` as the data and seek past it where the stream allows (listing a
    shard without reading its images).

    Raises:
        TarTruncated: the stream ends inside a header, a member's data or before the end-of-archive
            marker, or a size points past the end of the file.
        TarHeaderError: a header's checksum or a field is wrong, or a zero block is followed by data.
        TarLinkError: a hard or symbolic link member whose name has an extension (a sample's file).

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
    long_link: str | None = None
    end = _file_size(fh)
    pos = fh.tell() if end is not None else 0
    while True:
        header = fh.read(BLOCK)
        if len(header) != BLOCK:
            if header:
                raise TarTruncated(f"unexpected end of data in a header ({len(header)} of {BLOCK} bytes)")
            if pos == 0:
                raise TarTruncated("the file is empty: not a tar archive")
            raise TarTruncated(f"the archive stops at byte {pos}, between two members, without its "
                               "end-of-archive marker: it was cut short")
        if header == _ZERO_BLOCK:
            _check_end(fh, pos)
            return
        if not _checksum_ok(header):
            raise TarHeaderError(f"bad header checksum at byte {pos}" + (" (not a tar file?)" if pos == 0 else ""))
        kind = header[156:157]
        fields = {**pax_global, **pax} if pax_global else pax
        size = _member_size(header, kind, fields, pos)
        pad = -size % BLOCK
        pos += BLOCK
        if end is not None and pos + size + pad > end:
            raise TarTruncated(f"unexpected end of data: the header at byte {pos - BLOCK} gives a size of {size} "
                               f"bytes, past the end of the file at byte {end} (cut short, or a damaged size field)")
        if headers_only and kind in _REGULAR:
            data = b""
            if end is None:
                _read_exact(fh, size + pad, "a member", False)  # a stream: read (and drop) the data
            else:
                fh.seek(size + pad, os.SEEK_CUR)
        else:
            data = _read_exact(fh, size, "a member", end is not None) if size else b""
            if pad:
                _read_exact(fh, pad, "a member's padding", True)
        pos += size + pad
        if kind == b"x":
            pax = _pax_records(data)
        elif kind == b"g":
            pax_global.update(_pax_records(data))
        elif kind == b"L":
            long_name = _text(data)
        elif kind == b"K":  # GNU long link name: belongs to the next header, like "L"
            long_link = _text(data)
        else:
            if kind in _REGULAR:
                yield _member_name(header, fields, long_name), data
            elif kind in _LINKS:
                _refuse_link(header, kind, fields, long_name, long_link, pos - size - pad - BLOCK)
            pax, long_name, long_link = {}, None, None


class ShardLayoutError(tarfile.ReadError):
    """A shard's members are not in WebDataset order: a key comes back after other keys, or a
    sample holds the same member twice (damaged names, or two samples merged)."""


def group_samples(files: Iterable[tuple[str, bytes]]) -> Iterator[dict[str, Any]]:
    """WebDataset samples ``{"__key__": key, ext: data, ...}`` from ``(name, data)`` in archive order.

    A sample is yielded once the next sample's first member (or the end of the archive) has been
    read, so a sample cut short by damage is never yielded. Members without an extension are
    ignored, as WebDataset does.

    Raises:
        ShardLayoutError: a key that comes back after another key, a member twice in one sample, or
            a member named like a WebDataset field (``key.__url__``).
    """
    seen: set[str] = set()
    current: dict[str, Any] | None = None
    for name, data in files:
        key, ext = base_plus_ext(name)
        if key is None:
            continue
        ext = ext.lower()
        if ext.startswith("__"):
            raise ShardLayoutError(f"member {name!r} has a reserved extension (WebDataset keeps '__' names for "
                                   "its own fields)")
        if current is not None and current["__key__"] == key:
            if ext in current:
                raise ShardLayoutError(f"member {name!r} is in the shard twice")
            current[ext] = data
            continue
        if key in seen:
            raise ShardLayoutError(f"member {name!r} belongs to sample {key!r}, which ended earlier in the shard")
        if current is not None:
            yield current
        seen.add(key)
        current = {"__key__": key, ext: data}
    if current is not None:
        yield current


def tar_samples(shard: str, hasher: Any = None) -> Iterator[dict[str, Any]]:
    """Raw WebDataset samples ``{"__key__", ext: bytes, ..., "__url__": shard}`` of a tar shard
    (see :func:`group_samples`); with ``hasher``, every byte of the stored file goes through it.

    Raises:
        tarfile.ReadError: (one of :data:`READ_ERRORS`) the shard is damaged.
    """
    with open_tar_stream(shard, hasher=hasher) as fh:
        for raw in group_samples(iter_tar_files(fh)):
            raw["__url__"] = shard
            yield raw
        if hasher is not None:
            while fh.read(CHUNK):  # bytes after the archive's end count in the file's hash too
                pass


def shard_sha256(shard: str | os.PathLike) -> str:
    """sha256 of the shard's bytes as stored (what the packer's manifest records)."""
    h = hashlib.sha256()
    with open_tar_stream(shard, decompress=False) as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
