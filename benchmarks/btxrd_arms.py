"""The BTXRD experiment's arms, budgets and what every run shares (``benchmarks/btxrd_experiment.py``).

:func:`arm_overrides` is the one place that says what each arm changes: the :class:`RunConfig`
fields that make it, everything else being the baseline's.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

REGIONS = ("upper_limb", "lower_limb")
ARMS = ("baseline", "oversample", "classic", "copy_paste", "lesion_own", "lesion_transfer", "lesion_transfer_g",
        "oversample_copy_paste", "oversample_lesion", "inpaint", "oversample_inpaint")
SELECTION_ARMS = ("copy_paste_scorer", "copy_paste_unfiltered", "lesion_own_scorer", "lesion_own_unfiltered")
# the same arm with its synthesis sources drawn from normals whose age follows the kept positives'
MATCHED_ARMS = ("oversample_copy_paste_age", "oversample_lesion_age")
# new positives from the kept positives themselves: another kept lesion pasted over each one's own
SWAP_ARMS = ("swap", "oversample_swap")
# the same arm with its pasted lesions flipped only, never turned by quarter turns (the limb stays upright)
UPRIGHT_ARMS = ("oversample_swap_upright",)
# the same arm with each pasted lesion drawn from a kept positive of the same bone as its site's, of
# another patient (so never the positive's own lesion)
BONE_ARMS = ("oversample_swap_bone",)
# copy-paste onto normals with each lesion pasted by its mask (feathered), not the whole crop
MASK_ARMS = ("oversample_copy_paste_mask",)
VARIANT_ARMS = SELECTION_ARMS + MATCHED_ARMS + UPRIGHT_ARMS + BONE_ARMS + MASK_ARMS
ALL_ARMS = ARMS + SELECTION_ARMS + MATCHED_ARMS + SWAP_ARMS + UPRIGHT_ARMS + BONE_ARMS + MASK_ARMS
SYNTHESIS_ARMS = ALL_ARMS[3:]
SAME_SYNTHESIZER = "same synthesizer, baseline filter"
SAME_ARM_UNMATCHED = "same arm, sources from every normal"
SAME_ARM_TURNED = "same arm, pastes turned by quarter turns"
SAME_ARM_ANY_BONE = "same arm, lesions of any bone and patient"
SAME_ARM_BOX = "same arm, whole crops pasted"
TRANSFER_ARMS = ("lesion_transfer", "lesion_transfer_g")

# cpu128 fits the 90-minute target on 2 CPU cores with --jobs 2: a 1-seed, 1-epoch timing of every arm
# (2 translators, 18 classifier runs, the 2 ablation runs) took 470 s of CPU (~170 s of it the two
# translators), so the 3 seeds x 6 epochs cost ~6,000 CPU-s, ~50-55 min on two otherwise idle cores
# (~100 min with one job); on the shared sandbox at load 7 the same timing took 18 min of wall time.
# cpu: a quicker look (96 px, 4 epochs). full: paper-like presets for one GPU. A tiny inpainter step
# takes ~50 ms on one thread (2000 steps: ~100 s); at 300 steps it paints an average limb only.
BUDGETS: dict[str, dict[str, Any]] = {
    "test": dict(preset="tiny", image_size=64, epochs=1, batch_size=16, lr=1e-3, translator_preset="tiny",
                 patch_size=32, translator_steps=3, translator_batch=4, inpainter_steps=2, n_boot=200, threads=1,
                 ablation_quantiles=(0.5,), scorer_steps=4),
    "cpu": dict(preset="tiny", image_size=96, epochs=4, batch_size=32, lr=1e-3, translator_preset="tiny",
                patch_size=32, translator_steps=300, translator_batch=8, inpainter_steps=1000, n_boot=2000, threads=1,
                ablation_quantiles=(0.5,), scorer_steps=600),
    "cpu128": dict(preset="tiny", image_size=128, epochs=6, batch_size=32, lr=1e-3, translator_preset="tiny",
                   patch_size=32, translator_steps=300, translator_batch=8, inpainter_steps=2000, n_boot=2000,
                   threads=1, ablation_quantiles=(0.5,), scorer_steps=600),
    "full": dict(preset="paper", image_size=256, epochs=30, batch_size=32, lr=1e-4, translator_preset="paper",
                 patch_size=128, translator_steps=20000, translator_batch=8, inpainter_steps=20000, n_boot=2000,
                 threads=None, ablation_quantiles=(0.5, 0.25), scorer_steps=3000),
}


def log(msg: str) -> None:
    """Progress line with a timestamp (flushed: the run is usually followed through a log file)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


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
    device: str
    s: float = 1.5
    n: int = 7
    inpainters: dict[tuple[str, int], Path] = dataclasses.field(default_factory=dict)
    scorers: dict[tuple[str, int], Path] = dataclasses.field(default_factory=dict)
    done: int = 0
    total: int = 0
    t0: float = dataclasses.field(default_factory=time.perf_counter)


def base_arm(arm: str) -> str:
    """The arm a selection, matched-source, upright or bone arm varies (``lesion_own_scorer`` ->
    ``lesion_own``); any other arm is its own base."""
    return arm.rsplit("_", 1)[0] if arm in VARIANT_ARMS else arm


def same_arm_label(arm: str) -> str:
    """The report's column for ``arm`` against the arm it varies (:func:`base_arm`)."""
    labels = {**dict.fromkeys(MATCHED_ARMS, SAME_ARM_UNMATCHED), **dict.fromkeys(UPRIGHT_ARMS, SAME_ARM_TURNED),
              **dict.fromkeys(BONE_ARMS, SAME_ARM_ANY_BONE), **dict.fromkeys(MASK_ARMS, SAME_ARM_BOX)}
    return labels.get(arm, SAME_SYNTHESIZER)


def arm_overrides(ctx: Context, arm: str, region: str, seed: int, translators: dict[tuple[str, int], Path],
                  filters: dict[tuple[str, int], str], other: str | None) -> dict[str, Any]:
    """The :class:`RunConfig` fields that make ``arm`` (everything else is the baseline's)."""
    if arm in MATCHED_ARMS:
        own = arm_overrides(ctx, base_arm(arm), region, seed, translators, filters, other)
        return {**own, "match_sources": arm.rsplit("_", 1)[1]}
    if arm in UPRIGHT_ARMS:
        return {**arm_overrides(ctx, base_arm(arm), region, seed, translators, filters, other), "paste_rot90": False}
    if arm in MASK_ARMS:
        return {**arm_overrides(ctx, base_arm(arm), region, seed, translators, filters, other), "paste_shape": "mask"}
    if arm in BONE_ARMS:
        return {**arm_overrides(ctx, base_arm(arm), region, seed, translators, filters, other), "paste_match": "bone",
                "paste_avoid": "group"}
    if arm in SELECTION_ARMS:
        selection = arm.rsplit("_", 1)[1]
        own = arm_overrides(ctx, base_arm(arm), region, seed, translators, filters, other)
        return {**own, "filter_classifier": str(ctx.scorers[region, seed]) if selection == "scorer" else None}
    if arm in ("baseline", "oversample", "classic"):
        return {"baseline": dict(augment="flip"), "oversample": dict(augment="flip", oversample=ctx.oversample),
                "classic": dict(augment="classic")}[arm]
    if arm in TRANSFER_ARMS and other is None:
        raise ValueError(f"{arm} needs a second region")
    added = ctx.oversample - 1  # positives added per kept positive and epoch, in every arm that adds any
    synthetic = added // 2 if arm.startswith("oversample_") else added
    lesion = dict(augment="flip", stream="lesion", filter_mode="rank", synthetic_per_positive=float(synthetic),
                  oversample=1 + added - synthetic,
                  filter_classifier=filters[other if arm == "lesion_transfer" else region, seed])
    if arm.endswith("copy_paste"):
        lesion["synthesizer"] = "copy_paste"
    elif arm.endswith("swap"):
        lesion["synthesizer"] = "swap"
    elif arm.endswith("inpaint"):
        lesion.update(synthesizer="inpaint", inpainter=str(ctx.inpainters[region, seed]))
    else:
        lesion["translator"] = str(translators[other if arm in TRANSFER_ARMS else region, seed])
    return lesion
