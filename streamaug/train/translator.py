"""``python -m streamaug.train translator``: train a UNIT normal->lesion patch translator.

Reads shards once, cuts the balanced patch sets (Gupta et al. §3.2), trains UNIT with a progress
bar, logs losses to ``OUT/losses.jsonl``, writes sample grids (normal / translated / blended) to
``OUT/samples/``, and keeps ``OUT/translator.pt`` (weights, config, patch size, s, region, data
hash, step, optimizer and RNG state). ``--resume`` continues from it; on CPU with a fixed seed the
resumed run reproduces the uninterrupted one exactly.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from streamaug.synth.ops import cosine_alpha
from streamaug.models.checkpoint import CheckpointError, read_checkpoint, save_translator
from streamaug.eval.plots import save_sample_grid
from streamaug.train.patches import build_patch_sets
from streamaug.models.unit import UNIT, unit_preset
from streamaug.train.unit_losses import UNITTrainer
from streamaug.data.select import KeySelect


@dataclass
class TranslatorRun:
    """Everything a run depends on; saved in the checkpoint and compared on ``--resume``."""

    shards: list[str] = field(default_factory=list)
    out: str = "runs/translator"
    preset: str = "tiny"
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


def _check_resume(ckpt: dict[str, Any], run: TranslatorRun, path: Path) -> None:
    saved = (ckpt.get("extra") or {}).get("run")
    if saved is None:
        raise CheckpointError(f"{path}: no run config stored; cannot resume it (start a new --out)")
    diff = {k: (saved.get(k), v) for k, v in dataclasses.asdict(run).items()
            if k not in TranslatorRun.RESUMABLE and saved.get(k) != v}
    if diff:
        raise CheckpointError(f"{path}: --resume with a different config {diff} (saved, given); "
                              "use the original arguments or a new --out")


def train_translator(run: TranslatorRun, *, resume: bool = False, progress: bool = True) -> Path:
    """Train (or resume) a translator; returns the checkpoint path."""
    from tqdm.auto import tqdm

    out = Path(run.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "translator.pt"
    device = torch.device(run.device)
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
    if resume and ckpt_path.exists():
        ckpt = read_checkpoint(ckpt_path, device)
        _check_resume(ckpt, run, ckpt_path)
        if ckpt["manifest_sha256"] != data.info["data_sha256"]:
            raise CheckpointError(f"{ckpt_path}: trained on other data (manifest sha256 differs); use a new --out")
        model.load_state_dict(ckpt["weights"])
        state = ckpt["trainer_state"]
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
    bar = tqdm(total=run.steps, initial=step, desc="translator", disable=not progress, unit="step")
    with open(out / "losses.jsonl", "a") as log:
        t0 = time.perf_counter()
        while step < run.steps:
            losses = trainer.step(_batch(data.normal, run.batch_size, g, device),
                                  _batch(data.lesion, run.batch_size, g, device))
            step += 1
            log.write(json.dumps({"step": step, **{k: round(v, 5) for k, v in losses.items()}}) + "\n")
            bar.update(1)
            bar.set_postfix(gen=f"{losses['gen']:.3f}", dis=f"{losses['dis']:.3f}")
            if step % run.sample_every == 0 or step == run.steps:
                write_samples(out / "samples" / f"step_{step:06d}.png", model, fixed, run.blend_n)
            if step % run.ckpt_every == 0 or step == run.steps:
                save()
        bar.close()
    if step == 0 or not ckpt_path.exists():
        save()
    print(f"translator: {step} steps, {data.info['patches_per_domain']} patches per domain, "
          f"{time.perf_counter() - t0:.1f}s; wrote {ckpt_path}")
    return ckpt_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shards", nargs="+", required=True, help="shard paths, a packed folder or manifest.json")
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="tiny", choices=["tiny", "small", "paper"])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--patch-size", type=int, default=None)
    p.add_argument("--s", type=float, default=1.0, help="crop side / larger box side (paper: 1 or 2)")
    p.add_argument("--n", type=int, default=7, help="matched lesion images per normal image")
    p.add_argument("--region", default=None, help="only images of this region (e.g. lower_limb)")
    p.add_argument("--split", default="train", help="split of a packed folder (ignored for plain .tar lists)")
    p.add_argument("--resize", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="autocast to bfloat16 (CUDA)")
    p.add_argument("--sample-every", type=int, default=200)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--resume", action="store_true")


def main(args: argparse.Namespace | Sequence[str] | None = None) -> Path:
    if not isinstance(args, argparse.Namespace):
        p = argparse.ArgumentParser(prog="python -m streamaug.train translator")
        add_arguments(p)
        args = p.parse_args(args)
    shards = args.shards[0] if len(args.shards) == 1 else list(args.shards)
    split = args.split if isinstance(shards, str) and (Path(shards).is_dir() or shards.endswith(".json")) else None
    run = TranslatorRun(shards=[shards] if isinstance(shards, str) else shards, out=args.out, preset=args.preset,
                        steps=args.steps, patch_size=args.patch_size, s=args.s, n=args.n, region=args.region,
                        split=split, resize=args.resize, batch_size=args.batch_size, seed=args.seed,
                        device=args.device, bf16=args.bf16, sample_every=args.sample_every,
                        ckpt_every=args.ckpt_every)
    return train_translator(run, resume=args.resume)
