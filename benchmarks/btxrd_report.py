"""The BTXRD experiment's report: table rows, ROC curves, sample grids, ``results.{json,md}``."""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from btxrd_arms import (
    ALL_ARMS,
    SYNTHESIS_ARMS,
    Context,
    base_arm,
    log,
    same_arm_label,
)

from streamaug.data.select import KeySelect
from streamaug.data.shardlist import load_manifest
from streamaug.eval import plot_roc
from streamaug.eval.experiment import SeedRun, markdown_table, patient_groups, pool_runs, summarize_arm


def sample_grid(ctx: Context, region: str, translator: Path, path: Path, k: int = 6) -> Path | None:
    """Original / translated / blended on real test normals of ``region`` through the device stage."""
    from streamaug.data.collate import collate_xray
    from streamaug.data.stream import XRayShards
    from streamaug.eval.plots import save_sample_grid
    from streamaug.sites import LesionBoxBank, SiteProposer
    from streamaug.synth.ops import paste_blend
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


def table_rows(ctx: Context, runs: dict[str, dict[str, list[SeedRun]]], regions: Sequence[str],
           seeds: Sequence[int]) -> list[dict[str, Any]]:
    """The table rows of the seeds in ``seeds`` (every arm that ran at all of them); the bootstrap
    resamples the test set by patient (its ``group`` column) when it has one."""
    rows, groups = [], patient_groups(ctx.test_spec, ctx.test_split)
    for region in regions:
        pick = {arm: [r for r in runs[region][arm] if r.seed in seeds] for arm in ALL_ARMS}
        base = pick["baseline"]
        for arm in ALL_ARMS:
            if len(pick[arm]) < len(seeds) or not seeds:
                continue
            versus = {"oversample": pick["oversample"]} if arm in SYNTHESIS_ARMS and \
                len(pick["oversample"]) == len(seeds) else {}
            same = pick[base_arm(arm)] if base_arm(arm) != arm else []
            if len(same) == len(seeds):
                versus[same_arm_label(arm)] = same
            rows.append(summarize_arm(arm, pick[arm], None if arm == "baseline" else base, versus=versus,
                                      n_boot=ctx.budget["n_boot"], groups=groups, region=region))
    return rows


def write_results(args: argparse.Namespace, ctx: Context, budget: dict[str, Any],
                  seeds: Sequence[int], regions: Sequence[str], counts: dict[str, dict[int, dict[str, int]]],
                  runs: dict[str, dict[str, list[SeedRun]]], ablation: dict[str, Any],
                  translators: dict[tuple[str, int], Path], t_start: float, *, final: bool) -> dict[str, Any]:
    """Tables, ROC curves and sample grids of the seeds done so far -> ``OUT/results.{json,md}``."""
    out = ctx.out
    table = table_rows(ctx, runs, regions, seeds)
    rocs, grids = {}, {}
    for region in regions:
        curves = {arm: pool_runs([r for r in runs[region][arm] if r.seed in seeds]) for arm in ALL_ARMS
                  if len([r for r in runs[region][arm] if r.seed in seeds]) == len(seeds)}
        rocs[region] = str(plot_roc(out / f"roc_{region}.png", curves, title=f"BTXRD {region}: test ROC "
                                    f"(pooled over {len(seeds)} seeds)"))
        if final and (region, seeds[0]) in translators:
            png = sample_grid(ctx, region, translators[region, seeds[0]], out / f"samples_{region}.png")
            grids[region] = str(png) if png else None
    results = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if args.record_argv else None,
        "data": str(args.data), "test_data": str(args.test_data) if args.test_data else "split 'test' of --data",
        "budget": args.budget, "settings": budget, "device": args.device, "threads": torch.get_num_threads(),
        "seeds": list(seeds), "seeds_asked": args.seeds, "complete": final, "regions": list(regions),
        "positive_ratio": args.positive_ratio, "oversample": args.oversample,
        "filter": "PseudoLabel rank mode (no threshold), the baseline of the same seed (the *_scorer arms: the "
                  "region's patch scorer of the same seed, on the blended sites; *_unfiltered: none)",
        "site_s": ctx.s, "site_n": ctx.n, "training_counts": counts, "ablation": ablation,
        "arms": table, "roc_png": rocs, "samples_png": grids, "wall_seconds": time.perf_counter() - t_start,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(render_markdown(results))
    log(f"{'done' if final else 'partial results'} after {results['wall_seconds'] / 60:.1f} min (seeds "
        f"{list(seeds)}); wrote {out / 'results.md'}")
    return results


def render_markdown(res: dict[str, Any]) -> str:
    """The results as Markdown: the arm table and the filter ablation."""
    counts = "; ".join(f"{r}: " + ", ".join(f"seed {s} {c['positives']}/{c['positives_available']} positives + "
                                             f"{c['normals']} negatives" for s, c in cs.items())
                       for r, cs in res["training_counts"].items())
    state = "" if res["complete"] else f" (PARTIAL: {len(res['seeds'])} of {res['seeds_asked']} seeds done)"
    lines = [f"Budget `{res['budget']}` ({json.dumps(res['settings'])}), seeds {res['seeds']}{state}, "
             f"{res['threads']} torch thread(s), test data: {res['test_data']}.", "",
             f"Training positives cut to {res['positive_ratio']:g} per normal, drawn with each seed: {counts}.",
             f"Every arm but baseline and classic adds {res['oversample'] - 1} positives per kept positive and "
             f"epoch: oversample as copies (x{res['oversample']}, spread over the epoch), the synthesis arms as "
             f"synthetic positives, the oversample_* arms half and half; each epoch shows every kept real sample "
             f"once. Sites s={res['site_s']}, n={res['site_n']}; filter: {res['filter']}.", "",
             "Trained on (per-seed means, all epochs): real pos. share = real positive samples (oversampled copies "
             "included) / all samples seen; synthetic share = synthetic positives / all samples seen; positives / "
             "epoch = real + synthetic positives per epoch; candidates / accepted = candidates the synthesis stage "
             "blended and scored per accepted one. Test AUC: mean ± sd [min–max] over seeds; pooled = "
             "predictions of all seeds concatenated, bootstrap 95% CI; Δ seed-avg = the per-seed paired AUC "
             "differences averaged on each bootstrap sample of the test set (blind to seed-to-seed calibration); "
             "Δ pooled = paired bootstrap on the pooled predictions; * = CI excludes 0; sens/spec at each seed's "
             "validation operating point (counts pooled); wall = training + scoring, summed over seeds.", "",
             markdown_table(res["arms"]), ""]
    abl = res.get("ablation") or {}
    if abl:
        lines += [f"Filter ablation ({abl['region']}, seed {abl['seed']}, lesion_own; Δ vs the baseline of that "
                  "seed):", "", markdown_table(abl["rows"]), ""]
        lines += [f"- {label}: no run (the filter accepted no candidate in 50 batches)" for label in abl["no_run"]]
        lines.append("")
    lines.append(f"Wall time: {res['wall_seconds'] / 60:.1f} min.")
    return "\n".join(lines) + "\n"
