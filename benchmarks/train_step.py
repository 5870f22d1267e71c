"""Classifier training speed on the lesion stream vs the plain stream, same run, same classifier.

Usage: ``python benchmarks/train_step.py [--shards DIR] [--quick] [--device cpu|cuda]``

Both arms train a fresh classifier (``--model``, SGD, BCE) one step per batch of ``--batch`` images
at ``--size`` px, with the same number of DataLoader worker processes in all (``2 * --workers``):

- ``plain``: ``XRayShards(resampled=True)`` batches, what training without synthesis reads, by one
  ``DataLoader`` with ``2 * --workers`` workers (pinned memory on CUDA, as LesionStream's loaders).
- ``lesion``: ``LesionStream(num_workers=--workers)``: its two inner loaders (the real samples, and
  the normals it synthesizes from, with sites proposed) have ``--workers`` each. Its
  ``--synthetic-fraction`` synthetic positives are made by an untrained UNIT ``--preset`` translator
  and ranked by a ``PseudoLabel`` filter on an untrained ``drn_tiny`` in rank mode (two candidates
  scored per wanted sample, the best kept), as in the experiment. Weights do not matter for speed.

Measured alternating (plain, lesion, then lesion, plain, ...) for ``--rounds`` rounds; prints
samples/s per arm (median over rounds) and, as the last number of the last line, lesion / plain
(median of per-round ratios). Goal: >= 0.7 on CPU, >= 0.9 on a GPU. (Before the ninth session the
plain arm had half the workers and proposed sites it did not use; see RESULTS.md.)
"""
from __future__ import annotations

import argparse

import torch

from streamaug.cli.bench import add_shards_argument, shard_urls
from streamaug.cli.bench_measure import classifier_step, compare
from streamaug.data.collate import collate_xray

GOAL = {"cpu": 0.7, "cuda": 0.9}


def factories(urls: list[str], args: argparse.Namespace) -> dict:
    """``{"plain": make, "lesion": make}``: each ``make()`` returns an iterable of batches."""
    from streamaug import LesionStream, PseudoLabel, XRayShards
    from streamaug.models import get_classifier
    from streamaug.models.unit import UNIT, unit_preset

    plain = XRayShards(urls, resampled=True, resize=args.size)
    # not persistent: each measurement shuts its workers down (bench_measure), as LesionStream's inner
    # loaders start theirs afresh; a persistent loader's next iter() would reuse the closed queues.
    # As many workers as LesionStream's two loaders have together, and pinned memory as theirs.
    loader = torch.utils.data.DataLoader(plain, batch_size=args.batch, num_workers=2 * args.workers,
                                         collate_fn=collate_xray, pin_memory=torch.device(args.device).type == "cuda")
    filt = PseudoLabel(get_classifier("drn_tiny")(), threshold=None, device=args.device)  # rank mode
    lesion = LesionStream(urls, translator=UNIT(unit_preset(args.preset)), filter=filt, device=args.device,
                          synthetic_fraction=args.synthetic_fraction, resize=args.size, num_workers=args.workers,
                          device_batch=args.batch)
    makers = {"plain": lambda: loader, "lesion": lambda: lesion.iter_batches(args.batch)}
    makers["lesion"].stream = lesion  # type: ignore[attr-defined]  # for its stats
    return makers


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shards_argument(ap)
    ap.add_argument("--quick", action="store_true", help="2 rounds of 3 s (a few minutes on 2 CPU cores)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="drn_tiny", help="the classifier being trained (streamaug.models registry)")
    ap.add_argument("--preset", default="tiny", choices=("tiny", "small", "paper"), help="UNIT translator preset")
    ap.add_argument("--size", type=int, default=128, help="image side the classifier trains at")
    ap.add_argument("--batch", type=int, default=32, help="images per training step")
    ap.add_argument("--workers", type=int, default=2,
                    help="workers per LesionStream loader (it has two); the plain loader gets twice as many")
    ap.add_argument("--synthetic-fraction", type=float, default=0.25, help="share of synthetic samples")
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds")
    ap.add_argument("--seconds", type=float, default=8.0, help="timed seconds per arm per round")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 2, 3.0
    urls = shard_urls(args.shards, args.split)
    makers = factories(urls, args)
    c = compare(makers, rounds=args.rounds, seconds=args.seconds, warmup=2,
                consume=classifier_step(args.model, args.device), baseline="plain")
    stats = makers["lesion"].stream.stats
    print(f"{args.device}, {args.model} at {args.size} px, batch {args.batch}, {2 * args.workers} workers per arm "
          f"(lesion: {args.workers} + {args.workers}), "
          f"UNIT {args.preset}, synthetic {args.synthetic_fraction}, {len(urls)} shards")
    print(f"per-round samples/s: plain {c['plain']['rounds']}, lesion {c['lesion']['rounds']}")
    print(f"lesion stream: synthetic share {stats['synthetic_share']:.3f}, candidates scored per accepted "
          f"{stats['candidates_per_accepted']:.2f}")
    ratio = c["ratio"]["lesion"]
    goal = GOAL.get(torch.device(args.device).type, 0.7)
    print(f"samples/s plain {c['plain']['img_s']:.1f}, lesion {c['lesion']['img_s']:.1f}; "
          f"{'meets' if ratio >= goal else 'misses'} the {goal} goal; lesion / plain = {ratio:.3f}")


if __name__ == "__main__":
    main()
