"""Translator alone vs the whole SynthesisStage, and the stream with vs without synthesis.

Usage: ``python benchmarks/synthesis.py [--preset tiny|small|paper] [--device cpu|cuda] [--batch N] [--bf16]
[--filter-size S] [--threads T] [--no-stream]``

1. Patches/s of the untrained UNIT ``--preset`` translator on ``(B, 1, P, P)`` patches vs
   ``SynthesisStage.synthesize`` on ``B`` real normal BTXRD images with one site each (crop, bone
   check, translate, blend, and a ``PseudoLabel`` filter on an untrained ``drn_tiny`` scoring the
   full images at ``--filter-size`` (default 256), threshold 0), plus the stage without filter and
   the parts alone.
   Goal: stage / translator >= 0.7.
2. Images/s of ``LesionStream`` (25% synthetic) vs ``XRayShards(sites=True)``, alternating.
``--bf16`` autocasts the translator to bfloat16 as the stage does it: CUDA only.
"""
from __future__ import annotations

import argparse

import torch

from streamaug.cli.bench import add_shards_argument, shard_urls, synthesis_table
from streamaug.cli.bench_measure import compare, loader_factories, synthesis_bench

GOAL = 0.7


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny", choices=("tiny", "small", "paper"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=32, help="patches (= images) per call")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the translator (CUDA)")
    add_shards_argument(ap)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the stream comparison")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--filter-size", type=int, default=256, help="side the PseudoLabel classifier scores at")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--no-stream", action="store_true", help="skip part 2 (the stream comparison)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    urls = shard_urls(args.shards, args.split)
    s = synthesis_bench(urls, preset=args.preset, device=args.device, batch=args.batch, bf16=args.bf16,
                        rounds=args.rounds, seconds=args.seconds, filter_size=args.filter_size)
    print(f"preset {s['preset']} (patch {s['patch']}), {s['batch']} images {s['image']}, {s['filter_model']}, "
          f"{s['device']}, bf16 {s['bf16']}; per-round patches/s: {s['rounds']}")
    print(synthesis_table(s))
    print(f"stage / translator = {s['ratio']:.3f} ({'meets' if s['ratio'] >= GOAL else 'misses'} the {GOAL} goal)")
    if args.no_stream:
        return
    factories = loader_factories(urls, workers=args.workers, batch=args.batch, kinds=("stream_sites", "synth"),
                                 device=args.device, preset=args.preset)
    c = compare(factories, rounds=args.rounds, seconds=args.seconds, baseline="stream_sites")
    print(f"per-round img/s: stream+sites {c['stream_sites']['rounds']}, stream+synth {c['synth']['rounds']}")
    print(f"stream+synth / stream+sites = {c['ratio']['synth']:.3f} "
          f"({c['synth']['img_s']:.1f} vs {c['stream_sites']['img_s']:.1f} img/s, {args.workers} workers each; "
          f"synth: {max(1, args.workers // 2)} per inner loader)")


if __name__ == "__main__":
    main()
