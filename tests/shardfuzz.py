"""Damaged copies of a small packed shard, for ``test_shard_fuzz.py``.

:class:`Clean` writes the clean shard; :func:`variants` draws seeded damaged copies of it, one kind
after another (:data:`KINDS`): byte flips in headers, data and padding, truncations, zeroed blocks,
bogus size fields and pax sizes, gzip damage and crafted members.
"""
from __future__ import annotations

import gzip
import io
import random
import tarfile
from pathlib import Path

from shardgen import write_shards

from streamaug import XRayShards

N = 8  # samples in the fuzzed shard
KINDS = ("header_flip", "header_edit", "data_flip", "pad_flip", "trunc_random", "trunc_boundary", "zero_block",
         "size_field", "pax_size", "gzip", "crafted")


class Clean:
    """The clean shard: bytes, member offsets, members and the decoded samples."""

    def __init__(self, folder: Path) -> None:
        (path,) = write_shards(folder, n=N, shard_size=N, size=12, manifest=False)
        self.tar = path.read_bytes()
        with tarfile.open(path) as tar:
            self.members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        self.gz = gzip.compress(self.tar, mtime=0)
        self.samples = {s["key"]: s for s in XRayShards(path, shuffle=False, equalize="none", verify=False)}
        assert len(self.samples) == N


def _fix_checksum(header: bytearray) -> None:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)


def _edit_header(data: bytes, at: int, field: slice, value: bytes) -> bytes:
    out = bytearray(data)
    header = bytearray(out[at:at + 512])
    header[field] = value.ljust(field.stop - field.start, b"\0")[: field.stop - field.start]
    _fix_checksum(header)
    out[at:at + 512] = header
    return bytes(out)


def _tar(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buf.getvalue()


def _info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, **pax: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mtime = size, kind, 946684800
    if pax:
        info.pax_headers = pax
    return info


def _crafted(clean: Clean, rng: random.Random) -> tuple[str, bytes]:
    m = list(clean.members)
    i = rng.randrange(len(m))
    png = next(d for info, d in m if info.name.endswith(".png"))
    choices = {
        "extra sample": lambda: _tar(m + [(_info("zz.png", len(png)), png)]),
        "sample dropped": lambda: _tar(m[:i // 2 * 2] + m[i // 2 * 2 + 2:]),
        "key comes back": lambda: _tar(m + [m[i]]),
        "member twice": lambda: _tar(m[:i + 1] + [m[i]] + m[i + 1:]),
        "two samples swapped": lambda: _tar(m[2:4] + m[:2] + m[4:]),
        "member without extension": lambda: _tar(m[:i] + [(_info("README", 3), b"abc")] + m[i:]),
        "directory and symlink": lambda: _tar(m[:i] + [(_info("d", 0, tarfile.DIRTYPE), b""),
                                                       (_info("l.png", 0, tarfile.SYMTYPE), b"")] + m[i:]),
        "reserved name": lambda: _tar(m[:2] + [(_info(m[0][0].name.split(".")[0] + ".__key__", 3), b"abc")] + m[2:]),
        "empty image": lambda: _tar(m[:i] + [(_info(m[i][0].name, 0), b"")] + m[i + 1:]),
        "pax path renames a member": lambda: _tar(m[:i] + [(_info("x.png", len(m[i][1]), path=m[(i + 2) % len(m)][0].name),
                                                            m[i][1])] + m[i + 1:]),
        "pax global header": lambda: _tar([(_info("g", 0, tarfile.XGLTYPE), b"")] + m),
        "GNU long name": lambda: _tar(m[:i] + [(_info("n" * 120 + ".png", len(png)), png)] + m[i:], tarfile.GNU_FORMAT),
        "huge long-name size": lambda: _edit_header(_tar([(_info("n" * 120 + ".png", 3), b"abc")] + m, tarfile.GNU_FORMAT),
                                                    0, slice(124, 136), b"%011o\0" % (8 << 30)),
        "bytes after the end": lambda: clean.tar + b"\x01" * rng.randrange(1, 600),
        "nested tar": lambda: _tar(m[:i] + [(_info("inner.tar", len(clean.tar)), clean.tar)] + m[i:]),
    }
    name = rng.choice(sorted(choices))
    return f"crafted: {name}", choices[name]()


def _pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    n = len(body) + 1
    while len(str(n)) + len(body) != n:  # the length counts its own digits
        n += 1
    return str(n).encode() + body


def _block(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def _pax_size(clean: Clean, rng: random.Random) -> tuple[str, bytes]:
    """A pax header whose ``size`` record lies (or is not a number) before one member."""
    i = rng.randrange(len(clean.members))
    value = rng.choice(["100000000000000000000", "1e20", "-1", str(clean.members[i][0].size + rng.randrange(1, 5000)),
                        str(max(0, clean.members[i][0].size - rng.randrange(1, 100))), "0", " 7", "9" * 30])
    out = b""
    for j, (info, data) in enumerate(clean.members):
        if j == i:
            record = _pax_record("size", value)
            out += _info("././@PaxHeader", len(record), tarfile.XHDTYPE).tobuf(tarfile.USTAR_FORMAT) + _block(record)
        out += info.tobuf(tarfile.USTAR_FORMAT) + _block(data)
    return f"pax size {value[:24]!r} on {clean.members[i][0].name}", out + bytes(1024)


def make_variant(clean: Clean, kind: str, rng: random.Random) -> tuple[str, bytes, bool]:
    """``(description, damaged bytes, gzip)``: one damaged copy of the clean shard."""
    data = bytearray(clean.tar)
    heads = [info.offset for info, _ in clean.members]
    spans = [(info.offset_data, info.offset_data + info.size) for info, _ in clean.members if info.size]
    end = max(b for _, b in spans)
    if kind == "header_flip":
        at = rng.choice(heads) + rng.randrange(512)
        data[at] ^= rng.randrange(1, 256)
        return f"header byte {at} flipped", bytes(data), False
    if kind == "header_edit":  # a flip whose header checksum was fixed: the damage must be found otherwise
        head = rng.choice(heads)
        field = rng.choice([(0, 100), (100, 124), (124, 136), (156, 157), (257, 265), (345, 500)])
        at = head + rng.randrange(*field)
        data[at] ^= rng.randrange(1, 256)
        header = bytearray(data[head:head + 512])
        _fix_checksum(header)
        data[head:head + 512] = header
        return f"header byte {at} changed, checksum fixed", bytes(data), False
    if kind == "data_flip":
        a, b = rng.choice(spans)
        at = rng.randrange(a, b)
        data[at] ^= rng.randrange(1, 256)
        return f"data byte {at} flipped", bytes(data), False
    if kind == "pad_flip":
        at = rng.randrange(end, len(data)) if rng.random() < 0.5 else next(
            (b + rng.randrange(-b % 512) for a, b in spans if b % 512), end)
        data[at] ^= rng.randrange(1, 256)
        return f"padding byte {at} flipped", bytes(data), False
    if kind == "trunc_random":
        at = rng.randrange(len(data))
        return f"cut at byte {at}", bytes(data[:at]), False
    if kind == "trunc_boundary":
        at = rng.choice(heads[1:] + [-(-end // 512) * 512, -(-end // 512) * 512 + 512])
        return f"cut at member boundary {at}", bytes(data[:at]), False
    if kind == "zero_block":
        block = rng.choice([b for b in range(-(-end // 512)) if any(data[b * 512:b * 512 + 512])])
        data[block * 512:block * 512 + 512] = bytes(512)
        return f"block {block} zeroed", bytes(data), False
    if kind == "size_field":
        head = rng.choice(heads)
        info = next(i for i, _ in clean.members if i.offset == head)
        value = rng.choice([-1, -(1 << 40), 8 << 30, 1 << 40, (1 << 87) - 1, info.size + 1, info.size + 512,
                            max(0, info.size - 1), 0, len(data) * 4])
        field = (b"\xff" + (value % (1 << 88)).to_bytes(11, "big") if value < 0 else
                 b"\x80" + value.to_bytes(11, "big") if value >= 8 << 30 else b"%011o\0" % value)
        return f"size of the member at {head} set to {value}", _edit_header(bytes(data), head, slice(124, 136), field), False
    if kind == "pax_size":
        what, out = _pax_size(clean, rng)
        return what, out, False
    if kind == "gzip":
        gz = bytearray(clean.gz)
        how = rng.choice(["flip", "flip header", "cut", "trailing garbage", "flip trailer"])
        if how == "flip":
            at = rng.randrange(10, len(gz) - 8)
            gz[at] ^= rng.randrange(1, 256)
        elif how == "flip header":
            at = rng.randrange(10)
            gz[at] ^= rng.randrange(1, 256)
        elif how == "flip trailer":
            at = rng.randrange(len(gz) - 8, len(gz))
            gz[at] ^= rng.randrange(1, 256)
        elif how == "cut":
            at = rng.randrange(len(gz))
            gz = gz[:at]
        else:
            at = len(gz)
            gz += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        return f"gzip {how} at {at}", bytes(gz), True
    what, out = _crafted(clean, rng)
    return what, out, False


def variants(clean: Clean, n: int, seed: int = 0) -> list[tuple[str, bytes, bool]]:
    """``n`` variants, the kinds in turn, each drawn from its own seeded generator."""
    out = []
    for v in range(n):
        kind = KINDS[v % len(KINDS)]
        out.append(make_variant(clean, kind, random.Random(f"{seed}-{v}")))
    return out
