"""``python -m streamaug.train translator``: train a UNIT normal->lesion patch translator.

Reads shards once, cuts the balanced patch sets (Gupta et al. §3.2), trains UNIT with a progress
bar, logs losses to ``OUT/losses.jsonl`` (flushed per step), writes sample grids (normal / translated / blended) to
``OUT/samples/``, and keeps ``OUT/translator.pt`` (weights, config, patch size, s, region, data
hash, step, optimizer and RNG state). ``--resume`` continues from it; on CPU with a fixed seed the
resumed run reproduces the uninterrupted one exactly.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from streamaug.data.select import KeySelect
from streamaug.eval.plots import save_sample_grid
from streamaug.models.checkpoint import CheckpointError, read_checkpoint, save_translator
from streamaug.models.unit import PRESETS as UNIT_PRESETS
from streamaug.models.unit import UNIT, unit_preset
from streamaug.synth.ops import cosine_alpha
from streamaug.train.patches import build_patch_sets
from streamaug.train.runconfig import JsonlLog, add_config_arguments, check_resume, config_from_args
from streamaug.train.unit_losses import UNITTrainer

logger = logging.getLogger(__name__)


@dataclass
class TranslatorRun:
    """Everything a translator run depends on; saved in the checkpoint and compared on ``--resume``.

    Every field is a ``streamaug-train translator`` option (``batch_size`` -> ``--batch-size``).

    Attributes:
        shards: shard paths, a packed folder or its manifest.json (lesion and normal images together).
        out: run folder: translator.pt, losses.jsonl, run.json and samples/ go here.
        preset: UNIT size preset.
        steps: training steps in all (a resumed run continues up to this).
        patch_size: patch side P in pixels; default: the preset's.
        s: crop side / larger lesion-box side (Gupta et al. 3.2; paper: 1 or 2).
        n: matched lesion images per normal image (where normal patches are cut).
        region: only images of this region (e.g. lower_limb); default: all.
        split: split of a packed folder or manifest (ignored for plain .tar lists).
        resize: resize images to this side before cutting patches; default: as stored.
        min_intensity: drop normal patches darker than this mean intensity in [0, 1] (no bone).
        batch_size: patches per domain per step.
        seed: seeds patch sites, balancing, initialisation and batches.
        device: torch device to train on (cpu, cuda, cuda:1, ...).
        bf16: autocast to bfloat16 (CUDA).
        sample_every: write a sample grid (normal / translated / blended) every this many steps.
        ckpt_every: save OUT/translator.pt every this many steps.
        blend_n: exponent n of the cosine blending mask in the sample grids.
        positives: keys of the only lesion images to use (e.g. the kept rare positives); default: all.
    """

    shards: list[str] = field(default_factory=list)
    out: str = "runs/translator"
    preset: str = field(default="tiny", metadata={"choices": sorted(UNIT_PRESETS)})
    steps: int = 1000
    patch_size: int | None = None  # None: the preset's
    s: float = 1.0
    n: int = 7
    region: str | None = None
    split: str | None = None
    resize: int | None = None
    min_intensity: float = 0.15
    batch_size: int = 8
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False
    sample_every: int = 200
    ckpt_every: int = 200
    blend_n: float = 2.0
    positives: list[str] | None = None  # only these lesion images (e.g. the kept rare positives); None: all

    # fields that may change between an interrupted run and its resume
    RESUMABLE = ("steps", "device", "sample_every", "ckpt_every", "out")


def _batch(patches: torch.Tensor, size: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """A random minibatch with random horizontal flips: ``(size, 1, P, P)``."""
    idx = torch.randint(len(patches), (size,), generator=g)
    x = patches[idx]
    flip = torch.rand(size, generator=g) < 0.5
    x[flip] = x[flip].flip(-1)
    return x.to(device)


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


def _resume_checkpoint(path: Path, run: TranslatorRun, device: torch.device) -> dict:
    """The checkpoint to go on from, checked for trainer state and an unchanged config.

    Raises:
        CheckpointError: unreadable, no trainer state (saved for inference only), another config.
    """
    ckpt = read_checkpoint(path, device)
    state = ckpt["trainer_state"]
    if not isinstance(state, dict) or not {"trainer", "batch_rng", "torch_rng"} <= set(state):
        raise CheckpointError(f"{path}: no trainer state (optimizer and RNG state) to resume from: it was saved "
                              "for inference only (save_translator without trainer_state); resume needs the "
                              "translator.pt that `streamaug-train translator` writes, or start a new run with "
                              "another --out (without --resume)")
    check_resume(path, (ckpt.get("extra") or {}).get("run"), run)
    return ckpt


def train_translator(run: TranslatorRun, *, resume: bool = False, progress: bool = True) -> Path:
    """Train (or resume) a translator; returns the checkpoint path.

    Args:
        run: the run config (saved in the checkpoint and ``OUT/run.json``).
        resume: continue from ``OUT/translator.pt`` when it exists (same config but
            :attr:`TranslatorRun.RESUMABLE`); a fresh run otherwise.
        progress: show progress bars (they switch themselves off when stderr is not a terminal).

    Returns:
        ``OUT/translator.pt``.

    Raises:
        CheckpointError: the checkpoint to resume is unreadable, holds no trainer state, was trained
            with another config or on other data.
    """
    from tqdm.auto import tqdm

    out = Path(run.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "translator.pt"
    device = torch.device(run.device)
    ckpt = _resume_checkpoint(ckpt_path, run, device) if resume and ckpt_path.exists() else None  # refuse early
    torch.manual_seed(run.seed)
    overrides = {"patch_size": run.patch_size} if run.patch_size else {}
    config = unit_preset(run.preset, **overrides)
    shards = run.shards[0] if len(run.shards) == 1 else run.shards
    select = KeySelect(run.region, frozenset(run.positives)) if run.positives is not None else None
    data = build_patch_sets(shards, patch_size=config.patch_size, s=run.s, n=run.n, region=run.region,
                            split=run.split, min_intensity=run.min_intensity, resize=run.resize, seed=run.seed,
                            select=select, progress=progress)
    model = UNIT(config).to(device)
    trainer = UNITTrainer(model, autocast_dtype=torch.bfloat16 if run.bf16 else None)
    g = torch.Generator().manual_seed(run.seed)
    step = 0
    if ckpt is not None:
        if ckpt["manifest_sha256"] != data.info["data_sha256"]:
            raise CheckpointError(f"{ckpt_path}: trained on other data (manifest sha256 differs); use a new --out")
        state = ckpt["trainer_state"]
        model.load_state_dict(ckpt["weights"])
        trainer.load_state_dict(state["trainer"])
        g.set_state(state["batch_rng"])
        torch.set_rng_state(state["torch_rng"])
        step = ckpt["step"]
    fixed = data.normal[:8].to(device)

    def save() -> None:
        save_translator(ckpt_path, model, config=config, patch_size=config.patch_size, s=run.s,
                        region=run.region or "any", manifest_sha256=data.info["data_sha256"], step=step,
                        extra={"run": dataclasses.asdict(run), "data": data.info},
                        trainer_state={"trainer": trainer.state_dict(), "batch_rng": g.get_state(),
                                       "torch_rng": torch.get_rng_state()})

    (out / "run.json").write_text(json.dumps({"run": dataclasses.asdict(run), "config": config.to_dict(),
                                              "data": data.info}, indent=2))
    model.train()
    bar = tqdm(total=run.steps, initial=step, desc="translator", disable=None if progress else True, unit="step")
    with JsonlLog(out / "losses.jsonl", "step", upto=step) as log:
        t0 = time.perf_counter()
        while step < run.steps:
            losses = trainer.step(_batch(data.normal, run.batch_size, g, device),
                                  _batch(data.lesion, run.batch_size, g, device))
            step += 1
            log.write({"step": step, **{k: round(v, 5) for k, v in losses.items()}})
            bar.update(1)
            bar.set_postfix(gen=f"{losses['gen']:.3f}", dis=f"{losses['dis']:.3f}")
            if step % run.sample_every == 0 or step == run.steps:
                write_samples(out / "samples" / f"step_{step:06d}.png", model, fixed, run.blend_n)
            if step % run.ckpt_every == 0 or step == run.steps:
                save()
        bar.close()
    if step == 0 or not ckpt_path.exists():
        save()
    logger.info("translator: %d steps, %d patches per domain, %.1fs; wrote %s", step,
                data.info["patches_per_domain"], time.perf_counter() - t0, ckpt_path)
    return ckpt_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options: one per :class:`TranslatorRun` field, and ``--resume``."""
    add_config_arguments(p, TranslatorRun, required=("shards", "out"), defaults={"split": "train"})
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/translator.pt with the same options (--steps may grow)")


def main(args: argparse.Namespace | Sequence[str] | None = None) -> Path:
    """``streamaug-train translator``: parse the options (unless given parsed), train; the checkpoint path."""
    if not isinstance(args, argparse.Namespace):
        p = argparse.ArgumentParser(prog="python -m streamaug.train translator", description=__doc__)
        add_arguments(p)
        args = p.parse_args(args)
    run = config_from_args(TranslatorRun, args)
    packed = len(run.shards) == 1 and (Path(run.shards[0]).is_dir() or run.shards[0].endswith(".json"))
    run.split = run.split if packed else None  # plain .tar lists have no splits
    return train_translator(run, resume=args.resume)
