"""XRayShards vs a plain WebDataset decode loader on the same shards, workers and batch size.

Usage: ``python benchmarks/loader.py --shards SHARDS [--workers 0 2] [--seconds 4]``

Loaders, measured alternating (plain, stream+sites, stream, plain, ...) for ``--rounds`` rounds:

- ``plain wds``: ``webdataset.WebDataset(urls, shardshuffle=False).decode("torchl")`` (image and
  mask to float tensors, JSON parsed), repeated; batched with ``collate_xray``.
- ``stream+sites``: ``XRayShards(urls, resampled=True, sites=True)`` (lesion boxes from the manifest).
- ``stream``: the same without site proposal.

Prints img/s per loader (median over rounds) and stream/plain ratios (median of per-round ratios).
Goal: stream+sites / plain >= 0.95. ``--per-sample`` hands samples from the workers one by one
(``DataLoader(ds, batch_size=None)``) instead of in batches of ``--batch``.
"""
from __future__ import annotations

import argparse
import json

from streamaug.cli.bench import add_shards_argument, loader_table, shard_urls
from streamaug.cli.bench_measure import compare, loader_factories

GOAL = 0.95


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shards_argument(ap)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts")
    ap.add_argument("--seconds", type=float, default=4.0, help="timed seconds per loader per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    ap.add_argument("--batch", type=int, default=32, help="images per batch")
    ap.add_argument("--per-sample", action="store_true", help="hand samples over one by one (batch_size=None)")
    ap.add_argument("--json", default=None, help="also write the raw results here")
    args = ap.parse_args()
    urls = shard_urls(args.shards, args.split)
    results = []
    for workers in args.workers:
        factories = loader_factories(urls, workers=workers, batch=0 if args.per_sample else args.batch,
                                     kinds=("plain", "stream_sites", "stream"))
        c = compare(factories, rounds=args.rounds, seconds=args.seconds, baseline="plain")
        results.append({"dataset": f"{args.split} ({len(urls)} shards)", "workers": workers,
                        "batch": "none" if args.per_sample else args.batch, "compare": c})
        print(f"workers={workers}: per-round img/s " + ", ".join(f"{k} {c[k]['rounds']}" for k in factories),
              flush=True)
    print(loader_table(results))
    for r in results:
        ratio = r["compare"]["ratio"]["stream_sites"]
        print(f"workers={r['workers']}: stream+sites / plain = {ratio:.3f} "
              f"({'meets' if ratio >= GOAL else 'misses'} the {GOAL} goal)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
