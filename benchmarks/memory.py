"""Memory over a long ``LesionStream``: RSS of the main process and of its DataLoader workers.

Usage: ``python benchmarks/memory.py --shards DIR [--batches 1500] [--every 100] [--workers 2]``

A ``LesionStream`` over the packed folder's train split (untrained ``tiny`` translator, ``PseudoLabel``
on an untrained ``drn_tiny`` at threshold 0, 25 % synthetic, sites on) is read for ``--batches``
batches; every ``--every`` batches it prints the batch, the main process's RSS, the summed RSS of the
live child processes (LesionStream runs one loader for real samples and one for synthesis sources,
each with --workers workers) and how many there are, then the least-squares slopes in MB per 1000 batches.
A stream whose memory is flat has slopes near 0 once the shuffle buffers have filled.
"""
from __future__ import annotations

import argparse

from streamaug.cli.bench import add_shards_argument, shard_urls
from streamaug.cli.bench_measure import make_lesion_stream, memory_trend


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shards_argument(ap)
    ap.add_argument("--batches", type=int, default=1500)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    ls = make_lesion_stream(shard_urls(args.shards, args.split), workers=args.workers, batch=args.batch)
    t = memory_trend(lambda: ls.iter_batches(args.batch), batches=args.batches, every=args.every)
    print("| batch | main RSS MB | workers RSS MB | live workers |\n|---|---|---|---|")
    for batch, main_mb, workers_mb, live in t["samples"]:
        print(f"| {batch} | {main_mb:.0f} | {workers_mb:.0f} | {live} |")
    print(f"{args.batches} batches in {t['seconds']:.0f} s; from batch {t['slope_from_batch']}: slope main "
          f"{t['slope_main_mb_per_1k']:+.1f} MB/1k batches, main+workers {t['slope_total_mb_per_1k']:+.1f} MB/1k batches")


if __name__ == "__main__":
    main()
