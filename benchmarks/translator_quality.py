"""Translator quality, the original recipe vs the new one, side by side on the same held-out patches.

Usage::

    python benchmarks/translator_quality.py --shards PACKED --region lower_limb --steps 1200 --out DIR

Trains one ``--preset`` translator per arm with ``streamaug.train.translator`` on the ``--train-split``
images of ``--region``, all arms for the same number of steps (same seed; per-step cost differs by
a few percent, so equal steps is the fairer budget on a shared machine, and each arm's wall time is
printed), then scores every arm on ONE fixed held-out set that no arm trained on: the
``--heldout-split`` patches of the region (real lesion crops, 4 random per box, and normal crops at
matched boxes), with :class:`streamaug.train.quality.TranslationScore` (KID between translated normal
and real lesion patches on fixed random features; lower is better; ``vs untranslated`` < 1: the
translation moved normal patches towards real lesions). Arms (``--arms``):

- ``old``: the original recipe: one crop per lesion box, sets cut to equal size, horizontal flips
  only, all training images (no hold-out), UNIT's lr 1e-4, the last checkpoint.
- ``new``: the ``TranslatorRun`` defaults (4 crops per box, every normal patch, horizontal flips,
  the preset's lr, 10 % of groups held out to pick ``best.pt``); scored last and best.
- ``new+diffaug``, ``new+centre``, ``new+1crop``, ``new+all``: ``new`` with DiffAugment (color,
  translation, cutout) / boxes at the crop centre / one crop per box / flips, rot90s and jitter.

Prints one row per arm and checkpoint with its KID and the ratio to ``old``'s; writes a sample grid
per arm (the same 8 held-out normal patches: original / translated / blended) to ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path

import torch

from streamaug.models.checkpoint import load_translator
from streamaug.train.patches import HELDOUT_CROPS_PER_BOX, build_patch_sets
from streamaug.train.quality import TranslationScore
from streamaug.train.translator import TranslatorRun, train_translator, write_samples

ARMS = {
    "old": dict(crops_per_box=1, balance_sets=True, augment="hflip", holdout=0.0, score_every=0, lr=1e-4),
    "new": {},
    "new+diffaug": dict(diffaug=["color", "translation", "cutout"]),
    "new+centre": dict(centre=True),
    "new+1crop": dict(crops_per_box=1),
    "new+all": dict(augment="all"),
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", required=True, help="packed folder (python -m streamaug.cli.pack)")
    ap.add_argument("--out", required=True, help="run folders, sample grids")
    ap.add_argument("--region", default="lower_limb", help="images of this region only")
    ap.add_argument("--train-split", default="train", help="split the translators train on")
    ap.add_argument("--heldout-split", default="val", help="split the held-out patches come from")
    ap.add_argument("--arms", nargs="+", default=["old", "new"], choices=sorted(ARMS), help="arms to train")
    ap.add_argument("--steps", type=int, default=1200, help="training steps per arm")
    ap.add_argument("--score-every", type=int, default=100, help="best.pt selection interval of the new arms")
    ap.add_argument("--preset", default="tiny", help="UNIT preset")
    ap.add_argument("--lr", type=float, default=None,
                    help="Adam learning rate of every arm; default: old 1e-4 (as it was), the others the preset's")
    ap.add_argument("--seed", type=int, default=0, help="seed of every arm")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)

    base = TranslatorRun(shards=[args.shards], preset=args.preset, steps=args.steps, region=args.region,
                         split=args.train_split, seed=args.seed, score_every=args.score_every,
                         sample_every=args.steps, ckpt_every=args.steps)
    held = build_patch_sets(args.shards, patch_size=_patch_size(args.preset), s=base.s, n=base.n, region=args.region,
                            split=args.heldout_split, seed=12345, crops_per_box=HELDOUT_CROPS_PER_BOX, progress=False)
    score = TranslationScore(held.normal, held.lesion)
    grid_normals = held.normal[torch.randperm(len(held.normal), generator=torch.Generator().manual_seed(0))[:8]]
    print(f"held-out ({args.heldout_split} split, {args.region}): {len(held.lesion)} lesion patches of "
          f"{held.info['lesion_images']} images, {len(held.normal)} normal patches of {held.info['normal_images']} "
          f"images; untranslated KID {score.kid_identity:.5f}")
    rows = []
    for arm in args.arms:
        run = dataclasses.replace(base, out=str(out / arm), **{**ARMS[arm], **({"lr": args.lr} if args.lr else {})})
        shutil.rmtree(out / arm, ignore_errors=True)  # each arm trains afresh (a run refuses a used folder)
        t0 = time.perf_counter()
        last = train_translator(run, progress=False)
        seconds = time.perf_counter() - t0
        info = load_translator(last).meta["extra"]["data"]
        for kind, path in (("last", last), ("best", last.with_name("best.pt"))):
            if not path.exists():
                continue
            model = load_translator(path)
            result = score(model.translate)
            rows.append((arm, kind, model.meta["step"], model.meta["config"]["lr"], info, seconds, result))
            if kind == ("best" if arm != "old" else "last"):
                write_samples(out / f"samples_{arm}.png", model, grid_normals, run.blend_n)
    old = next((r[-1]["kid"] for r in rows if r[0] == "old"), None)
    print(f"\n{args.steps} steps per arm, preset {args.preset}, seed {args.seed}; KID lower is better")
    print("| arm | ckpt | step | lr | lesion / normal patches | train seconds | KID | vs untranslated | KID / old |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arm, kind, step, lr, info, seconds, r in rows:
        ratio = f"{r['kid'] / old:.3f}" if old else "-"
        patches = f"{info['lesion_patches']} / {info['normal_patches']}"
        print(f"| {arm} | {kind} | {step} | {lr:g} | {patches} | {seconds:.0f} | {r['kid']:.5f} | {r['kid_ratio']:.3f} "
              f"| {ratio} |")
    print(f"sample grids: {', '.join(str(out / f'samples_{a}.png') for a in args.arms)}")


def _patch_size(preset: str) -> int:
    from streamaug.models.unit import unit_preset

    return unit_preset(preset).patch_size


if __name__ == "__main__":
    main()
