"""collate_xray stacking into shared memory (``shared=True``) vs a plain stack (``shared=False``, the default), per loader.

Usage: ``python benchmarks/collate.py --shards SHARDS [--workers 2] [--rounds 4]``

Four loaders on the same shards, workers and batch size, measured alternating: the plain
WebDataset decode (see ``benchmarks/loader.py``) and ``XRayShards(resampled=True, sites=True)``,
each batched by ``collate_xray(shared=True)`` and ``collate_xray(shared=False)``. Prints img/s
(median over rounds) and, per loader, shared / copy (median of per-round ratios). Run it again
with ``MALLOC_MMAP_THRESHOLD_=16777216 MALLOC_TRIM_THRESHOLD_=67108864`` to see glibc malloc's part
in the difference.
"""
from __future__ import annotations

import argparse
import statistics
from functools import partial

from torch.utils.data import DataLoader

from streamaug import XRayShards
from streamaug.cli.bench import add_shards_argument, shard_urls
from streamaug.cli.bench_measure import measure, plain_dataset
from streamaug.data.collate import collate_xray


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shards_argument(ap)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=4.0, help="timed seconds per loader per round")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    urls = shard_urls(args.shards, args.split)
    datasets = {"plain wds": plain_dataset(urls), "stream+sites": XRayShards(urls, resampled=True, sites=True)}
    loaders = {(name, shared): DataLoader(ds, batch_size=args.batch, num_workers=args.workers,
                                          collate_fn=partial(collate_xray, shared=shared))
               for name, ds in datasets.items() for shared in (True, False)}
    rates: dict[tuple[str, bool], list[float]] = {k: [] for k in loaders}
    for _ in range(args.rounds):
        for key, loader in loaders.items():
            rates[key].append(measure(lambda loader=loader: loader, args.seconds)["img_s"])
    print(f"workers={args.workers}, batch={args.batch}; per-round img/s: "
          + ", ".join(f"{n} {'shared' if s else 'copy'} {[round(r, 1) for r in v]}" for (n, s), v in rates.items()))
    print("| loader | shared img/s | copy img/s | shared / copy |\n|---|---|---|---|")
    for name in datasets:
        shared, copy = rates[(name, True)], rates[(name, False)]
        ratio = statistics.median(a / b for a, b in zip(shared, copy))
        print(f"| {name} | {statistics.median(shared):.1f} | {statistics.median(copy):.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
