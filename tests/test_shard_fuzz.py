"""Fuzz: damaged copies of a small packed shard never hang, crash unclearly, or lose samples silently.

Each variant of a clean shard (byte flips in headers and data, truncations, zeroed blocks, bogus
sizes, pax sizes, gzip damage, crafted members) is streamed with ``on_error="raise"`` and
``"skip"``, with and without ``verify``, without a manifest (counts from a header scan) and with
``select`` (counts from a JSON scan), under a time limit, and checked:

* no hang, no memory blow-up (the tar reader's peak allocation is bounded), no error that does
  not name the shard;
* no sample goes missing without being counted (``skipped_samples`` + ``lost_samples``);
* with ``verify=True`` no yielded sample differs from the clean shard's.

``pytest tests/test_shard_fuzz.py`` runs 120 variants in-process and a subset through
``DataLoader`` workers; ``python tests/test_shard_fuzz.py --variants 1000`` runs a larger fuzz and
prints its figures.
"""
from __future__ import annotations

import gzip
import io
import random
import signal
import sys
import tarfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import torch

_TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(_TESTS), str(_TESTS.parent)]  # shardgen, and this checkout's streamaug when run as a script
from shardgen import write_manifest, write_shards  # noqa: E402

from streamaug import XRayShards  # noqa: E402
from streamaug.data.select import KeySelect  # noqa: E402
from streamaug.io.errors import SampleError, ShardError  # noqa: E402
from streamaug.io.tar import READ_ERRORS, tar_samples  # noqa: E402

N = 8  # samples in the fuzzed shard
LIMIT_S = 10.0  # per run
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


class _Timeout(BaseException):
    """Not an Exception: nothing in the stream may swallow it."""


def _limited(seconds: float, fn, *args):
    def expire(*_):
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _same(a: dict, b: dict) -> bool:
    meta = lambda s: {k: v for k, v in s["meta"].items() if k not in ("shard", "reader")}  # noqa: E731
    return (a["key"] == b["key"] and a["label"] == b["label"] and torch.equal(a["image"], b["image"])
            and torch.equal(a["boxes"], b["boxes"]) and meta(a) == meta(b))


def stream_once(folder: Path, shard: Path, clean: Clean, *, on_error: str, verify: bool, manifest: bool,
                workers: int = 0, extra: int = 0, select: bool = False) -> dict:
    """Stream ``folder`` once; return the outcome and every problem found (``problems``)."""
    expected = N + extra
    out: dict = {"problems": [], "outcome": "ok", "changed": 0}
    samples: list[dict] = []
    ds = None

    def run() -> None:
        nonlocal ds
        ds = XRayShards(folder, shuffle=False, on_error=on_error, verify=verify, seed=1,
                        select=KeySelect(None) if select else None)  # select: counts from a JSON scan
        if workers:
            it = iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, timeout=LIMIT_S))
            try:
                samples.extend(it)
            finally:  # not left to the garbage collector of a later loader's forked worker
                it._shutdown_workers()
        else:
            samples.extend(ds)

    try:
        _limited(LIMIT_S * (3 if workers else 1), run)
    except _Timeout:
        out["outcome"] = "hang"
        out["problems"].append("hang")
        return out
    except (ShardError, SampleError) as err:
        out["outcome"] = type(err).__name__
        if shard.name not in str(err):
            out["problems"].append(f"error without the shard's name: {err}")
        if on_error != "raise" and not (isinstance(err, ShardError) and "no usable sample" in str(err)):
            out["problems"].append(f"skip raised: {err}")
    except (MemoryError, OverflowError) as err:
        out["outcome"] = "memory"
        out["problems"].append(f"{type(err).__name__}: {err}")
        return out
    except Exception as err:  # noqa: BLE001 - any other error is a finding
        out["outcome"] = type(err).__name__
        if shard.name not in str(err):
            out["problems"].append(f"{type(err).__name__} without the shard's name: {err}")
        else:
            out["problems"].append(f"unexpected {type(err).__name__}: {err}")
    if out["outcome"] != "ok" or ds is None:
        return out
    st = ds.stats
    out["stats"] = st
    natural = st["yielded"] - st["padded"]
    mine = [s for s in samples if Path(s["meta"]["shard"]).name == shard.name]  # the other shard is clean
    keys = {s["key"] for s in mine}
    changed = {s["key"] for s in mine if s["key"] not in clean.samples or not _same(s, clean.samples[s["key"]])}
    out["changed"] = len(changed)
    missing = len(set(clean.samples) - keys)  # clean samples of the damaged shard never yielded
    counted = st["skipped_samples"] + st["lost_samples"]
    out["missing"] = missing
    if manifest and missing > counted:
        out["problems"].append(f"{missing} samples missing, {counted} counted ({st})")
    if manifest and natural + counted < expected:
        out["problems"].append(f"yielded {natural} + counted {counted} < {expected} ({st})")
    if on_error == "raise" and manifest and missing:
        out["problems"].append(f"raise: {missing} samples missing and no error ({st})")
    if verify and manifest:
        if changed:
            out["problems"].append(f"verify: changed samples yielded {sorted(changed)}")
        if natural + counted != expected:
            out["problems"].append(f"verify: yielded {natural} + counted {counted} != {expected} ({st})")
    return out


def tar_memory(path: Path) -> tuple[int, str | None]:
    """Peak bytes the tar reader allocates reading ``path`` (both modes), and the error it raises."""
    from streamaug.io.opener import open_tar_stream
    from streamaug.io.tar import iter_tar_files

    error = None
    tracemalloc.start()
    try:
        for headers_only in (False, True):
            try:
                if headers_only:
                    with open_tar_stream(path) as fh:
                        list(iter_tar_files(fh, headers_only=True))
                else:
                    list(tar_samples(str(path)))
            except READ_ERRORS as err:
                error = f"{type(err).__name__}: {err}"
        return tracemalloc.get_traced_memory()[1], error
    finally:
        tracemalloc.stop()


def fuzz(root: Path, n: int, *, workers_every: int = 0, seed: int = 0, log=None) -> dict:
    """Run ``n`` variants; return the figures (and every problem, by variant)."""
    clean = Clean(root / "clean")
    clean_a = root / "a.tar"
    clean_a.write_bytes(clean.tar)
    figures: Counter = Counter()
    problems: list[tuple[str, str]] = []
    start = time.perf_counter()
    for v, (what, data, gz) in enumerate(variants(clean, n, seed)):
        folder = root / f"v{v}"
        folder.mkdir()
        shard = folder / ("t-000001.tar.gz" if gz else "t-000001.tar")
        shard.write_bytes(data)
        clean_bytes = clean.gz if gz else clean.tar
        peak, tar_error = tar_memory(shard)
        figures["tar errors"] += tar_error is not None
        if peak > 4 << 20:
            problems.append((what, f"the tar reader allocated {peak} bytes"))
        silent: set[str] = set()
        runs = [("raise", False, True, False), ("skip", False, True, False), ("raise", True, True, False),
                ("skip", True, True, False), ("skip", False, False, False), ("skip", False, True, True)]
        for on_error, verify, manifest, select in runs:
            (folder / "manifest.json").unlink(missing_ok=True)
            if manifest:
                shard.write_bytes(clean_bytes)
                write_manifest(folder, [shard], [N])
                shard.write_bytes(data)
            res = stream_once(folder, shard, clean, on_error=on_error, verify=verify, manifest=manifest, select=select)
            figures["runs"] += 1
            figures[f"outcome {res['outcome']}"] += 1
            quiet = res["outcome"] == "ok" and not (res["stats"]["bad_shards"] or res["stats"]["skipped_samples"])
            if not verify and manifest and quiet and res["changed"]:
                silent.add("variants: verify=False yielded changed samples without a word")
            if not manifest and quiet and res["missing"]:  # a tar that reads as whole: only a manifest can tell
                silent.add("variants: no manifest, samples missing without a word")
        for finding in silent:
            figures[finding] += 1
            problems += [(what, f"{on_error} verify={verify} manifest={manifest} select={select}: {p}")
                         for p in res["problems"]]
        if workers_every and v % workers_every == 0:
            dl = root / f"w{v}"
            dl.mkdir()
            (dl / "t-000000.tar").write_bytes(clean.tar)
            other = dl / shard.name
            other.write_bytes(clean_bytes)
            write_manifest(dl, [dl / "t-000000.tar", other], [N, N])
            other.write_bytes(data)
            for on_error in ("raise", "skip"):
                res = stream_once(dl, other, clean, on_error=on_error, verify=False, manifest=True, workers=2, extra=N)
                figures["runs with 2 DataLoader workers"] += 1
                figures[f"outcome {res['outcome']}"] += 1
                problems += [(what, f"{on_error} 2 workers: {p}") for p in res["problems"]]
        if log is not None and (v + 1) % 100 == 0:
            log(f"{v + 1} variants, {len(problems)} problems, {time.perf_counter() - start:.0f} s")
    figures["variants"] = n
    figures["problems (all)"] = len(problems)
    figures["seconds"] = round(time.perf_counter() - start)
    for category in ("hang", "without the shard", "MemoryError", "OverflowError", "missing", "verify:", "skip raised"):
        figures[f"problems: {category}"] = sum(category in p for _, p in problems)
    return {"figures": dict(figures), "problems": problems}


def test_fuzz_variants_cover_every_kind(tmp_path):
    clean = Clean(tmp_path)
    made = variants(clean, 2 * len(KINDS))
    assert all(d != (clean.gz if gz else clean.tar) for _, d, gz in made)
    assert variants(clean, 2 * len(KINDS)) == made  # seeded: the same variants every run


def test_fuzz_shards(tmp_path):
    """120 variants x 6 runs in-process, every 10th also through 2 DataLoader workers: no problem."""
    result = fuzz(tmp_path, 120, workers_every=10)
    assert result["problems"] == [], "\n".join(f"{w}: {p}" for w, p in result["problems"][:20])
    assert result["figures"]["runs with 2 DataLoader workers"] == 24


def main() -> None:
    import argparse
    import json
    import tempfile

    ap = argparse.ArgumentParser(description="Fuzz XRayShards with damaged copies of a small shard.")
    ap.add_argument("--variants", type=int, default=1000)
    ap.add_argument("--workers-every", type=int, default=20, help="also stream every Nth variant with 2 workers")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        result = fuzz(Path(tmp), args.variants, workers_every=args.workers_every, seed=args.seed,
                      log=lambda m: print(m, flush=True))
    print(json.dumps(result["figures"], indent=1, sort_keys=True))
    for what, problem in result["problems"][:50]:
        print(f"PROBLEM {what}: {problem}")


if __name__ == "__main__":
    main()
