"""Rare-positive augmentation on BTXRD-like data, arm by arm, over seeds (Gupta et al., Tables 2-3).

    PYTHONPATH=. python benchmarks/btxrd_experiment.py --data /work/shared/data/btxrd --out /tmp/exp_out \
        --budget cpu128 --jobs 2

For each limb region, with training positives cut to 1 tumour : 10 normals (``--positive-ratio``,
drawn with the run's seed), every arm is trained at every seed. Every epoch of every arm shows each
kept real sample exactly once; the arms that add positives all add the same number, ``k - 1`` per
kept positive (``--oversample k``, default 5), so they train on the same number of samples and of
positives per epoch and differ only in what the added positives are:

  baseline               flips only (one pass: fewer samples per epoch than the arms below)
  oversample             + k - 1 copies of every kept real positive per epoch (copies spread)
  classic                + classic augmentation (affine, brightness/contrast; one pass, like baseline)
  copy_paste             + k - 1 synthetic positives per kept positive instead of the copies: crops of the
                           kept real positives pasted at normal sites
  lesion_own             + the same, made by the region's translator (trained on its KEPT rare positives
                           and normals), ranked by the region's baseline
  lesion_transfer        + the same, by the other region's translator and baseline filter (paper: TL)
  lesion_transfer_g      + the same, by the other region's translator, the region's own filter (paper: TL_G)
  oversample_copy_paste  half of the added positives copies, half copy-paste synthetic
  oversample_lesion      half copies, half lesion_own synthetic
  inpaint                + k - 1 synthetic positives per kept positive made by the region's pix2pix
                           inpainter (Xing et al., the -N variant: trained on the KEPT positives and the
                           normals): each keeps a kept real positive's lesion box and gets new surroundings
  oversample_inpaint     half copies, half inpaint synthetic

Selection arms (opt-in with ``--arms``; the same synthesizer, another filter, at the same budget):

  copy_paste_scorer      copy_paste ranked by a patch scorer (``streamaug-train scorer`` on the region's
                         kept positives and its normals, seeded like the translator): the filter looks at
                         the blended site only, not the whole image
  copy_paste_unfiltered  copy_paste, every candidate accepted (random sites)
  lesion_own_scorer      lesion_own ranked by the patch scorer
  lesion_own_unfiltered  lesion_own, no filter

Matched-source arms (opt-in): the same arm, its synthetic positives made only from normals whose age
follows the kept positives' (``--match-sources age``; ``streamaug.data.select.matched_normals``), so
they do not contradict what the image context tells of the patient (open growth plates, say):

  oversample_copy_paste_age, oversample_lesion_age

Lesion-swap arms (opt-in): new positives made from the kept positives themselves, so they keep a real
positive's context (``--synthesizer swap``: ``CopyPaste(onto="lesions")``, another kept lesion of a
similar size pasted over each one's own lesion box, widened by the crop margin):

  swap                   + k - 1 lesion-swap positives per kept positive instead of the copies
  oversample_swap        half copies, half lesion swaps
  oversample_swap_upright  the same, each pasted lesion flipped only, never turned by quarter turns
                         (``--no-paste-rot90``: a limb's bone edges keep their direction)
  oversample_swap_bone   oversample_swap, each pasted lesion from a kept positive of the same bone and
                         another patient (``--paste-match bone --paste-avoid group``: no hand lesion
                         on a humerus, never a positive's own lesion)

So ``X - oversample`` measures synthetic positives against copies of the real ones at an equal budget
(the question "does synthesis add to what the real positives give?"), not a longer epoch or a
higher positive share.

The pseudo-label filter runs in rank mode (``PseudoLabel(threshold=None)``): of the candidates scored
for each synthesis round (about two per wanted sample) it keeps the best, as many as asked. The
synthetic share is then what was asked at every seed, and no threshold can flip between "accept
everything" and "accept nothing" with the baseline's calibration (a fixed ``t`` did both on this data).
The old prior-corrected filter is gone: a shift of the logit changes neither a ranking nor a quantile.
An ablation at the first seed of one region trains ``lesion_own`` with the paper's threshold filter,
``t`` calibrated as a quantile of the validation real positives' scores (``PseudoLabel.calibrate``),
and with no filter at all.

Every table row reports, beside its result, what the arm trained on (share of real positives and of
synthetic positives among all samples seen, positives and samples per epoch) and the candidates
scored per accepted synthetic sample. Paired tests: the seed-averaged paired bootstrap vs the
baseline (and the pooled one), and every synthesis arm vs ``oversample``.

Reproducible: one torch thread (the budget's), ``torch.use_deterministic_algorithms(True,
warn_only=True)``, seeded DataLoader workers, every random draw a function of the seed and epoch.
Outputs: ``OUT/results.json``, ``OUT/results.md``, ``OUT/roc_<region>.png``, ``OUT/samples_<region>.png``,
rewritten after every seed (the tables then cover the seeds done). Every scored run is cached in
``OUT/runs/<region>/<arm>/seed<k>/scores.json`` (reused while its config and its translator / filter
checkpoints are unchanged; so is a run whose filter accepted nothing), so an interrupted experiment
continues where it stopped and a finished one re-renders its tables without training again.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from btxrd_arms import ALL_ARMS, ARMS, BUDGETS, REGIONS, TRANSFER_ARMS, Context, arm_overrides, base_arm, log
from btxrd_models import train_region_inpainter, train_region_scorer, train_region_translator
from btxrd_report import render_markdown, write_results

from streamaug.cli.pack import pack
from streamaug.data.select import rare_positive_select
from streamaug.data.shardlist import load_manifest, manifest_shards
from streamaug.eval.experiment import SeedRun, patient_groups, summarize_arm, training_makeup
from streamaug.eval.scoring import score_checkpoint
from streamaug.synth.lesion_stream import NoAcceptedCandidates
from streamaug.train.classifier import train_classifier
from streamaug.train.classifier_data import RunConfig


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def ensure_packed(data: Path, out: Path, *, metadata: Path | None = None, reuse_only: bool = False) -> Path:
    """Pack ``data`` (``metadata``, default ``data/metadata.csv``, + images + masks) into ``out`` (shards
    of 128, shuffled), or reuse ``out`` if it already holds a pack of the same folder and the same
    metadata CSV (sha256).

    Raises:
        SystemExit: ``reuse_only`` and ``out`` holds no pack of ``data`` (a given ``--shards`` is never
            overwritten).
    """
    metadata = metadata or data / "metadata.csv"
    sha = _sha256(metadata)
    if (out / "manifest.json").exists():
        source = load_manifest(out / "manifest.json").get("source", {})
        if source.get("metadata_sha256") == sha and Path(source.get("root", "")).resolve() == data.resolve():
            log(f"reusing the pack in {out}")
            return out
    if reuse_only:
        raise SystemExit(f"--shards {out}: not a pack of {data} (its manifest names another root or metadata CSV); "
                         f"pack it with python -m streamaug.cli.pack --root {data} --metadata {metadata} "
                         f"--out {out}, or leave --shards out")
    log(f"packing {data} ({metadata}) -> {out}")
    pack(data, metadata, out, shard_size=128, overwrite=True, progress=False)
    return out


def train_arm(ctx: Context, region: str, seed: int, arm: str, tag: str | None = None, *, announce: bool = True,
              **overrides: Any) -> SeedRun | None:
    """Train one classifier (or reuse its cached scores) and score it on validation and test.

    Returns None (cached too) when the synthesis stage accepted no candidate (threshold mode only).
    ``announce=False`` (a worker of ``--jobs``): log only that the run was trained, not count it.
    """
    b = ctx.budget
    out = ctx.out / "runs" / region / (tag or arm) / f"seed{seed}"
    cfg = RunConfig(train_shards=[str(ctx.shards)], val_shards=[str(ctx.shards)], train_split="train",
                    val_split="val", out=str(out), region=region, positive_ratio=ctx.ratio, preset=b["preset"],
                    image_size=b["image_size"], epochs=b["epochs"], batch_size=b["batch_size"], lr=b["lr"],
                    seed=seed, device=ctx.device, s=ctx.s, n=ctx.n, **overrides)
    inputs = {p: _sha256(Path(p)) for p in (cfg.translator, cfg.filter_classifier, cfg.inpainter)
              if p and Path(p).exists()}
    key = {"config": dataclasses.asdict(cfg), "inputs": inputs, "test": [str(ctx.test_spec), ctx.test_split]}
    cache = out / "scores.json"
    saved = json.loads(cache.read_text()) if cache.exists() else {}
    ctx.done += announce
    if saved.get("key") == key and "error" in saved:
        log(f"[{ctx.done}/{ctx.total}] {region} {tag or arm} seed {seed}: no run (cached: {saved['error'][:100]})")
        return None
    if saved.get("key") != key:
        t0 = time.perf_counter()
        shutil.rmtree(out, ignore_errors=True)  # the trainer appends to log.jsonl
        try:
            best = train_classifier(cfg, progress=False)
        except NoAcceptedCandidates as err:
            out.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"key": key, "error": str(err), "seconds": time.perf_counter() - t0}))
            log(f"[{ctx.done}/{ctx.total}] {region} {tag or arm} seed {seed}: no run ({str(err)[:100]})")
            return None
        history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        yv, sv, _ = score_checkpoint(best, str(ctx.shards), split="val", region=region, device=ctx.device)
        yt, st, kt = score_checkpoint(best, ctx.test_spec, split=ctx.test_split, region=region, device=ctx.device)
        saved = {"key": key, "y_val": yv.tolist(), "s_val": sv.tolist(), "y_test": yt.tolist(),
                 "s_test": st.tolist(), "keys_test": kt, "val_auc": max(h["val_auc"] for h in history),
                 "seconds": time.perf_counter() - t0, "history": history}
        cache.write_text(json.dumps(saved))
        if not announce:
            log(f"trained {region} {tag or arm} seed {seed} in {saved['seconds']:.0f}s")
            return None
    run = SeedRun(seed, np.asarray(saved["y_val"]), np.asarray(saved["s_val"]), np.asarray(saved["y_test"]),
                  np.asarray(saved["s_test"]), saved["keys_test"], seconds=saved["seconds"],
                  val_auc=saved["val_auc"], **training_makeup(saved["history"]), extra={"best": str(out / "best.pt")})
    from sklearn.metrics import roc_auc_score

    elapsed = time.perf_counter() - ctx.t0
    log(f"[{ctx.done}/{ctx.total}] {region} {tag or arm} seed {seed}: val AUC {run.val_auc:.3f}, test AUC "
        f"{roc_auc_score(run.y_test, run.s_test):.3f}; trained on {run.samples} samples ({run.real_positive} real "
        f"positive, {run.synthetic} synthetic), {run.seconds:.0f}s (elapsed {elapsed / 60:.1f} min)")
    return run


def _in_worker(threads: int | None, fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> None:
    if threads:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    fn(*args, **kwargs)


class Jobs:
    """``--jobs N``: train the independent runs of a phase in ``N`` forked processes (one torch thread
    each). They only fill the caches; the driver then reads every run back in order, so the results
    (and the log's numbering) do not depend on ``N``."""

    def __init__(self, n: int, threads: int | None) -> None:
        self.threads = threads
        self.pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork")) if n > 1 else None

    def run(self, calls: Sequence[tuple[Callable[..., Any], tuple, dict[str, Any]]]) -> None:
        if self.pool is None or not calls:
            return
        for future in [self.pool.submit(_in_worker, self.threads, fn, args, kwargs) for fn, args, kwargs in calls]:
            future.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def run_experiment(args: argparse.Namespace) -> dict[str, Any]:
    """The whole experiment; returns (and writes) the results dict."""
    budget = {**BUDGETS[args.budget], **{k: v for k, v in (("epochs", args.epochs),
                                                          ("translator_steps", args.translator_steps)) if v}}
    if budget["threads"]:
        torch.set_num_threads(budget["threads"])
    if args.device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    shards = ensure_packed(Path(args.data), Path(args.shards) if args.shards else out / "shards",
                           metadata=Path(args.metadata) if args.metadata else None, reuse_only=bool(args.shards))
    if args.test_data:
        test_pack = ensure_packed(Path(args.test_data), out / "shards_test")
        test_spec, test_split = manifest_shards(test_pack / "manifest.json", None), None  # every row is test data
    else:
        test_spec, test_split = str(shards), "test"
    if args.oversample < 3:
        raise SystemExit("--oversample must be >= 3 (the oversample_* arms split the k - 1 added positives)")
    ctx = Context(out, shards, test_spec, test_split, budget, args.positive_ratio, args.oversample,
                  args.device)
    regions, seeds = list(args.regions), list(range(args.seed0, args.seed0 + args.seeds))
    if "baseline" not in args.arms:
        raise SystemExit("--arms must include baseline (every other arm is compared with it; it is the filter)")
    transfer = {r: next((o for o in regions if o != r), None) for r in regions}
    arms = {r: [a for a in ALL_ARMS if a in args.arms and (transfer[r] is not None or a not in TRANSFER_ARMS)]
            for r in regions}
    ablation_region = args.ablation_region if args.ablation_region in regions else regions[0]
    args.ablation = args.ablation and "lesion_own" in arms[ablation_region]
    quantiles = list(budget["ablation_quantiles"]) if args.ablation else []
    # a translator for every region some translation arm needs (its own, or as the other region's);
    # an inpainter where an inpaint arm runs
    need_translator = {r for r in regions if {"lesion_own", "oversample_lesion"} & {base_arm(a) for a in arms[r]}} \
        | {transfer[r] for r in regions if set(TRANSFER_ARMS) & set(arms[r])}
    need_inpainter = {r for r in regions if any(a.endswith("inpaint") for a in arms[r])}
    need_scorer = {r for r in regions if any(a.endswith("_scorer") for a in arms[r])}
    n_ablation = len(quantiles) + 1 if args.ablation else 0
    ctx.total = len(seeds) * sum(len(a) for a in arms.values()) + n_ablation
    log(f"budget {args.budget}: {json.dumps(budget)}; regions {regions}; seeds {seeds}; positives cut to "
        f"{args.positive_ratio:g} per normal (seeded); {ctx.total} classifier runs; {torch.get_num_threads()} "
        "torch thread(s), deterministic algorithms")

    translators: dict[tuple[str, int], Path] = {}
    filters: dict[tuple[str, int], str] = {}
    counts: dict[str, dict[int, dict[str, int]]] = {r: {} for r in regions}
    runs: dict[str, dict[str, list[SeedRun]]] = {r: {a: [] for a in ALL_ARMS} for r in regions}
    ablation: dict[str, Any] = {}
    results: dict[str, Any] = {}
    jobs = Jobs(args.jobs, budget["threads"])
    try:
        for k, seed in enumerate(seeds):
            jobs.run([(train_region_translator, (ctx, r, seed), {}) for r in regions if r in need_translator]
                     + [(train_region_inpainter, (ctx, r, seed), {}) for r in regions if r in need_inpainter]
                     + [(train_region_scorer, (ctx, r, seed), {}) for r in regions if r in need_scorer])
            for region in regions:
                counts[region][seed] = rare_positive_select(str(ctx.shards), "train", region, ctx.ratio, seed)[1]
                if region in need_translator:
                    translators[region, seed] = train_region_translator(ctx, region, seed)[0]
                if region in need_inpainter:
                    ctx.inpainters[region, seed] = train_region_inpainter(ctx, region, seed)
                if region in need_scorer:
                    ctx.scorers[region, seed] = train_region_scorer(ctx, region, seed)
            base = {r: arm_overrides(ctx, "baseline", r, seed, translators, filters, None) for r in regions}
            jobs.run([(train_arm, (ctx, r, seed, "baseline"), {**base[r], "announce": False}) for r in regions])
            for region in regions:
                run = train_arm(ctx, region, seed, "baseline", **base[region])
                runs[region]["baseline"].append(run)
                filters[region, seed] = run.extra["best"]  # rank mode: the baseline as it is
            todo = [(region, arm, arm_overrides(ctx, arm, region, seed, translators, filters, transfer[region]))
                    for region in regions for arm in arms[region][1:]]
            variants = ablation_variants(ctx, ablation_region, seed, quantiles, translators, filters) \
                if k == 0 and args.ablation else []
            jobs.run([(train_arm, (ctx, region, seed, arm), {**kw, "announce": False}) for region, arm, kw in todo]
                     + [(train_arm, (ctx, ablation_region, seed, "lesion_own", tag), {**kw, "announce": False})
                        for tag, kw, _ in variants])
            for region, arm, kw in todo:
                run = train_arm(ctx, region, seed, arm, **kw)
                if run is not None:
                    runs[region][arm].append(run)
            if variants:
                ablation = run_ablation(ctx, ablation_region, seed, variants, runs[ablation_region])
            results = write_results(args, ctx, budget, seeds[:k + 1], regions, counts, runs, ablation,
                                    translators, t_start, final=k == len(seeds) - 1)
    finally:
        jobs.close()
    print(render_markdown(results))
    return results


def ablation_variants(ctx: Context, region: str, seed: int, quantiles: Sequence[float],
                      translators: dict[tuple[str, int], Path], filters: dict[tuple[str, int], str]
                      ) -> list[tuple[str, dict[str, Any], str]]:
    """``(tag, RunConfig fields, label)`` of the ablation runs: ``lesion_own`` with the paper's threshold
    filter (``t`` = a quantile of the validation real positives' scores, :meth:`PseudoLabel.calibrate`)
    and with no filter."""
    own = arm_overrides(ctx, "lesion_own", region, seed, translators, filters, None)
    out = [(f"ablation_lesion_own_threshold_q{round(100 * q)}",
            {**own, "filter_mode": "threshold", "filter_quantile": q},
            f"threshold, t = validation positives' {q:g} quantile") for q in quantiles]
    return out + [("ablation_lesion_own_no_filter", {**own, "filter_classifier": None}, "no filter (every candidate)")]


def run_ablation(ctx: Context, region: str, seed: int, variants: Sequence[tuple[str, dict[str, Any], str]],
                 runs: dict[str, list[SeedRun]]) -> dict[str, Any]:
    """The ablation rows: ``lesion_own`` (rank mode) at ``seed`` and each variant, vs that seed's baseline."""
    base = [r for r in runs["baseline"] if r.seed == seed]
    rank = [r for r in runs["lesion_own"] if r.seed == seed]
    groups = patient_groups(ctx.test_spec, ctx.test_split)
    rows = [summarize_arm("lesion_own, rank (the arm)", rank, base, n_boot=ctx.budget["n_boot"], groups=groups,
                          region=region)] if rank else []
    no_run = []
    for tag, kw, label in variants:
        run = train_arm(ctx, region, seed, "lesion_own", tag=tag, **kw)
        if run is None:
            no_run.append(label)
            continue
        rows.append(summarize_arm(f"lesion_own, {label}", [run], base, n_boot=ctx.budget["n_boot"], groups=groups,
                                  region=region))
    return {"region": region, "seed": seed, "rows": rows, "no_run": no_run}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder laid out like BTXRD: metadata.csv, images/, masks/")
    p.add_argument("--metadata", default=None,
                   help="the metadata CSV (paths relative to --data; default: DATA/metadata.csv), e.g. one written "
                        "by benchmarks/nih_metadata.py for the chest set")
    p.add_argument("--shards", default=None,
                   help="an existing pack of --data (python -m streamaug.cli.pack); default: pack into OUT/shards")
    p.add_argument("--test-data", default=None, help="a second such folder; all of its rows are test data")
    p.add_argument("--out", required=True, help="output folder: results, caches, figures")
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm (default: %(default)s)")
    p.add_argument("--seed0", type=int, default=0, help="first seed (default: %(default)s)")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="cpu128",
                   help="sizes and lengths (default: %(default)s)")
    p.add_argument("--regions", nargs="+", default=list(REGIONS),
                   help="values of the region column to run (default: %(default)s); the transfer arms need two")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ALL_ARMS,
                   help="arms to run (default: all but the selection arms; baseline is always needed)")
    p.add_argument("--ablation-region", default="upper_limb",
                   help="region of the filter ablation (default: %(default)s)")
    p.add_argument("--no-ablation", dest="ablation", action="store_false", help="skip the filter ablation")
    p.add_argument("--epochs", type=int, default=None, help="override the budget's epochs")
    p.add_argument("--translator-steps", type=int, default=None, help="override the budget's translator steps")
    p.add_argument("--positive-ratio", type=float, default=0.1, help="kept training positives per normal")
    p.add_argument("--oversample", type=int, default=5,
                   help="k: the arms that add positives add k - 1 per kept positive and epoch (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--jobs", type=int, default=1,
                   help="train this many runs at once, in forked processes of one torch thread each (default: 1)")
    p.add_argument("--no-record-argv", dest="record_argv", action="store_false", help="leave the command out")
    return p.parse_args(argv)


if __name__ == "__main__":
    run_experiment(parse_args())
