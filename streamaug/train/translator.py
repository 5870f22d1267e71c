"""``python -m streamaug.train translator``: train a UNIT normal->lesion patch translator.

Reads shards once and cuts the patch sets (Gupta et al. §3.2: several random crops per lesion box,
every normal patch, ``s`` per region, a held-out fraction of the patient groups;
:mod:`streamaug.train.patches`). Each step trains UNIT on ``batch_size`` patches of each domain,
augmented on the fly (flips, rot90, intensity jitter; optionally DiffAugment before the
discriminators; :mod:`streamaug.train.augment`), with a progress bar. Every ``score_every`` steps it
scores the translator on the held-out patches (KID between translated normal and real lesion
patches on fixed random features, lower is better; :mod:`streamaug.train.quality`) and keeps the
best as ``OUT/best.pt`` (for inference). Losses and scores go to ``OUT/losses.jsonl`` (flushed per
step), sample grids (normal / translated / blended) to ``OUT/samples/``, and ``OUT/translator.pt``
keeps weights, run config, patch size, the ``s`` used (the checkpoint's ``s``; per region in
``extra["data"]["s"]``), region, data hash, step, score history, optimizer and RNG state.
``--resume`` continues from it; on CPU with a fixed seed the resumed run reproduces the
uninterrupted one exactly: batches, augmentation, scores and ``best.pt``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from streamaug.data.select import KeySelect
from streamaug.eval.plots import save_sample_grid
from streamaug.models.checkpoint import CheckpointError, read_checkpoint, save_translator
from streamaug.models.unit import PRESETS as UNIT_PRESETS
from streamaug.models.unit import UNIT, unit_preset
from streamaug.synth.ops import cosine_alpha
from streamaug.train.augment import AUGMENT_MODES, DIFFAUG_POLICIES, draw_patches
from streamaug.train.inputs import check_positives
from streamaug.train.patches import build_patch_sets, s_for_region
from streamaug.train.quality import TranslationScore
from streamaug.train.rng import global_rng_state, set_global_rng_state
from streamaug.train.runconfig import (
    JsonlLog,
    above,
    add_config_arguments,
    at_least,
    between,
    check_bounds,
    check_device,
    check_resume,
    check_run_folder,
    config_from_args,
    make_run_folder,
    parse_options,
)
from streamaug.train.unit_losses import UNITTrainer

logger = logging.getLogger(__name__)


def parse_s(value: Any) -> float | dict[str, float]:
    """``s`` in any accepted form -> one float, or ``{region: s}`` (``"*"``: the other regions).

    Args:
        value: a number; a mapping; or strings ``"S"`` / ``"REGION=S"`` (the command line's form),
            one or a list; None: 1.

    Raises:
        ValueError: unreadable, repeated or non-positive values.

    Examples:
        >>> parse_s(["lower_limb=1", "upper_limb=2"]), parse_s(["2"]), parse_s({"*": 1.5})
        ({'lower_limb': 1.0, 'upper_limb': 2.0}, 2.0, 1.5)
    """
    if value is None:
        return 1.0
    if isinstance(value, Mapping):
        pairs = [(str(k), v) for k, v in value.items()]
    else:
        texts = [value] if isinstance(value, (int, float, str)) else list(value)
        pairs = [tuple(str(t).split("=", 1)) if "=" in str(t) else ("*", t) for t in texts]
    items: dict[str, float] = {}
    for key, v in pairs:
        key = str(key).strip()
        try:
            number = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"s: {v!r} is not a number (give S or REGION=S, e.g. lower_limb=1 upper_limb=2)") from None
        if key in items or not (math.isfinite(number) and number > 0):
            raise ValueError(f"s: {key}={v} is repeated or not a positive number")
        items[key] = number
    return items["*"] if set(items) == {"*"} else items


@dataclass
class TranslatorRun:
    """Everything a translator run depends on; saved in the checkpoint and compared on ``--resume``.

    Every field is a ``streamaug-train translator`` option (``batch_size`` -> ``--batch-size``).

    Attributes:
        shards: shard paths, a packed folder or its manifest.json (lesion and normal images together).
        out: run folder: translator.pt, best.pt, losses.jsonl, run.json and samples/ go here.
        preset: UNIT size preset.
        steps: training steps in all (a resumed run continues up to this).
        patch_size: patch side P in pixels; default: the preset's.
        lr: Adam learning rate of generators and discriminators; default: the preset's (tiny 5e-4, else
            UNIT's 1e-4).
        s: crop side / larger lesion-box side (Gupta et al. 3.2; paper: 1 for tibia, 2 for humerus):
            one number, or REGION=S pairs plus optionally a bare number for the other regions
            (e.g. lower_limb=1 upper_limb=2); default 1. Stored as a float or {region: s}.
        n: matched lesion images per normal image (where normal patches are cut).
        region: only images of this region (e.g. lower_limb); default: all.
        split: split of a packed folder or manifest (ignored for plain .tar lists).
        resize: resize images to this side before cutting patches; default: as stored.
        min_intensity: drop normal patches darker than this mean intensity in [0, 1] (no bone).
        batch_size: patches per domain per step (lesion and normal batches are the same size).
        seed: seeds patch sites, held-out groups, initialisation, batches and augmentation.
        device: torch device to train on (cpu, cuda, cuda:1, ...).
        bf16: autocast to bfloat16 (CUDA).
        sample_every: write a sample grid (normal / translated / blended) every this many steps.
        ckpt_every: save OUT/translator.pt every this many steps.
        blend_n: exponent n of the cosine blending mask in the sample grids.
        positives: keys of the only lesion images to use (e.g. the kept rare positives); default: all.
        crops_per_box: random crops per lesion box, each containing the box (1: the original recipe).
        centre: put each lesion box at its crop's centre (one crop per box; the blend fades off-centre lesions).
        balance_sets: cut the larger patch set to the smaller's size (the original recipe); default:
            keep every patch, each step draws batch_size of both.
        augment: on-the-fly augmentation of both domains: none; hflip (random horizontal flips); all
            (the 8 flips/rot90s and intensity jitter: measured worse on lower-limb patches, whose long
            bones run one way).
        jitter: intensity jitter amplitude with augment=all: contrast x U(1-j, 1+j), brightness + U(-j/2, j/2).
        diffaug: DiffAugment policies before the discriminators (Zhao et al. 2020; e.g. translation
            cutout); default: none.
        holdout: fraction of patient groups held out from training for the quality score (0: none).
        score_every: score the translator on the held-out patches every this many steps (KID, lower
            is better) and keep the best as OUT/best.pt; 0: never.
    """

    shards: list[str] = field(default_factory=list)
    out: str = "runs/translator"
    preset: str = field(default="tiny", metadata={"choices": sorted(UNIT_PRESETS)})
    steps: int = field(default=1000, metadata=at_least(1))
    patch_size: int | None = field(default=None, metadata=at_least(1))  # None: the preset's
    lr: float | None = field(default=None, metadata=above(0))  # None: the preset's
    s: list[str] | None = None  # the command line's form; __post_init__ makes any form a float or {region: s}
    n: int = field(default=7, metadata=at_least(1))
    region: str | None = None
    split: str | None = None
    resize: int | None = field(default=None, metadata=at_least(1))
    min_intensity: float = field(default=0.15, metadata=between(0, 1))
    batch_size: int = field(default=8, metadata=at_least(1))
    seed: int = field(default=0, metadata=at_least(0))
    device: str = "cpu"
    bf16: bool = False
    sample_every: int = field(default=200, metadata=at_least(1))
    ckpt_every: int = field(default=200, metadata=at_least(1))
    blend_n: float = field(default=2.0, metadata=above(0))
    positives: list[str] | None = None  # only these lesion images (e.g. the kept rare positives); None: all
    crops_per_box: int = field(default=4, metadata=at_least(1))
    centre: bool = False
    balance_sets: bool = False
    augment: str = field(default="hflip", metadata={"choices": AUGMENT_MODES})
    jitter: float = field(default=0.1, metadata=between(0, 1))
    diffaug: list[str] = field(default_factory=list, metadata={"choices": DIFFAUG_POLICIES})
    holdout: float = field(default=0.1, metadata=between(0, 1, high_open=True))
    score_every: int = field(default=100, metadata=at_least(0))

    # fields that may change between an interrupted run and its resume
    RESUMABLE = ("steps", "device", "sample_every", "ckpt_every", "score_every", "out")

    def __post_init__(self) -> None:
        self.s = parse_s(self.s)  # type: ignore[assignment]
        check_bounds(self)
        if self.score_every and not self.holdout:
            raise ValueError("--score-every needs held-out patches: pass --holdout above 0 (e.g. 0.1), or "
                             "--score-every 0")
        if self.augment not in AUGMENT_MODES or set(self.diffaug) - set(DIFFAUG_POLICIES):
            raise ValueError(f"--augment must be one of {AUGMENT_MODES} (got {self.augment!r}) and --diffaug of "
                             f"{DIFFAUG_POLICIES} (got {self.diffaug})")


@torch.no_grad()
def write_samples(path: Path, model: UNIT, normal: torch.Tensor, blend_n: float) -> None:
    """Grid of fixed normal patches, their translation and the cosine-blended result."""
    was_training = model.training
    model.eval()
    translated = model.translate(normal).clamp(0, 1)
    alpha = cosine_alpha(normal.shape[-2], normal.shape[-1], blend_n, device=normal.device)
    blended = alpha * translated + (1 - alpha) * normal
    save_sample_grid(path, [torch.stack([a, b, c]) for a, b, c in zip(normal.cpu(), translated.cpu(), blended.cpu())],
                     titles=("normal", "translated", "blended"))
    model.train(was_training)


@torch.no_grad()
def score_translator(model: UNIT, score: TranslationScore, device: torch.device) -> dict[str, float]:
    """:class:`~streamaug.train.quality.TranslationScore` of ``model`` (in eval mode meanwhile), rounded."""
    was_training = model.training
    model.eval()
    result = score(model.translate, device)
    model.train(was_training)
    return {k: round(v, 6) for k, v in result.items()}


def _best(scores: list[dict[str, float]]) -> dict[str, float] | None:
    """The score record with the lowest KID (the first of equals), or None."""
    return min(scores, key=lambda r: r["kid"]) if scores else None


def chosen_checkpoint(out: str | Path) -> Path:
    """The translator of run folder ``out`` to use: ``best.pt`` (the step of lowest held-out KID) when
    the run scored one, else ``translator.pt`` (the last step: a run too short or without a hold-out)."""
    best = Path(out) / "best.pt"
    return best if best.exists() else Path(out) / "translator.pt"


def checkpoint_s(run: TranslatorRun, info: dict[str, Any]) -> float:
    """The checkpoint's ``s``: the region's; else the one every image used; else that of the region
    with the most lesion patches (with a warning; ``info["s"]`` keeps every region's)."""
    if run.region is not None:
        return s_for_region(run.s, run.region)  # type: ignore[arg-type]
    used = info["s"]
    if len(set(used.values())) == 1:
        return next(iter(used.values()))
    counts = info["lesion_patches_by_region"]
    top = max(used, key=lambda r: counts.get(r, 0))
    logger.warning("translator: trained with s per region %s; the checkpoint's s is %s's (most lesion patches)",
                   used, top or "no region")
    return used[top]


def _resume_checkpoint(path: Path, run: TranslatorRun) -> dict:
    """The checkpoint to go on from, checked for trainer state and an unchanged config.

    Raises:
        CheckpointError: unreadable, no trainer state (saved for inference only), another config.
    """
    ckpt = read_checkpoint(path, "cpu")  # RNG states must stay on the CPU; load_state_dict moves the rest
    state = ckpt.get("trainer_state")
    if not isinstance(state, dict) or not {"trainer", "batch_rng", "torch_rng"} <= set(state):
        raise CheckpointError(f"{path}: no trainer state (optimizer and RNG state) to resume from: it was saved "
                              "for inference only (save_translator without trainer_state); resume needs the "
                              "translator.pt that `streamaug-train translator` writes, or start a new run with "
                              "another --out (without --resume)")
    check_resume(path, (ckpt.get("extra") or {}).get("run"), run)
    return ckpt


def train_translator(run: TranslatorRun, *, resume: bool = False, progress: bool = True) -> Path:
    """Train (or resume) a translator; returns the last checkpoint's path.

    Args:
        run: the run config (saved in the checkpoints and ``OUT/run.json``).
        resume: continue from ``OUT/translator.pt`` (same config but :attr:`TranslatorRun.RESUMABLE`);
            without it, ``OUT`` must hold no checkpoint (:func:`check_run_folder`).
        progress: show progress bars (they switch themselves off when stderr is not a terminal).

    Returns:
        ``OUT/translator.pt`` (the best-scoring weights are in ``OUT/best.pt`` when scored).

    Raises:
        CheckpointError: the checkpoint to resume is missing, unreadable, holds no trainer state, was
            trained with another config or on other data; a fresh run into a folder with checkpoints.
        ValueError: no training patches, ``--positives`` keys that match no lesion image, an ``s``
            mapping without the region, a device this machine lacks.
    """
    from tqdm.auto import tqdm

    check_device(run.device)
    out = Path(run.out)
    ckpt_path, best_path = out / "translator.pt", out / "best.pt"
    check_run_folder(out, resume=resume, checkpoints=(ckpt_path.name, best_path.name), resume_from=ckpt_path.name)
    make_run_folder(out)
    device = torch.device(run.device)
    ckpt = _resume_checkpoint(ckpt_path, run) if resume else None  # refuse early
    if run.region is not None:
        s_for_region(run.s, run.region)  # type: ignore[arg-type]  # an s map without the region: fail before reading
    torch.manual_seed(run.seed)
    overrides = {k: v for k, v in (("patch_size", run.patch_size), ("lr", run.lr)) if v is not None}
    try:
        config = unit_preset(run.preset, **overrides)
    except ValueError as err:  # e.g. a patch size the preset's downsampling cannot halve
        given = f" with --patch-size {run.patch_size}" if run.patch_size is not None else ""
        raise ValueError(f"--preset {run.preset}{given}: {err}") from None
    shards = run.shards[0] if len(run.shards) == 1 else run.shards
    check_positives(shards, run.split, run.region, run.positives)
    select = KeySelect(run.region, frozenset(run.positives)) if run.positives is not None else None
    data = build_patch_sets(shards, patch_size=config.patch_size, s=run.s, n=run.n, region=run.region,  # type: ignore[arg-type]
                            split=run.split, min_intensity=run.min_intensity, resize=run.resize, seed=run.seed,
                            select=select, crops_per_box=run.crops_per_box, centre=run.centre,
                            balance_sets=run.balance_sets, holdout=run.holdout, progress=progress)
    score = None
    if run.score_every and min(len(data.heldout_normal), len(data.heldout_lesion)) < 2:
        logger.warning("translator: too few held-out patches to score (%d normal, %d lesion): no scores, no best.pt; "
                       "raise --holdout", len(data.heldout_normal), len(data.heldout_lesion))
    elif run.score_every:
        score = TranslationScore(data.heldout_normal, data.heldout_lesion)  # fixed features: comparable across runs
    model = UNIT(config).to(device)
    trainer = UNITTrainer(model, autocast_dtype=torch.bfloat16 if run.bf16 else None, diffaug=run.diffaug,
                          seed=run.seed)
    g = torch.Generator().manual_seed(run.seed)
    step, scores = 0, []
    if ckpt is not None:
        if ckpt["manifest_sha256"] != data.info["data_sha256"]:
            raise CheckpointError(f"{ckpt_path}: trained on other data (manifest sha256 differs); use a new --out")
        state = ckpt["trainer_state"]
        model.load_state_dict(ckpt["weights"])
        trainer.load_state_dict(state["trainer"])
        g.set_state(state["batch_rng"])
        set_global_rng_state(state, device)  # torch_rng, and cuda_rng (UNIT's latent noise on CUDA)
        step, scores = ckpt["step"], list((ckpt.get("extra") or {}).get("scores", []))
    pool = data.heldout_normal if len(data.heldout_normal) >= 8 else data.normal
    fixed = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(run.seed))[:8]].to(device)
    s_used = checkpoint_s(run, data.info)

    def save(path: Path, *, resumable: bool = True) -> None:
        save_translator(path, model, config=config, patch_size=config.patch_size, s=s_used,
                        region=run.region or "any", manifest_sha256=data.info["data_sha256"], step=step,
                        extra={"run": dataclasses.asdict(run), "data": data.info, "scores": scores,
                               "best": _best(scores)},
                        trainer_state={"trainer": trainer.state_dict(), "batch_rng": g.get_state(),
                                       **global_rng_state(device)} if resumable else None)

    (out / "run.json").write_text(json.dumps({"run": dataclasses.asdict(run), "config": config.to_dict(),
                                              "data": data.info}, indent=2))
    logger.info("translator: %d lesion / %d normal training patches, %d / %d held out", data.info["lesion_patches"],
                data.info["normal_patches"], data.info["heldout_lesion_patches"], data.info["heldout_normal_patches"])
    model.train()
    bar = tqdm(total=run.steps, initial=step, desc="translator", disable=None if progress else True, unit="step")
    with JsonlLog(out / "losses.jsonl", "step", upto=step) as log:
        t0 = time.perf_counter()
        while step < run.steps:
            losses = trainer.step(draw_patches(data.normal, run.batch_size, g, device, run.augment, run.jitter),
                                  draw_patches(data.lesion, run.batch_size, g, device, run.augment, run.jitter))
            step += 1
            record = {"step": step, **{k: round(v, 5) for k, v in losses.items()}}
            if score is not None and step % run.score_every == 0:  # not at the last step: a longer resume replays
                result = score_translator(model, score, device)
                best = _best(scores)
                is_best = best is None or result["kid"] < best["kid"]
                scores.append({"step": step, **result})
                record.update(result)
                logger.info("step %d: held-out KID %.5f (%.3f x the untranslated patches')%s", step, result["kid"],
                            result["kid_ratio"], "; best so far, saved best.pt" if is_best else "")
                if is_best:
                    save(best_path, resumable=False)
            log.write(record)
            bar.update(1)
            bar.set_postfix(gen=f"{losses['gen']:.3f}", dis=f"{losses['dis']:.3f}")
            if step % run.sample_every == 0 or step == run.steps:
                write_samples(out / "samples" / f"step_{step:06d}.png", model, fixed, run.blend_n)
            if step % run.ckpt_every == 0 or step == run.steps:
                save(ckpt_path)
        bar.close()
    if step == 0 or not ckpt_path.exists():
        save(ckpt_path)
    best = _best(scores)
    logger.info("translator: %d steps in %.1fs; wrote %s%s", step, time.perf_counter() - t0, ckpt_path,
                f" and {best_path} (step {best['step']}, KID {best['kid']:.5f})" if best else "")
    return ckpt_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options: one per :class:`TranslatorRun` field, and ``--resume``."""
    add_config_arguments(p, TranslatorRun, required=("shards", "out"), defaults={"split": "train"})
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/translator.pt with the same options (--steps may grow)")


def main(args: argparse.Namespace | Sequence[str] | None = None) -> Path:
    """``streamaug-train translator``: parse the options (unless given parsed), train; the checkpoint path."""
    args = parse_options(args, add_arguments, prog="python -m streamaug.train translator", description=__doc__)
    run = config_from_args(TranslatorRun, args)
    packed = len(run.shards) == 1 and (Path(run.shards[0]).is_dir() or run.shards[0].endswith(".json"))
    run.split = run.split if packed else None  # plain .tar lists have no splits
    return train_translator(run, resume=args.resume)
