"""The cost of ``XRayShards(verify=...)``: samples/s with shard hashing off and on, side by side.

Usage: ``python benchmarks/verify.py [--shards DIR --split train] [--workers 0] [--rounds 5]``

Without ``--shards`` it packs phantom radiographs (``--phantom N`` of ``--size`` px, PNG, shards of
``--shard-size``) into a temporary folder with ``python -m streamaug.cli.pack``'s ``pack``, whose
manifest records each shard's sha256. Each loader reads the split once, in file order
(``shuffle=False, equalize="none"``), decoding every sample as a training stream does (no resize,
no sites): ``verify=False``, ``verify=True`` (hash the file first, then read it: a second read,
from the page cache) and ``verify="buffer"`` (one read, hashing while the shard's samples are
held in memory until its hash is checked). They run alternating for ``--rounds`` rounds after one
untimed warm-up round, each round starting with the next loader (off, first, buffer; first,
buffer, off; ...), so machine noise and the order hit each alike.

Prints samples/s per loader (median of rounds) and each ``on / off`` ratio (median of the per-round
ratios); with ``--workers 0`` also samples per CPU second of the process (less moved by other
jobs on a shared machine than wall-clock time), sha256 throughput and the shards' MB per sample.
"""
from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import torch

from streamaug import XRayShards
from streamaug.data.shardlist import expand_urls

LOADERS = {"off": False, "first": True, "buffer": "buffer"}


def phantom_shards(root: Path, n: int, size: int, shard_size: int) -> Path:
    """Pack ``n`` phantom radiographs into ``root/shards`` (all in the ``train`` split)."""
    from streamaug.cli.pack import pack
    from streamaug.phantom import write_phantom_dataset

    write_phantom_dataset(root / "raw", n - n // 4, n // 4, size=(size, size), splits=(1, 0, 0))
    pack(root / "raw", root / "raw" / "metadata.csv", root / "shards", shard_size=shard_size, progress=False)
    return root / "shards"


def samples_per_s(shards: str, split: str | None, verify: bool | str, workers: int) -> tuple[float, float, int]:
    """``(samples per wall-clock second, per CPU second of this process, samples)`` of one pass."""
    ds = XRayShards(shards, split=split, shuffle=False, equalize="none", verify=verify)
    if ds.verify and not any(i.sha256 for i in ds.infos):
        raise SystemExit(f"{shards}: its manifest records no sha256; pack the shards with streamaug.cli.pack")
    loader = ds if workers == 0 else torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
    start, cpu = time.perf_counter(), time.process_time()
    n = sum(1 for _ in loader)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if ds.stats["bad_shards"]:
        raise SystemExit(f"{ds.stats['bad_shards']} shards failed their checks: {ds.stats}")
    return n / seconds, n / cpu, n


def sha256_mb_s(paths: list[str]) -> float:
    data = [Path(p).read_bytes() for p in paths[:4]]
    start = time.perf_counter()
    for chunk in data:
        hashlib.sha256(chunk).digest()
    return sum(map(len, data)) / (time.perf_counter() - start) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", default=None, help="a packed folder (default: pack phantom shards)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: the main process)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--phantom", type=int, default=256, help="phantom images to pack without --shards")
    ap.add_argument("--size", type=int, default=256, help="phantom image size (px)")
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (DataLoader workers use 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or str(phantom_shards(Path(tmp), args.phantom, args.size, args.shard_size))
        urls = expand_urls(shards, args.split)
        for verify in LOADERS.values():  # warm-up: page cache, imports, decoder set-up
            samples_per_s(shards, args.split, verify, args.workers)
        rates: dict[str, list[float]] = {k: [] for k in LOADERS}
        cpu_rates: dict[str, list[float]] = {k: [] for k in LOADERS}
        n = 0
        names = list(LOADERS)
        for r in range(args.rounds):
            for name in names[r % 3:] + names[:r % 3]:  # each round starts with the next loader
                rate, cpu_rate, n = samples_per_s(shards, args.split, LOADERS[name], args.workers)
                rates[name].append(rate)
                cpu_rates[name].append(cpu_rate)
        total = sum(Path(u).stat().st_size for u in urls)
        print(f"{len(urls)} shards, {n} samples, {total / n / 1e6:.3f} MB per sample, workers={args.workers}, "
              f"torch threads={torch.get_num_threads()}, sha256 {sha256_mb_s(urls):.0f} MB/s")
        cpu_col = args.workers == 0  # with workers the decoding runs in other processes
        print("| verify | samples/s | vs off |" + (" samples per CPU s | vs off |" if cpu_col else "")
              + "\n|---|---|---|" + ("---|---|" if cpu_col else ""))
        for name in LOADERS:
            ratio = statistics.median(r / o for r, o in zip(rates[name], rates["off"]))
            row = f"| {name} ({LOADERS[name]!r}) | {statistics.median(rates[name]):.1f} | {ratio:.3f} |"
            if cpu_col:
                cpu_ratio = statistics.median(r / o for r, o in zip(cpu_rates[name], cpu_rates["off"]))
                row += f" {statistics.median(cpu_rates[name]):.1f} | {cpu_ratio:.3f} |"
            print(row)
        print("per-round samples/s: " + "; ".join(f"{k} {[round(r, 1) for r in v]}" for k, v in rates.items()))


if __name__ == "__main__":
    main()
