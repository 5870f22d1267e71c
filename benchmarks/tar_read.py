"""Reading every file of a split's shards: ``tarfile`` (as WebDataset reads them) vs ``streamaug.io.tar``.

Usage: ``python benchmarks/tar_read.py --shards SHARDS [--split train] [--rounds 5]``

Both read each shard sequentially and return every regular file's bytes (``tarfile.open(path,
"r|*")`` + ``extractfile(member).read()``, vs ``iter_tar_files(open_tar_stream(path))``); the files
are in the page cache after the first round. Prints microseconds per file (median over rounds),
the ratio, and whether the shards carry a pax header per file (float mtimes do that).
"""
from __future__ import annotations

import argparse
import statistics
import tarfile
import time

from streamaug.cli.bench import add_shards_argument, shard_urls
from streamaug.io.opener import open_tar_stream
from streamaug.io.tar import iter_tar_files


def with_tarfile(urls: list[str]) -> int:
    n = 0
    for url in urls:
        with tarfile.open(url, "r|*") as tar:
            for member in tar:
                if member.isfile():
                    tar.extractfile(member).read()
                    n += 1
    return n


def with_streamaug(urls: list[str]) -> int:
    n = 0
    for url in urls:
        with open_tar_stream(url) as fh:
            for _ in iter_tar_files(fh):
                n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shards_argument(ap)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    urls = shard_urls(args.shards, args.split)
    with tarfile.open(urls[0]) as tar:
        first = tar.next()
        pax = bool(first is not None and first.pax_headers)
    times: dict[str, list[float]] = {"tarfile": [], "streamaug.io.tar": []}
    files = 0
    for _ in range(args.rounds):
        for name, fn in (("tarfile", with_tarfile), ("streamaug.io.tar", with_streamaug)):
            start = time.perf_counter()
            files = fn(urls)
            times[name].append((time.perf_counter() - start) / files * 1e6)
    print(f"{len(urls)} shards, {files} files, pax header per file: {pax}")
    print("| reader | us per file | vs tarfile |\n|---|---|---|")
    base = statistics.median(times["tarfile"])
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.1f} | {statistics.median(ts) / base:.2f} |")


if __name__ == "__main__":
    main()
