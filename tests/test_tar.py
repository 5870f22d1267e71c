"""Tests for streamaug.io.tar: the fast tar reader agrees with tarfile and fails loudly on damage."""
from __future__ import annotations

import gzip
import io
import tarfile

import pytest
from shardgen import set_size_field

from streamaug.io.opener import open_tar_stream
from streamaug.io.tar import CHUNK, TarHeaderError, TarTruncated, _number, iter_tar_files

FILES = [("k1.png", b"\x89PNG" * 300), ("k1.json", b'{"label": 1}'), ("k2.png", b""),
         ("d" * 60 + "/" + "e" * 70 + ".png", b"long path, ustar prefix or pax/GNU name"),
         ("n" * 150 + ".dcm", b"a name no ustar header can hold" * 40), ("caf\u00e9.png", b"utf-8")]


def _write(path, fmt, mode="w", mtime=946684800.0):
    with tarfile.open(path, mode, format=fmt) as tar:
        folder = tarfile.TarInfo("somedir")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        link = tarfile.TarInfo("somedir/alias")  # a link no sample holds (no extension): skipped
        link.type, link.linkname = tarfile.SYMTYPE, "k1.png"
        tar.addfile(link)
        for name, data in FILES:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), mtime
            tar.addfile(info, io.BytesIO(data))
    return path


def _read(path):
    with open_tar_stream(path) as fh:
        return list(iter_tar_files(fh))


def _reference(path):
    with tarfile.open(path, "r:*") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
@pytest.mark.parametrize("mode,suffix", [("w", ".tar"), ("w:gz", ".tar.gz"), ("w:bz2", ".tar.bz2"),
                                         ("w:xz", ".tar.xz")])
def test_reads_what_tarfile_reads(tmp_path, fmt, mode, suffix):
    path = _write(tmp_path / f"s{suffix}", fmt, mode)
    got = _read(path)
    assert got == _reference(path) == FILES  # directory and symlink skipped, long names whole


def test_ustar_prefix_and_integer_mtime(tmp_path):
    path = tmp_path / "u.tar"
    files = [f for f in FILES if len(f[0]) < 150 and f[0].isascii()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 946684800
            tar.addfile(info, io.BytesIO(data))
    assert _read(path) == files == _reference(path) and len(files) == 4  # one name needs the prefix field


def test_archive_cut_at_a_member_boundary_raises(tmp_path):
    """tarfile reads a stream that stops between two members as a whole archive (a silent loss)."""
    path = _write(tmp_path / "s.tar", tarfile.PAX_FORMAT)
    data = path.read_bytes().rstrip(b"\0")
    data += bytes(-len(data) % 512)  # cut the end-of-archive blocks only
    path.write_bytes(data)
    assert _reference(path) == FILES
    with pytest.raises(TarTruncated, match="between two members"):
        _read(path)
    path.write_bytes(data + bytes(512))  # one zero block of the two
    with pytest.raises(TarTruncated, match="end-of-archive marker"):
        _read(path)
    path.write_bytes(data + bytes(1024))
    assert _read(path) == FILES
    path.write_bytes(b"")
    with pytest.raises(TarTruncated, match="empty"):
        _read(path)


@pytest.mark.parametrize("mode,suffix", [("w", ".tar"), ("w:gz", ".tar.gz")])
def test_zeroed_header_is_damage_not_the_end(tmp_path, mode, suffix):
    plain = _write(tmp_path / "p.tar", tarfile.GNU_FORMAT)
    data = bytearray(plain.read_bytes())
    start = data.find(b"k2.png")  # the header of a member in the middle
    data[start:start + 512] = bytes(512)
    path = tmp_path / f"s{suffix}"
    path.write_bytes(gzip.compress(bytes(data)) if suffix == ".tar.gz" else bytes(data))
    with tarfile.open(path) as tar:
        assert [m.name for m in tar if m.isfile()] == ["k1.png", "k1.json"]  # tarfile: the rest is lost
    for headers_only in (False, True):
        with open_tar_stream(path) as fh, pytest.raises(TarHeaderError, match="zero block at byte .* followed by data"):
            list(iter_tar_files(fh, headers_only=headers_only))
    end = _write(tmp_path / "e.tar", tarfile.GNU_FORMAT)
    end.write_bytes(end.read_bytes() + b"junk")  # data after the end-of-archive blocks
    with pytest.raises(TarHeaderError, match="followed by data"):
        _read(end)


def _octal(n: int) -> bytes:
    return b"%011o\0" % n


def _base256(n: int) -> bytes:
    return (b"\xff" + (n % (1 << 88)).to_bytes(11, "big")) if n < 0 else b"\x80" + n.to_bytes(11, "big")


BOGUS_SIZES = {"8 GiB": _octal(8 << 30), "1 TiB": _base256(1 << 40), "2**87": _base256((1 << 87) - 1),
               "negative": _base256(-1024), "not octal": b"-0000001000\0", "0o prefix": b"0o000001000\0",
               "a little too big": None}


@pytest.mark.parametrize("what", sorted(BOGUS_SIZES))
@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_bogus_size_fields_raise_a_tar_error_and_cost_no_memory(tmp_path, what, suffix):
    import tracemalloc

    clean = _write(tmp_path / "c.tar", tarfile.GNU_FORMAT).read_bytes()
    field = BOGUS_SIZES[what] or _octal(len(clean))  # only a few KB past the end of the file
    data = set_size_field(clean, b"k1.json", field)
    path = tmp_path / f"s{suffix}"
    path.write_bytes(gzip.compress(data) if suffix == ".tar.gz" else data)
    for headers_only in (False, True):
        tracemalloc.start()
        try:
            with open_tar_stream(path) as fh, pytest.raises((TarTruncated, TarHeaderError)):
                list(iter_tar_files(fh, headers_only=headers_only))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 * CHUNK, (what, peak)  # before: an 8 GiB read buffer, MemoryError or OverflowError


@pytest.mark.parametrize("value", ["-3", "100000000000000000000", "1e20", " 3", "3_0", "9" * 5000])
def test_bad_pax_sizes_raise_header_errors(tmp_path, value):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("a.png")
        info.size, info.pax_headers = 3, {"size": "3"}
        tar.addfile(info, io.BytesIO(b"abc"))
    body = f" size={value}\n".encode()
    n = len(body) + 1
    while len(str(n)) + len(body) != n:  # the length counts its own digits
        n += 1
    record = str(n).encode() + body
    raw = buf.getvalue()
    assert raw[512:521] == b"9 size=3\n"  # the pax header's one record
    x_header = set_size_field(raw[:512], raw[:100].rstrip(b"\0"), _octal(len(record)))
    path = tmp_path / "s.tar"
    path.write_bytes(x_header + record + bytes(-len(record) % 512) + raw[1024:])
    with pytest.raises((TarHeaderError, TarTruncated)):
        _read(path)


@pytest.mark.parametrize("where", ["header", "data"])
def test_truncated_archive_raises(tmp_path, where):
    path = _write(tmp_path / "s.tar", tarfile.GNU_FORMAT)
    data = path.read_bytes()
    at = data.find(b"k1.json") + 100 if where == "header" else data.find(b"\x89PNG") + 700
    path.write_bytes(data[:at])
    with pytest.raises(TarTruncated, match="unexpected end of data"):
        _read(path)


def test_bad_checksum_raises_where_tarfile_stops_silently(tmp_path):
    path = _write(tmp_path / "s.tar", tarfile.GNU_FORMAT)
    data = bytearray(path.read_bytes())
    start = data.find(b"k1.json")  # the name field of the third member's header
    data[start] = ord("K")
    path.write_bytes(bytes(data))
    with tarfile.open(path) as tar:
        assert [m.name for m in tar if m.isfile()] == ["k1.png"]  # tarfile: the rest is lost, no error
    with pytest.raises(TarHeaderError, match="checksum"):
        _read(path)
    (tmp_path / "x.tar").write_bytes(b"this is not a tar file" * 40)
    with pytest.raises(TarHeaderError, match="not a tar file"):
        _read(tmp_path / "x.tar")


def test_numeric_fields():
    assert _number(b"0000644\0") == 0o644 and _number(b"       \0") == 0
    assert _number(b"\x80" + (10 * 2**33).to_bytes(11, "big")) == 10 * 2**33  # base-256 (> 8 GiB)
    with pytest.raises(TarHeaderError):
        _number(b"12x4\0")


@pytest.mark.parametrize("mode,suffix", [("w", ".tar"), ("w:gz", ".tar.gz")])
def test_headers_only_lists_names_and_still_finds_truncation(tmp_path, mode, suffix):
    path = _write(tmp_path / f"s{suffix}", tarfile.PAX_FORMAT, mode)
    with open_tar_stream(path) as fh:
        assert list(iter_tar_files(fh, headers_only=True)) == [(n, b"") for n, _ in FILES]
    plain = _write(tmp_path / "p.tar", tarfile.GNU_FORMAT)
    data = plain.read_bytes()
    plain.write_bytes(data[: data.find(b"\x89PNG") + 700])  # ends inside the first file's data
    with open_tar_stream(plain) as fh, pytest.raises(TarTruncated):
        list(iter_tar_files(fh, headers_only=True))


def test_listing_a_shard_with_a_damaged_header_raises(tmp_path):
    from streamaug.data.shardlist import ShardError, count_tar_samples

    path = _write(tmp_path / "s.tar", tarfile.GNU_FORMAT)
    assert count_tar_samples(path) == 5  # k1 (png + json), k2, the long path, the long name, café
    data = bytearray(path.read_bytes())
    data[data.find(b"k2.png")] = ord("K")
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="truncated or not a tar"):
        count_tar_samples(path)  # tarfile counted 1 sample here, silently


def test_a_pax_size_that_is_not_a_number_raises(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("a.png")
        info.size, info.pax_headers = 3, {"size": "3"}
        tar.addfile(info, io.BytesIO(b"abc"))
    path = tmp_path / "s.tar"
    path.write_bytes(buf.getvalue().replace(b"size=3\n", b"size=x\n"))
    with pytest.raises(TarHeaderError, match="bad pax size 'x'"):
        _read(path)
