"""The models an experiment arm uses beside its classifier, trained per region and seed on the region's
KEPT rare positives (the baseline's subsample) and its normals, and cached under ``OUT``: the UNIT
translator (its best held-out step), the pix2pix inpainter and the patch scorer
(``benchmarks/btxrd_experiment.py``)."""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from btxrd_arms import Context, log

from streamaug.data.select import rare_positive_select
from streamaug.models.checkpoint import read_checkpoint
from streamaug.train.translator import TranslatorRun, chosen_checkpoint, train_translator

__all__ = ["train_region_inpainter", "train_region_scorer", "train_region_translator"]


def _train_cached(kind: str, run: Any, train: Callable[..., Path], what: str) -> Path:
    """``OUT/<kind>.pt`` of ``run`` (a translator, inpainter or scorer run config): reused when its folder
    holds a finished checkpoint of the same config, else trained afresh."""
    out = Path(run.out)
    ckpt = out / f"{kind}.pt"
    saved = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    finished = kind == "scorer" or read_checkpoint(ckpt, kind=kind)["step"] == run.steps if ckpt.exists() else False
    if finished and saved.get("run") == json.loads(json.dumps(dataclasses.asdict(run))):
        log(f"reusing {kind} {ckpt}")
        return ckpt
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    log(f"{run.region} seed {run.seed}: training {kind} on {what}, {run.steps} steps")
    ckpt = train(run, progress=False)
    log(f"{run.region} seed {run.seed}: {kind} done in {time.perf_counter() - t0:.0f}s")
    return ckpt


def train_region_translator(ctx: Context, region: str, seed: int) -> tuple[Path, dict[str, int]]:
    """A translator on the region's KEPT rare positives (the baseline's subsample) + its normals; its
    best held-out step (:func:`streamaug.train.translator.chosen_checkpoint`)."""
    select, counts = rare_positive_select(str(ctx.shards), "train", region, ctx.ratio, seed)
    b = ctx.budget
    run = TranslatorRun(shards=[str(ctx.shards)], out=str(ctx.out / "translators" / region / f"seed{seed}"),
                        preset=b["translator_preset"], steps=b["translator_steps"], patch_size=b["patch_size"],
                        s=ctx.s, n=ctx.n, region=region, split="train", resize=b["image_size"],
                        batch_size=b["translator_batch"], seed=seed, device=ctx.device,
                        sample_every=max(1, b["translator_steps"]), ckpt_every=max(1, b["translator_steps"]),
                        positives=sorted(select.positives or ()))
    what = f"{counts['positives']} kept positives (of {counts['positives_available']}) + {counts['normals']} normals"
    chosen = chosen_checkpoint(_train_cached("translator", run, train_translator, what).parent)
    log(f"{region} seed {seed}: the arms use {chosen} (step {read_checkpoint(chosen, kind='translator')['step']})")
    return chosen, counts


def train_region_inpainter(ctx: Context, region: str, seed: int) -> Path:
    """A pix2pix inpainter (the -N variant) on the region's KEPT rare positives + its normals."""
    from streamaug.train.inpainter import InpainterRun, train_inpainter

    select, counts = rare_positive_select(str(ctx.shards), "train", region, ctx.ratio, seed)
    b = ctx.budget
    run = InpainterRun(shards=[str(ctx.shards)], out=str(ctx.out / "inpainters" / region / f"seed{seed}"),
                       preset="tiny" if b["preset"] == "tiny" else "paper", steps=b["inpainter_steps"], normals=True,
                       region=region, split="train", seed=seed, device=ctx.device,
                       sample_every=max(1, b["inpainter_steps"]), ckpt_every=max(1, b["inpainter_steps"]),
                       positives=sorted(select.positives or ()))
    return _train_cached("inpainter", run, train_inpainter, f"{counts['positives']} kept positives + "
                                                              f"{counts['normals']} normals")


def train_region_scorer(ctx: Context, region: str, seed: int) -> Path:
    """A patch scorer (the site filter) on the region's KEPT rare positives' lesion crops vs its normals' sites."""
    from streamaug.train.scorer import ScorerRun, train_scorer

    select, counts = rare_positive_select(str(ctx.shards), "train", region, ctx.ratio, seed)
    b = ctx.budget
    run = ScorerRun(shards=[str(ctx.shards)], out=str(ctx.out / "scorers" / region / f"seed{seed}"),
                    patch_size=b["patch_size"], steps=b["scorer_steps"], s=ctx.s, n=ctx.n, region=region,
                    split="train", resize=b["image_size"], seed=seed, device=ctx.device,
                    positives=sorted(select.positives or ()))
    return _train_cached("scorer", run, train_scorer, f"{counts['positives']} kept positives + "
                                                      f"{counts['normals']} normals")
