"""Real-data check of LesionStream's mix on packed BTXRD shards (a script; tests/test_realdata_mix.py runs it small).

For a stub filter that accepts candidates at a given rate, the share of real positives among the
stream's real samples, against their share in the source (train split, one region); then the
candidates scored per accepted sample in ranked mode with a PseudoLabel on an untrained drn_tiny.

    python -m streamaug.cli.pack --root ../shared/data/btxrd --metadata ../shared/data/btxrd/metadata.csv \\
        --out /tmp/synth_shards --shard-size 256
    python -m tests.realdata_mix --shards /tmp/synth_shards --samples 2000   # from the checkout
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch

from streamaug import LesionStream, PseudoLabel
from streamaug.data.select import rare_positive_select
from streamaug.models import get_classifier
from streamaug.models.registry import IdentityConfig, IdentityTranslator


class RateFilter:
    """Accepts each candidate with probability ``rate`` (seeded; a stand-in for a pseudo-labeller)."""

    def __init__(self, rate: float, seed: int = 0) -> None:
        self.rate, self.generator = rate, torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = torch.rand(len(images), generator=self.generator)
        return scores < self.rate, scores


def pack_rows(root: Path, rows: list[dict[str, str]], out: Path, shard_size: int = 32) -> Path:
    """Pack the given metadata rows of ``root`` into ``out / "shards"`` (their CSV goes to ``out``)."""
    from streamaug.cli.pack import pack

    table = out / "rows.csv"
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    pack(root, table, out / "shards", shard_size=shard_size, progress=False)
    return out / "shards"


def measure(shards: str, *, rates=(0.02, 1.0), samples: int = 2000, ranked_samples: int = 200,
            region: str = "lower_limb", positive_ratio: float | None = None, fraction: float = 0.25,
            seed: int = 0) -> dict:
    select, counts = rare_positive_select(shards, "train", region, positive_ratio, seed)
    out = {"source": {**counts, "positive_share": counts["positives"] / (counts["positives"] + counts["normals"])},
           "synthetic_fraction": fraction, "rates": {}}
    translator = IdentityTranslator(IdentityConfig(patch_size=64))
    real_keys = []
    for rate in rates:
        t0 = time.perf_counter()
        stream = LesionStream(shards, split="train", select=select, translator=translator, filter=RateFilter(rate),
                              synthetic_fraction=fraction, epoch_length=samples, seed=seed)
        emitted = list(stream)
        real = [s for s in emitted if not s["synthetic"]]
        real_keys.append([s["key"] for s in real])
        out["rates"][str(rate)] = {
            "real_positive_share": sum(s["label"] == 1 for s in real) / len(real), "real": len(real),
            "synthetic": len(emitted) - len(real), "candidates_per_accepted": stream.stats["candidates_per_accepted"],
            "seconds": round(time.perf_counter() - t0, 1)}
    out["same_real_samples_at_every_rate"] = all(k == real_keys[0] for k in real_keys)
    if not ranked_samples:
        return out
    ranked = PseudoLabel(get_classifier("drn_tiny")(), threshold=None, input_size=128)
    stream = LesionStream(shards, split="train", select=select, translator=translator, filter=ranked,
                          synthetic_fraction=fraction, epoch_length=ranked_samples, seed=seed)
    n_syn = sum(s["synthetic"] for s in stream)
    out["ranked"] = {"synthetic": int(n_syn), "generated": stream.stats["generated"],
                     "accepted": stream.stats["accepted"],
                     "candidates_per_accepted": stream.stats["candidates_per_accepted"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", default="/tmp/synth_shards")
    ap.add_argument("--rates", type=float, nargs="+", default=[0.02, 1.0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--ranked-samples", type=int, default=200)
    ap.add_argument("--region", default="lower_limb")
    ap.add_argument("--positive-ratio", type=float, default=None, help="rare setting, e.g. 0.1")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(json.dumps(measure(args.shards, rates=args.rates, samples=args.samples, ranked_samples=args.ranked_samples,
                             region=args.region, positive_ratio=args.positive_ratio), indent=1))


if __name__ == "__main__":
    main()
