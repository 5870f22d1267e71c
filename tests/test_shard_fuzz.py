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

import signal
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import torch

_TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(_TESTS), str(_TESTS.parent)]  # shardgen, and this checkout's streamaug when run as a script
from shardfuzz import KINDS, Clean, N, variants  # noqa: E402
from shardgen import write_manifest  # noqa: E402

from streamaug import XRayShards  # noqa: E402
from streamaug.data.select import KeySelect  # noqa: E402
from streamaug.io.errors import SampleError, ShardError  # noqa: E402
from streamaug.io.tar import READ_ERRORS, tar_samples  # noqa: E402

LIMIT_S = 10.0  # per run


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
