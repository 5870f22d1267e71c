"""Rare-positive augmentation on BTXRD-like data, arm by arm, over seeds (Gupta et al., Tables 2-3).

    python benchmarks/btxrd_experiment.py --data /work/shared/data/btxrd --out /tmp/exp_out --budget cpu

For each limb region, with training positives cut to 1 tumour : 10 normals (``--positive-ratio``,
drawn with the run's seed), five arms are trained at every seed:

  (a) baseline            flips only
  (b) oversample          baseline + every kept positive repeated ``oversample`` times per epoch
  (c) classic             baseline + classic augmentation (affine + brightness/contrast)
  (d) lesion (own)        on-the-fly lesion stream: the region's translator (trained on the KEPT rare
                          positives + normals of the region) and the region's baseline as filter
  (e) lesion (transfer)   the other region's translator and baseline filter

The pseudo-label threshold ``t`` is grid-searched on validation AUC (the ablation table) on one
region at the first seed and then used everywhere (``--budget full``: every region at the first seed).
Outputs: ``OUT/results.json``, ``OUT/results.md``, ``OUT/roc_<region>.png``, ``OUT/samples_<region>.png``.
Every scored run is cached in ``OUT/runs/<region>/<arm>/seed<k>/scores.json`` (reused when its config
is unchanged; so is a run whose filter accepted nothing), so an interrupted experiment continues where
it stopped and a finished one re-renders its tables without training again.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from streamaug.eval import plot_roc
from streamaug.eval.__main__ import score_checkpoint
from streamaug.eval.experiment import (SeedRun, grid_search_threshold, markdown_table, pool_runs, prior_corrected_filter,
                                  summarize_arm)
from streamaug.cli.pack import pack
from streamaug.data.shardlist import load_manifest, manifest_shards
from streamaug.models.checkpoint import read_checkpoint
from streamaug.synth.lesion_stream import NoAcceptedCandidates
from streamaug.train.classifier import train_classifier
from streamaug.data.select import KeySelect, rare_positive_select
from streamaug.train.classifier_data import RunConfig
from streamaug.train.translator import TranslatorRun, train_translator

REGIONS = ("upper_limb", "lower_limb")
ARMS = ("baseline", "oversample", "classic", "lesion_own", "lesion_transfer")

# cpu: 18 min measured on 2 shared CPU cores (one torch thread; the lesion stream at 10 % synthetic because
# every accepted positive costs ~70 filtered candidates here); cpu128: a stronger baseline at 128 px
# (45 min measured on the same machine, see RESULTS.md); full: paper-like presets for one GPU.
BUDGETS: dict[str, dict[str, Any]] = {
    "test": dict(preset="tiny", image_size=64, epochs=1, batch_size=16, lr=1e-3, translator_preset="tiny",
                 patch_size=32, translator_steps=3, translator_batch=4, thresholds=(0.5, 0.9), n_boot=200,
                 grid="first", threads=1, synthetic_fraction=0.25),
    "cpu": dict(preset="tiny", image_size=96, epochs=4, batch_size=32, lr=1e-3, translator_preset="tiny",
                patch_size=32, translator_steps=300, translator_batch=8, thresholds=(0.70, 0.85, 0.90, 0.95),
                n_boot=2000, grid="first", threads=1, synthetic_fraction=0.1),
    "cpu128": dict(preset="tiny", image_size=128, epochs=6, batch_size=32, lr=1e-3, translator_preset="tiny",
                   patch_size=32, translator_steps=300, translator_batch=8, thresholds=(0.70, 0.85, 0.90, 0.95),
                   n_boot=2000, grid="first", threads=1, synthetic_fraction=0.1),
    "full": dict(preset="paper", image_size=256, epochs=30, batch_size=32, lr=1e-4, translator_preset="paper",
                 patch_size=128, translator_steps=20000, translator_batch=8, thresholds=(0.70, 0.85, 0.90, 0.95),
                 n_boot=2000, grid="all", threads=None, synthetic_fraction=0.25),
}


def log(msg: str) -> None:
    """Progress line with a timestamp (flushed: the run is usually followed through a log file)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ensure_packed(data: Path, out: Path) -> Path:
    """Pack ``data`` (metadata.csv + images + masks) into ``out``, or reuse ``out`` if it already holds
    a pack of the same folder and the same metadata.csv (sha256)."""
    sha = hashlib.sha256((data / "metadata.csv").read_bytes()).hexdigest()
    if (out / "manifest.json").exists():
        source = load_manifest(out / "manifest.json").get("source", {})
        if source.get("metadata_sha256") == sha and Path(source.get("root", "")).resolve() == data.resolve():
            log(f"reusing the pack in {out}")
            return out
    log(f"packing {data} -> {out}")
    pack(data, data / "metadata.csv", out, shard_size=256, overwrite=True, progress=False)
    return out


@dataclasses.dataclass
class Context:
    """What every run of one experiment shares."""

    out: Path
    shards: Path
    test_spec: Any  # shard spec of the test data
    test_split: str | None
    budget: dict[str, Any]
    ratio: float
    oversample: int
    fraction: float
    device: str
    s: float = 1.5
    n: int = 7
    done: int = 0
    total: int = 0
    t0: float = dataclasses.field(default_factory=time.perf_counter)


def train_arm(ctx: Context, region: str, seed: int, arm: str, tag: str | None = None, **overrides: Any) -> SeedRun:
    """Train one classifier (or reuse its cached scores) and score it on validation and test."""
    b = ctx.budget
    out = ctx.out / "runs" / region / (tag or arm) / f"seed{seed}"
    cfg = RunConfig(train_shards=[str(ctx.shards)], val_shards=[str(ctx.shards)], train_split="train",
                    val_split="val", out=str(out), region=region, positive_ratio=ctx.ratio, preset=b["preset"],
                    image_size=b["image_size"], epochs=b["epochs"], batch_size=b["batch_size"], lr=b["lr"],
                    seed=seed, device=ctx.device, s=ctx.s, n=ctx.n, **overrides)
    key = {"config": dataclasses.asdict(cfg), "test": [str(ctx.test_spec), ctx.test_split]}
    cache = out / "scores.json"
    saved = json.loads(cache.read_text()) if cache.exists() else {}
    if saved.get("key") == key and "error" in saved:
        raise NoAcceptedCandidates(saved["error"])  # the same config failed before: not tried again
    if saved.get("key") != key:
        t0 = time.perf_counter()
        shutil.rmtree(out, ignore_errors=True)  # the trainer appends to log.jsonl
        try:
            best = train_classifier(cfg, progress=False)
        except NoAcceptedCandidates as err:
            out.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"key": key, "error": str(err), "seconds": time.perf_counter() - t0}))
            raise
        history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        yv, sv, _ = score_checkpoint(best, str(ctx.shards), split="val", region=region, device=ctx.device)
        yt, st, kt = score_checkpoint(best, ctx.test_spec, split=ctx.test_split, region=region, device=ctx.device)
        saved = {"key": key, "y_val": yv.tolist(), "s_val": sv.tolist(), "y_test": yt.tolist(),
                 "s_test": st.tolist(), "keys_test": kt, "val_auc": max(h["val_auc"] for h in history),
                 "synthetic": sum(h["synthetic"] for h in history),
                 "generated": max((h.get("acceptance", {}).get("generated", 0) for h in history), default=0),
                 "seconds": time.perf_counter() - t0, "history": history}
        cache.write_text(json.dumps(saved))
    run = SeedRun(seed, np.asarray(saved["y_val"]), np.asarray(saved["s_val"]), np.asarray(saved["y_test"]),
                  np.asarray(saved["s_test"]), saved["keys_test"], saved["synthetic"], saved["generated"],
                  max((h.get("acceptance", {}).get("accepted", 0) for h in saved["history"]), default=0),
                  saved["seconds"], saved["val_auc"], extra={"best": str(out / "best.pt")})
    ctx.done += 1
    from sklearn.metrics import roc_auc_score

    log(f"[{ctx.done}/{ctx.total}] {region} {tag or arm} seed {seed}: val AUC {run.val_auc:.3f}, test AUC "
        f"{roc_auc_score(run.y_test, run.s_test):.3f}, {run.synthetic} synthetic, {run.seconds:.0f}s "
        f"(elapsed {time.perf_counter() - ctx.t0:.0f}s)")
    return run


def lesion_arm(ctx: Context, region: str, seed: int, arm: str, translator: Path, filt: str,
               thresholds: Sequence[float]) -> SeedRun | None:
    """Train a lesion-stream arm at the first threshold of ``thresholds`` whose filter accepts
    candidates (the stream stops when none passes in 50 batches); None when no threshold works."""
    for t in thresholds:
        try:
            run = train_arm(ctx, region, seed, arm, tag=f"{arm}_t{t:.2f}", translator=str(translator),
                            filter_classifier=filt, filter_threshold=t, stream="lesion", augment="flip",
                            synthetic_fraction=ctx.fraction)
        except NoAcceptedCandidates as err:
            log(f"{region} {arm} seed {seed}, t = {t:.2f}: no run ({str(err)[:120]}...)")
            continue
        run.extra["threshold"] = t
        return run
    return None


def train_region_translator(ctx: Context, region: str, seed: int) -> tuple[Path, dict[str, int]]:
    """A translator on the region's KEPT rare positives (the baseline's subsample) + its normals."""
    select, counts = rare_positive_select(str(ctx.shards), "train", region, ctx.ratio, seed)
    b = ctx.budget
    out = ctx.out / "translators" / region / f"seed{seed}"
    run = TranslatorRun(shards=[str(ctx.shards)], out=str(out), preset=b["translator_preset"],
                        steps=b["translator_steps"], patch_size=b["patch_size"], s=ctx.s, n=ctx.n, region=region,
                        split="train", resize=b["image_size"], batch_size=b["translator_batch"], seed=seed,
                        device=ctx.device, sample_every=max(1, b["translator_steps"]), ckpt_every=max(1, b["translator_steps"]),
                        positives=sorted(select.positives or ()))
    ckpt = out / "translator.pt"
    saved = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    if ckpt.exists() and saved.get("run") == json.loads(json.dumps(dataclasses.asdict(run))) \
            and read_checkpoint(ckpt)["step"] == run.steps:
        log(f"reusing translator {ckpt}")
        return ckpt, counts
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    log(f"{region} seed {seed}: training translator on {counts['positives']} kept positives "
        f"(of {counts['positives_available']}) + {counts['normals']} normals, {run.steps} steps")
    ckpt = train_translator(run, progress=False)
    log(f"{region} seed {seed}: translator done in {time.perf_counter() - t0:.0f}s")
    return ckpt, counts


def sample_grid(ctx: Context, region: str, translator: Path, path: Path, k: int = 6) -> Path | None:
    """Original / translated / blended on real test normals of ``region`` through the device stage."""
    from streamaug.data.collate import collate_xray
    from streamaug.sites import LesionBoxBank, SiteProposer
    from streamaug.data.stream import XRayShards
    from streamaug.synth.ops import paste_blend
    from streamaug.eval.plots import save_sample_grid
    from streamaug.synth.stage import SynthesisStage

    size = ctx.budget["image_size"]
    records = [r for r in load_manifest(ctx.shards / "manifest.json")["lesion_boxes"]
               if r.get("split") == "train" and r.get("region") == region]
    sites = SiteProposer(LesionBoxBank.from_records(records), s=ctx.s, n=ctx.n, seed=0)
    ds = XRayShards(ctx.test_spec, split=ctx.test_split, shuffle=False, resize=size, sites=sites,
                    select=KeySelect(region), equalize="none", distributed=False)
    normals = []
    for x in ds:
        if x["label"] == 0 and len(x["sites"]):
            normals.append(x)
        if len(normals) == k:
            break
    if not normals:
        return None
    batch = collate_xray(normals)
    stage = SynthesisStage(translator, min_intensity=None, device=ctx.device)
    boxes, source = stage.choose_sites(batch["sites"], list(range(len(normals))))
    res = stage.synthesize(batch["image"], boxes, source)
    raw = paste_blend(batch["image"][res.source.cpu()].to(ctx.device), res.translated, res.boxes,
                      torch.arange(len(res.boxes), device=res.boxes.device), n=1e6)  # near-flat mask
    rows = [torch.stack([batch["image"][i], raw[j].cpu(), res.images[j].cpu()])
            for j, i in enumerate(res.source.tolist())]
    return save_sample_grid(path, rows, titles=("original", "translated", "blended"),
                            row_titles=[normals[i]["key"] for i in res.source.tolist()])


def run_experiment(args: argparse.Namespace) -> dict[str, Any]:
    """The whole experiment; returns (and writes) the results dict."""
    budget = {**BUDGETS[args.budget], **({"epochs": args.epochs} if args.epochs else {})}
    if budget["threads"]:
        torch.set_num_threads(budget["threads"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    shards = ensure_packed(Path(args.data), out / "shards")
    if args.test_data:
        test_pack = ensure_packed(Path(args.test_data), out / "shards_test")
        test_spec, test_split = manifest_shards(test_pack / "manifest.json", None), None  # every row is test data
    else:
        test_spec, test_split = str(shards), "test"
    fraction = args.synthetic_fraction if args.synthetic_fraction is not None else budget["synthetic_fraction"]
    ctx = Context(out, shards, test_spec, test_split, budget, args.positive_ratio, args.oversample, fraction,
                  args.device)
    regions, seeds = list(args.regions), list(range(args.seed0, args.seed0 + args.seeds))
    transfer = {r: next((o for o in REGIONS if o != r and o in regions), None) for r in regions}
    grid_regions = regions if budget["grid"] == "all" else [args.grid_region if args.grid_region in regions
                                                             else regions[0]]
    n_t = len(budget["thresholds"])
    ctx.total = len(regions) * len(seeds) * 4 + sum(v is not None for v in transfer.values()) * len(seeds) \
        + len(grid_regions) * (n_t - 1)
    log(f"budget {args.budget}: {json.dumps(budget)}; regions {regions}; seeds {seeds}; positives cut to "
        f"{args.positive_ratio:g} per normal (seeded); {ctx.total} classifier runs")

    translators: dict[tuple[str, int], Path] = {}
    filters: dict[tuple[str, int], str] = {}
    counts: dict[str, dict[int, dict[str, int]]] = {r: {} for r in regions}
    runs: dict[str, dict[str, list[SeedRun]]] = {r: {a: [] for a in ARMS} for r in regions}
    for region in regions:
        for seed in seeds:
            translators[region, seed], counts[region][seed] = train_region_translator(ctx, region, seed)
            runs[region]["baseline"].append(train_arm(ctx, region, seed, "baseline", augment="flip"))
            c = counts[region][seed]
            filters[region, seed] = prior_corrected_filter(runs[region]["baseline"][-1].extra["best"], c["positives"],
                                                           c["normals"], ctx.out / "filters" / region / f"seed{seed}.pt")

    ablation: dict[str, Any] = {}
    chosen: dict[str, float] = {}
    grid_t = list(budget["thresholds"])
    for region in grid_regions:  # grid search of t on validation AUC at the first seed
        seed, base = seeds[0], runs[region]["baseline"][0]
        tried: dict[float, SeedRun | None] = {}

        def at(t: float, region: str = region, seed: int = seed,
               tried: dict[float, SeedRun | None] = tried) -> tuple[float, SeedRun | None]:
            tried[t] = lesion_arm(ctx, region, seed, "lesion_own", translators[region, seed], filters[region, seed], [t])
            return (tried[t].val_auc if tried[t] else float("nan")), tried[t]

        chosen[region], _, grid = grid_search_threshold(at, grid_t)
        rows = [summarize_arm("lesion_own", [tried[g["threshold"]]], [base], n_boot=budget["n_boot"], region=region,
                              threshold=g["threshold"], val_auc=g["val_auc"]) for g in grid if tried[g["threshold"]]]
        ablation[region] = {"seed": seed, "chosen": chosen[region], "rows": rows,
                            "no_run": [g["threshold"] for g in grid if not tried[g["threshold"]]]}
        log(f"{region}: threshold grid {grid} -> t = {chosen[region]}")

    def fallbacks(t: float) -> list[float]:  # the chosen t, then lower grid values if it accepts nothing
        return [t, *sorted((v for v in grid_t if v < t), reverse=True)]

    for region in regions:
        t = chosen.get(region, chosen[grid_regions[0]])
        for seed in seeds:
            runs[region]["oversample"].append(train_arm(ctx, region, seed, "oversample", augment="flip",
                                                        oversample=ctx.oversample))
            runs[region]["classic"].append(train_arm(ctx, region, seed, "classic", augment="classic"))
            own = lesion_arm(ctx, region, seed, "lesion_own", translators[region, seed], filters[region, seed],
                             fallbacks(t))
            runs[region]["lesion_own"] += [own] if own else []
            other = transfer[region]
            if other is not None:
                t_other = chosen.get(other, chosen[grid_regions[0]])
                moved = lesion_arm(ctx, region, seed, "lesion_transfer", translators[other, seed],
                                   filters[other, seed], fallbacks(t_other))
                runs[region]["lesion_transfer"] += [moved] if moved else []

    table, rocs, grids = [], {}, {}
    for region in regions:
        base = runs[region]["baseline"]
        curves = {}
        for arm in ARMS:
            arm_runs = runs[region][arm]
            if len(arm_runs) < len(seeds):  # a lesion arm whose filter accepted nothing at some seed
                log(f"{region} {arm}: only {len(arm_runs)} of {len(seeds)} seeds ran; left out of the table")
                continue
            ts = sorted({r.extra["threshold"] for r in arm_runs}) if arm.startswith("lesion") else None
            table.append(summarize_arm(arm, arm_runs, None if arm == "baseline" else base, n_boot=budget["n_boot"],
                                       region=region, threshold=ts[0] if ts and len(ts) == 1 else ts))
            curves[arm] = pool_runs(arm_runs)
        rocs[region] = str(plot_roc(out / f"roc_{region}.png", curves, title=f"BTXRD {region}: test ROC "
                                    f"(pooled over {len(seeds)} seeds)"))
        png = sample_grid(ctx, region, translators[region, seeds[0]], out / f"samples_{region}.png")
        grids[region] = str(png) if png else None
    results = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if args.record_argv else None,
        "data": str(args.data), "test_data": str(args.test_data) if args.test_data else "split 'test' of --data",
        "budget": args.budget, "settings": budget, "device": args.device, "seeds": seeds, "regions": regions,
        "positive_ratio": args.positive_ratio, "oversample": args.oversample,
        "synthetic_fraction": fraction, "site_s": ctx.s, "site_n": ctx.n,
        "training_counts": counts, "threshold": {"chosen": chosen, "grid": list(budget["thresholds"]), "ablation": ablation},
        "arms": table, "roc_png": rocs, "samples_png": grids, "wall_seconds": time.perf_counter() - t_start,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(render_markdown(results))
    log(f"done in {results['wall_seconds']:.0f}s; wrote {out / 'results.md'}")
    print(render_markdown(results))
    return results


def render_markdown(res: dict[str, Any]) -> str:
    """The results as Markdown: the arm table and the threshold ablation."""
    counts = "; ".join(f"{r}: " + ", ".join(f"seed {s} {c['positives']}/{c['positives_available']} tumours + "
                                             f"{c['normals']} normals" for s, c in cs.items())
                       for r, cs in res["training_counts"].items())
    lines = [f"Budget `{res['budget']}` ({json.dumps(res['settings'])}), seeds {res['seeds']}, test data: "
             f"{res['test_data']}.", "",
             f"Training positives cut to {res['positive_ratio']:g} per normal, drawn with each seed: {counts}.",
             f"Oversampling x{res['oversample']}; lesion stream {res['synthetic_fraction']:.0%} synthetic, "
             f"site size s={res['site_s']}, n={res['site_n']}.", "",
             "Test AUC: mean ± sd over seeds; pooled = predictions of all seeds concatenated, bootstrap 95% CI; "
             "Δ pooled = paired bootstrap vs the pooled baseline; Δ seed-avg = the per-seed paired AUC differences "
             "averaged on each bootstrap sample of the test set (blind to seed-to-seed calibration, which lowers "
             "pooled AUCs); * = CI excludes 0; sens/spec at each seed's "
             "validation operating point (counts pooled); synthetic = synthetic positives used in training, "
             "mean per seed; wall = training + scoring, summed over seeds.", "",
             markdown_table(res["arms"]), ""]
    for region, abl in res["threshold"]["ablation"].items():
        lines += [f"Pseudo-label threshold ablation ({region}, seed {abl['seed']}, own translator; chosen by "
                  f"validation AUC: t = {abl['chosen']:.2f}):", "",
                  "| t | val AUC | synthetic used (accepted of generated) | test AUC [95% CI] | Δ vs baseline [95% CI] |", "|---|---|---|---|---|"]
        lines += [f"| {r['threshold']:.2f} | {r['val_auc']:.3f} | {r['synthetic']:.0f} ({r['accepted']:.0f} of "
                  f"{r['generated']:.0f}) | {r['auc_pooled']:.3f} "
                  f"[{r['auc_ci95'][0]:.3f}, {r['auc_ci95'][1]:.3f}] | {r['delta']:+.3f} [{r['delta_ci95'][0]:+.3f}, "
                  f"{r['delta_ci95'][1]:+.3f}]{' *' if r['significant'] else ''} |" for r in abl["rows"]]
        lines += [f"| {t:.2f} | — | 0 (the filter accepted no candidate in 50 batches: no run) | — | — |"
                  for t in abl.get("no_run", [])]
        lines.append("")
    lines.append(f"Wall time: {res['wall_seconds'] / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder laid out like BTXRD: metadata.csv, images/, masks/")
    p.add_argument("--test-data", default=None, help="a second such folder; all of its rows are test data")
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed0", type=int, default=0, help="first seed")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    p.add_argument("--regions", nargs="+", default=list(REGIONS), choices=REGIONS)
    p.add_argument("--grid-region", default="upper_limb", help="region of the threshold grid (cpu/test budgets)")
    p.add_argument("--epochs", type=int, default=None, help="override the budget's epochs")
    p.add_argument("--positive-ratio", type=float, default=0.1)
    p.add_argument("--oversample", type=int, default=5)
    p.add_argument("--synthetic-fraction", type=float, default=None,
                   help="share of synthetic positives in the lesion stream (default: the budget's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-record-argv", dest="record_argv", action="store_false")
    return p.parse_args(argv)


if __name__ == "__main__":
    run_experiment(parse_args())
