"""Epoch start-up: time to the first batches when DataLoader workers are forked, site kernels warm vs cold.

Usage: ``python benchmarks/epoch_start.py --shards DIR [--workers 2] [--epochs 3]``

``XRayShards(sites=True)`` builds a ``SiteProposer``, which loads the numba kernels in the parent,
so forked workers inherit them (``warm``). ``cold`` rebuilds the same dataset with that load
suppressed, as before the change, so every worker loads the kernels itself when it proposes its
first sites, at every epoch (workers are forked anew each epoch unless ``persistent_workers``).
Each mode runs in a fresh interpreter; prints the seconds to the first ``workers`` batches per epoch.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from streamaug.cli.bench import add_shards_argument, shard_urls

CHILD = r"""
import json, sys, time
from torch.utils.data import DataLoader
from streamaug import XRayShards, collate_xray
from streamaug.sites import _propose_kernels
shards, mode, workers, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
real = _propose_kernels.warm_up
if mode == "cold":
    _propose_kernels.warm_up = lambda: None   # the parent skips the load ...
ds = XRayShards(shards.split(","), sites=True)
_propose_kernels.warm_up = real               # ... each worker does it on its first sample
out = []
for epoch in range(epochs):
    t = time.perf_counter()
    it = iter(DataLoader(ds, batch_size=32, num_workers=workers, collate_fn=collate_xray))
    for _ in range(workers):
        next(it)
    out.append(time.perf_counter() - t)
    del it
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shards_argument(ap)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    res = {}
    for mode in ("cold", "warm"):
        out = subprocess.run([sys.executable, "-c", CHILD, ",".join(shard_urls(args.shards, args.split)), mode, str(args.workers), str(args.epochs)],
                             capture_output=True, text=True, check=True)
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{mode}: seconds to the first {args.workers} batches per epoch {[round(s, 3) for s in res[mode]]}")
    ratio = statistics.median(res["warm"]) / statistics.median(res["cold"])
    print(f"warm / cold (median epoch) = {ratio:.2f}")


if __name__ == "__main__":
    main()
