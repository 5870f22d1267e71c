"""``python -m streamaug.train scorer``: a small lesion-vs-normal patch classifier, the site filter.

The pseudo-label filter of Gupta et al. scores every synthetic candidate with a full-image baseline
classifier. A scorer looks only where synthesis changed the image: the candidate's blended site,
cut and resized as the translator's patches are. It is trained on those same patches
(:func:`streamaug.train.patches.build_patch_sets`): the lesion crops of the (kept) positives'
boxes (``crops_per_box`` per box, side ``s`` times the box's larger side) against normal crops at
the sites the proposer picks in normal images. Batches hold as many lesion as normal patches,
flipped (and with ``--augment all`` rotated and intensity-jittered) on the fly.

A share of the patient groups (``--holdout``) is kept apart; the held-out ROC AUC is measured
every ``eval_every`` steps and the best step's weights are kept. The checkpoint is a classifier
checkpoint (``OUT/scorer.pt``, DRN weights, the run config, the data counts, the AUC history) that
says ``on: site`` and its ``input_size``, so ``PseudoLabel("OUT/scorer.pt", threshold=None)`` scores
candidate sites, not images, and ``--filter-classifier OUT/scorer.pt`` does the same in the
classifier trainer. ``OUT/roc.png`` shows the held-out ROC and ``OUT/log.jsonl`` the losses.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from streamaug.data.select import KeySelect
from streamaug.eval.stats import plot_roc
from streamaug.models.checkpoint import save_classifier
from streamaug.models.drn import DRN, DRN_PRESETS, DRNConfig
from streamaug.train.augment import AUGMENT_MODES, draw_patches
from streamaug.train.inputs import check_positives
from streamaug.train.patches import PatchSets, build_patch_sets
from streamaug.train.runconfig import (
    JsonlLog,
    above,
    add_config_arguments,
    at_least,
    between,
    check_bounds,
    check_device,
    config_from_args,
    make_run_folder,
    parse_options,
)

logger = logging.getLogger(__name__)


@dataclass
class ScorerRun:
    """Everything a scorer run depends on; saved in the checkpoint.

    Every field is a ``streamaug-train scorer`` option (``batch_size`` -> ``--batch-size``).

    Attributes:
        shards: shard paths, a packed folder or its manifest.json (positives with boxes, and normals).
        out: run folder: scorer.pt, log.jsonl, run.json and roc.png go here.
        preset: DRN size preset of the scorer (tiny: ~75k parameters, trains on 2 CPU cores in a minute).
        patch_size: side the site crops are resized to (use the translator's patch size).
        steps: training steps.
        batch_size: lesion patches per step (as many normal ones join them).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        s: crop side as a multiple of the lesion box's larger side (as the stream's site proposer uses).
        n: matched lesion images per normal image (where normal patches are cut).
        region: only images of this region (e.g. lower_limb); default: all.
        split: split of a packed folder or manifest (ignored for plain .tar lists).
        resize: resize images to this side before cutting patches (as the stream does); default: as stored.
        min_intensity: drop normal patches darker than this mean intensity in [0, 1] (no bone).
        positives: keys of the only lesion images to use (e.g. the kept rare positives); default: all.
        crops_per_box: random crops per lesion box, each containing the box.
        augment: on-the-fly augmentation: none, hflip, or all (the 8 flips/rot90s and intensity jitter).
        jitter: intensity jitter amplitude with augment=all.
        holdout: fraction of patient groups held out to measure the scorer and choose its step.
        eval_every: measure the held-out AUC every this many steps (and at the end).
        seed: seeds patch sites, held-out groups, initialisation, batches and augmentation.
        device: torch device to train on (cpu, cuda, ...).
    """

    shards: list[str] = field(default_factory=list)
    out: str = "runs/scorer"
    preset: str = field(default="tiny", metadata={"choices": sorted(DRN_PRESETS)})
    patch_size: int = field(default=64, metadata=at_least(1))
    steps: int = field(default=600, metadata=at_least(1))
    batch_size: int = field(default=32, metadata=at_least(1))
    lr: float = field(default=1e-3, metadata=above(0))
    weight_decay: float = field(default=1e-4, metadata=at_least(0))
    s: float = field(default=1.0, metadata=above(0))
    n: int = field(default=7, metadata=at_least(1))
    region: str | None = None
    split: str | None = None
    resize: int | None = field(default=None, metadata=at_least(1))
    min_intensity: float = field(default=0.15, metadata=between(0, 1))
    positives: list[str] | None = None
    crops_per_box: int = field(default=4, metadata=at_least(1))
    augment: str = field(default="hflip", metadata={"choices": AUGMENT_MODES})
    jitter: float = field(default=0.1, metadata=between(0, 1))
    holdout: float = field(default=0.2, metadata=between(0, 1, high_open=True))
    eval_every: int = field(default=50, metadata=at_least(1))
    seed: int = field(default=0, metadata=at_least(0))
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_bounds(self)


@torch.no_grad()
def patch_scores(model: torch.nn.Module, patches: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``(N, 1, P, P)`` patches -> ``(N,)`` lesion probabilities (CPU float32), in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [torch.sigmoid(model(chunk.to(device)).reshape(len(chunk), -1)[:, 0].float()).cpu()
           for chunk in patches.split(batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def heldout_auc(model: torch.nn.Module, data: PatchSets) -> float | None:
    """ROC AUC of lesion vs normal held-out patches; None without both kinds."""
    if not len(data.heldout_lesion) or not len(data.heldout_normal):
        return None
    from sklearn.metrics import roc_auc_score

    scores = patch_scores(model, torch.cat([data.heldout_lesion, data.heldout_normal]))
    y = [1] * len(data.heldout_lesion) + [0] * len(data.heldout_normal)
    return float(roc_auc_score(y, scores.numpy()))


def train_scorer(run: ScorerRun, *, progress: bool = True) -> Path:
    """Train a patch scorer as ``run`` says; returns ``OUT/scorer.pt`` (the best held-out step's
    weights; without held-out patches of both kinds, the last step's, with a warning).

    Raises:
        ValueError: no lesion or no normal training patches in the shards, ``--positives`` keys that
            match no lesion image, a device this machine lacks.
    """
    from tqdm.auto import tqdm

    check_device(run.device)
    out, device = Path(run.out), torch.device(run.device)
    make_run_folder(out)
    (out / "roc.png").unlink(missing_ok=True)  # an earlier run's: this run may draw none
    torch.manual_seed(run.seed)
    shards = run.shards[0] if len(run.shards) == 1 else run.shards
    check_positives(shards, run.split, run.region, run.positives)
    select = KeySelect(run.region, frozenset(run.positives)) if run.positives is not None else None
    data = build_patch_sets(shards, patch_size=run.patch_size, s=run.s, n=run.n, region=run.region, split=run.split,
                            min_intensity=run.min_intensity, resize=run.resize, seed=run.seed, select=select,
                            crops_per_box=run.crops_per_box, holdout=run.holdout, progress=progress)
    config = DRNConfig.preset(run.preset)
    model = DRN(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=run.lr, weight_decay=run.weight_decay)
    g = torch.Generator().manual_seed(run.seed)
    target = torch.cat([torch.ones(run.batch_size), torch.zeros(run.batch_size)]).to(device)
    history: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    if not len(data.heldout_lesion) or not len(data.heldout_normal):
        logger.warning("scorer: no held-out patches of both kinds (%d lesion, %d normal): keeping the last step; "
                       "raise --holdout to choose the step by a measured AUC",
                       len(data.heldout_lesion), len(data.heldout_normal))
    bar = tqdm(range(1, run.steps + 1), desc="scorer", disable=None if progress else True, unit="step")
    t0 = time.perf_counter()
    with JsonlLog(out / "log.jsonl", "step", upto=0) as log:  # a new run starts the log afresh
        for step in bar:
            x = torch.cat([draw_patches(data.lesion, run.batch_size, g, device, run.augment, run.jitter),
                           draw_patches(data.normal, run.batch_size, g, device, run.augment, run.jitter)])
            loss = F.binary_cross_entropy_with_logits(model(x).reshape(-1), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss = float(loss.detach())
            record: dict[str, Any] = {"step": step, "loss": round(loss, 5)}
            if step % run.eval_every == 0 or step == run.steps:
                auc = heldout_auc(model, data)
                record["heldout_auc"] = auc
                history.append({"step": step, "heldout_auc": auc})
                if auc is not None and (best is None or auc > best[0]):
                    best = (auc, step, {k: v.detach().clone() for k, v in model.state_dict().items()})
                bar.set_postfix(loss=f"{loss:.3f}", auc="-" if auc is None else f"{auc:.3f}")
            log.write(record)
    if best is not None:
        model.load_state_dict(best[2])
    chosen = {"step": best[1] if best else run.steps, "heldout_auc": best[0] if best else None}
    record = {"run": dataclasses.asdict(run), "data": data.info, "history": history, "chosen": chosen}
    path = save_classifier(out / "scorer.pt", model.eval(), extra={
        "on": "site", "input_size": run.patch_size, "s": run.s, "run": record["run"], "data": data.info,
        "history": history, "chosen": chosen, "kind": "patch_scorer"})
    (out / "run.json").write_text(json.dumps(record, indent=2))
    if best is not None and importlib.util.find_spec("matplotlib") is None:
        logger.info("scorer: no roc.png (pip install 'streamaug[plots]' for the figure)")
    elif best is not None:
        y = [1] * len(data.heldout_lesion) + [0] * len(data.heldout_normal)
        scores = patch_scores(model, torch.cat([data.heldout_lesion, data.heldout_normal]))
        plot_roc(out / "roc.png", {f"held out (step {best[1]})": (y, scores.numpy())}, title="patch scorer")
    logger.info("scorer: %d steps on %d lesion / %d normal patches in %.1fs; held-out AUC %s at step %s; wrote %s",
                run.steps, len(data.lesion), len(data.normal), time.perf_counter() - t0,
                "-" if not best else f"{best[0]:.3f}", chosen["step"], path)
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options: one per :class:`ScorerRun` field."""
    add_config_arguments(p, ScorerRun, required=("shards", "out"), defaults={"split": "train"})


def main(args: argparse.Namespace | Sequence[str] | None = None) -> Path:
    """``streamaug-train scorer``: parse the options (unless given parsed), train; the checkpoint path."""
    args = parse_options(args, add_arguments, prog="python -m streamaug.train scorer", description=__doc__)
    return train_scorer(config_from_args(ScorerRun, args))
