"""``python -m streamaug.train inpainter``: train a pix2pix inpainter on artificial pairs (Xing et al. 2019, §2.2).

A pair is a real image ``y`` and a box mask ``m``; the generator sees ``x = y ⊙ m`` and the
composite ``x̃ = x + G(x) ⊙ (1 − m)`` is judged by a conditional PatchGAN and by L1 against ``y``
(weight 100; Adam 2e-4, β1 0.5, as pix2pix). Every lesion box of every positive gives a pair; with
``--normals`` (the paper's Pix2Pix-N) every normal image does too, with a box drawn afresh at each
draw by :func:`random_boxes` (the size of a real box, a uniform place inside the image).

Reads the shards once (images resized to the model's size), trains with a progress bar, logs losses
to ``OUT/losses.jsonl`` (flushed per step), writes sample grids (input / generated / composited /
real) to ``OUT/samples/``, and keeps ``OUT/inpainter.pt`` (weights, config, data hash, step,
optimizer and RNG state). ``--resume`` continues from it; on CPU with a fixed seed the resumed run
reproduces the uninterrupted one exactly.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from streamaug.eval.plots import save_sample_grid
from streamaug.models.checkpoint import CheckpointError, read_checkpoint, save_inpainter
from streamaug.models.pix2pix import PRESETS, Pix2Pix, box_mask, composite, pix2pix_preset
from streamaug.train.inpainter_data import Pairs, draw_batch, random_boxes, read_pairs
from streamaug.train.inputs import check_positives
from streamaug.train.rng import global_rng_state, set_global_rng_state
from streamaug.train.runconfig import (
    JsonlLog,
    add_config_arguments,
    at_least,
    check_bounds,
    check_device,
    check_resume,
    check_run_folder,
    config_from_args,
    make_run_folder,
    parse_options,
)

logger = logging.getLogger(__name__)


@dataclass
class InpainterRun:
    """Everything an inpainter run depends on; saved in the checkpoint and compared on ``--resume``.

    Every field is a ``streamaug-train inpainter`` option (``batch_size`` -> ``--batch-size``).

    Attributes:
        shards: shard paths, a packed folder or its manifest.json (positives with boxes, and normals).
        out: run folder: inpainter.pt, losses.jsonl, run.json and samples/ go here.
        preset: pix2pix size preset (tiny: 64 px for CPU runs; paper: 256 px, unet_256 and the 70x70 PatchGAN).
        steps: training steps in all (a resumed run continues up to this).
        image_size: train at this image side (divisible by 2**depth of the preset); default: the preset's.
        normals: add the normal images, each with a random box of a real box's size (Pix2Pix-N).
        region: only images of this region (e.g. lower_limb); default: all.
        split: split of a packed folder or manifest (ignored for plain .tar lists).
        positives: keys of the only lesion images to use (e.g. the kept rare positives); default: all.
        batch_size: pairs per step (pix2pix used 1).
        flip: random horizontal flips of the pairs.
        seed: seeds initialisation, the pairs drawn, random boxes, flips and dropout.
        device: torch device to train on (cpu, cuda, cuda:1, ...).
        bf16: autocast to bfloat16 (CUDA).
        sample_every: write a sample grid (input / generated / composited / real) every this many steps.
        ckpt_every: save OUT/inpainter.pt every this many steps.
    """

    shards: list[str] = field(default_factory=list)
    out: str = "runs/inpainter"
    preset: str = field(default="tiny", metadata={"choices": sorted(PRESETS)})
    steps: int = field(default=1000, metadata=at_least(1))
    image_size: int | None = field(default=None, metadata=at_least(1))  # None: the preset's
    normals: bool = False
    region: str | None = None
    split: str | None = None
    positives: list[str] | None = None  # only these lesion images (e.g. the kept rare positives); None: all
    batch_size: int = field(default=8, metadata=at_least(1))
    flip: bool = True
    seed: int = field(default=0, metadata=at_least(0))
    device: str = "cpu"
    bf16: bool = False
    sample_every: int = field(default=200, metadata=at_least(1))
    ckpt_every: int = field(default=200, metadata=at_least(1))

    # fields that may change between an interrupted run and its resume
    RESUMABLE = ("steps", "device", "sample_every", "ckpt_every", "out")

    def __post_init__(self) -> None:
        check_bounds(self)


def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits.float(), float(real)))


class Pix2PixTrainer:
    """The two Adam optimizers, the random state of training, and one pix2pix step.

    The random state is :attr:`rng` (the pairs drawn, random boxes, flips: :func:`draw_batch`) and
    torch's global generators (the dropout of training); :meth:`state_dict` holds them with the
    optimizers, so a run resumed from it continues exactly.

    Args:
        model: the :class:`~streamaug.models.pix2pix.Pix2Pix` to train (on its device).
        seed: seeds :attr:`rng`.
        autocast_dtype: e.g. ``torch.bfloat16`` for the forward passes; None: plain precision.

    Examples:
        >>> from streamaug.models.pix2pix import pix2pix_preset
        >>> _ = torch.manual_seed(0)
        >>> trainer = Pix2PixTrainer(Pix2Pix(pix2pix_preset("tiny", image_size=32, depth=4)))
        >>> y, mask = torch.rand(2, 1, 32, 32), box_mask(torch.tensor([[4, 4, 12, 12]] * 2), 32, 32)
        >>> sorted(trainer.step(y, mask)), trainer.steps
        (['dis', 'gen', 'gen_adv', 'l1'], 1)
    """

    def __init__(self, model: Pix2Pix, *, seed: int = 0, autocast_dtype: torch.dtype | None = None) -> None:
        c = model.config
        self.model, self.autocast_dtype, self.steps = model, autocast_dtype, 0
        self.rng = torch.Generator().manual_seed(seed)
        self.opt_g = torch.optim.Adam(model.generator.parameters(), lr=c.lr, betas=c.betas)
        self.opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=c.lr, betas=c.betas)
        self.device = next(model.parameters()).device

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def step(self, y: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """One step on ``(B, 1, S, S)`` images in ``[0, 1]`` and their box masks.

        Returns:
            Python floats: ``dis`` (the discriminator's loss, halved as in pix2pix), ``gen`` (the
            generator's total), ``gen_adv`` and ``l1`` (unweighted, on the ``[-1, 1]`` scale).
        """
        m, d = self.model.train(), self.model.discriminator
        real = y * 2 - 1
        with self._autocast():
            x = m.network_input(y, mask)
            fake = composite(real, m.generator(x), mask)
        self.opt_d.zero_grad(set_to_none=True)
        with self._autocast():
            loss_d = 0.5 * (_bce(d(x, real), True) + _bce(d(x, fake.detach()), False))
        loss_d.backward()
        self.opt_d.step()
        self.opt_g.zero_grad(set_to_none=True)
        d.requires_grad_(False)  # no discriminator gradients in the generator step
        try:
            with self._autocast():
                adv = _bce(d(x, fake), True)
            l1 = (fake.float() - real).abs().mean()
            loss_g = adv + m.config.l1_weight * l1
            loss_g.backward()
        finally:
            d.requires_grad_(True)
        self.opt_g.step()
        self.steps += 1
        return {k: float(v.detach()) for k, v in (("dis", loss_d), ("gen", loss_g), ("gen_adv", adv), ("l1", l1))}

    def state_dict(self) -> dict[str, Any]:
        """Optimizer states, step count and random state (the weights are saved with the model)."""
        return {"opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "steps": self.steps,
                "rng": self.rng.get_state(), **global_rng_state(self.device)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (deep-copied, so no tensor is shared with its source); this sets
        torch's global generators too."""
        state = copy.deepcopy(state)
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.steps = int(state["steps"])
        self.rng.set_state(state["rng"])
        set_global_rng_state(state, self.device)


@torch.no_grad()
def write_samples(path: Path, model: Pix2Pix, y: torch.Tensor, mask: torch.Tensor, keys: Sequence[str]) -> None:
    """Grid of fixed pairs: input ``x``, ``G(x)``, the composite and the real image; one dropout seed
    per row (the noise the :class:`streamaug.synth.Inpaint` synthesizer uses)."""
    was_training = model.training
    model.eval()
    generated = model.generate(y, mask, seeds=torch.arange(len(y))).clamp(0, 1)
    rows = zip((y * mask).cpu(), generated.cpu(), composite(y, generated, mask).cpu(), y.cpu())
    save_sample_grid(path, [torch.stack(r) for r in rows], titles=("input", "generated", "composited", "real"),
                     row_titles=list(keys))
    model.train(was_training)


def _fixed_pairs(pairs: Pairs, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The sample grid's rows: the first six real boxes, and two normals with random boxes."""
    s = pairs.images.shape[-1]
    idx, boxes = pairs.owner[:6], pairs.boxes[:6]
    if len(pairs.normals):
        sizes = pairs.boxes[:, 2:] - pairs.boxes[:, :2]
        idx = torch.cat([idx, pairs.normals[:2]])
        g = torch.Generator().manual_seed(seed)
        boxes = torch.cat([boxes, random_boxes(sizes, s, s, len(pairs.normals[:2]), g)])
    return pairs.images[idx].float().to(device), box_mask(boxes, s, s).to(device), [pairs.keys[i] for i in idx]


def train_inpainter(run: InpainterRun, *, resume: bool = False, progress: bool = True) -> Path:
    """Train an inpainter as ``run`` says, or go on with one; returns ``OUT/inpainter.pt``.

    With ``resume`` training goes on from ``OUT/inpainter.pt`` (with the same config,
    :attr:`InpainterRun.RESUMABLE` aside); without it, ``OUT`` must hold no ``inpainter.pt``
    (:func:`check_run_folder`). ``run`` is saved in the
    checkpoint and in ``OUT/run.json``; ``progress`` shows bars (off by themselves off a terminal).

    Raises:
        CheckpointError: the checkpoint to resume is missing, unreadable, holds no trainer state, was
            trained with another config or on other data; a fresh run into a folder with one.
        ValueError: no training pairs in the shards, ``--positives`` keys that match no lesion image,
            a device this machine lacks.
    """
    from tqdm.auto import tqdm

    check_device(run.device)
    out, device = Path(run.out), torch.device(run.device)
    ckpt_path = out / "inpainter.pt"
    check_run_folder(out, resume=resume, checkpoints=(ckpt_path.name,), resume_from=ckpt_path.name)
    ckpt = None
    if resume:  # refuse a bad resume before reading the data
        ckpt = read_checkpoint(ckpt_path, "cpu", kind="inpainter")  # RNG states stay on the CPU
        if not {"opt_g", "rng", "torch_rng"} <= set(ckpt.get("trainer_state") or {}):
            raise CheckpointError(f"{ckpt_path}: no trainer state to resume from (saved for inference only); "
                                  "start a new run with another --out, without --resume")
        check_resume(ckpt_path, (ckpt.get("extra") or {}).get("run"), run)
    make_run_folder(out)
    torch.manual_seed(run.seed)
    try:
        config = pix2pix_preset(run.preset, **({"image_size": run.image_size} if run.image_size else {}))
    except ValueError as err:  # e.g. a side the U-Net cannot halve depth times
        given = f" with --image-size {run.image_size}" if run.image_size is not None else ""
        raise ValueError(f"--preset {run.preset}{given}: {err}") from None
    shards = run.shards[0] if len(run.shards) == 1 else run.shards
    check_positives(shards, run.split, run.region, run.positives)
    pairs = read_pairs(shards, size=config.image_size, split=run.split, region=run.region, normals=run.normals,
                       positives=run.positives, progress=progress)
    model = Pix2Pix(config).to(device)
    trainer = Pix2PixTrainer(model, seed=run.seed, autocast_dtype=torch.bfloat16 if run.bf16 else None)
    if ckpt is not None:
        if ckpt["data_sha256"] != pairs.info["data_sha256"]:
            raise CheckpointError(f"{ckpt_path}: trained on other data (data sha256 differs); use a new --out")
        model.load_state_dict(ckpt["weights"])
        trainer.load_state_dict(ckpt["trainer_state"])
    step = trainer.steps
    fixed_y, fixed_mask, fixed_keys = _fixed_pairs(pairs, run.seed, device)
    record = {"run": dataclasses.asdict(run), "config": config.to_dict(), "data": pairs.info}

    def save() -> None:
        save_inpainter(ckpt_path, model, data_sha256=pairs.info["data_sha256"], step=step,
                       extra={"run": record["run"], "data": pairs.info}, trainer_state=trainer.state_dict())

    (out / "run.json").write_text(json.dumps(record, indent=2))
    bar = tqdm(total=run.steps, initial=step, desc="inpainter", disable=None if progress else True, unit="step")
    t0 = time.perf_counter()
    with JsonlLog(out / "losses.jsonl", "step", upto=step) as log:
        while step < run.steps:
            y, mask = draw_batch(pairs, run.batch_size, trainer.rng, run.flip)
            losses = trainer.step(y.to(device), mask.to(device))
            step += 1
            log.write({"step": step, **{k: round(v, 5) for k, v in losses.items()}})
            bar.update(1)
            bar.set_postfix(l1=f"{losses['l1']:.3f}", dis=f"{losses['dis']:.3f}")
            if step % run.sample_every == 0 or step == run.steps:
                write_samples(out / "samples" / f"step_{step:06d}.png", model, fixed_y, fixed_mask, fixed_keys)
            if step % run.ckpt_every == 0 or step == run.steps:
                save()
    bar.close()
    if not ckpt_path.exists():
        save()
    logger.info("inpainter: %d steps, %d boxes on %d positives, %d normals, %.1fs; wrote %s", step,
                pairs.info["boxes"], pairs.info["positive_images"], pairs.info["normal_images"],
                time.perf_counter() - t0, ckpt_path)
    return ckpt_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options: one per :class:`InpainterRun` field, and ``--resume``."""
    add_config_arguments(p, InpainterRun, required=("shards", "out"), defaults={"split": "train"})
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/inpainter.pt with the same options (--steps may grow)")


def main(args: argparse.Namespace | Sequence[str] | None = None) -> Path:
    """``streamaug-train inpainter``: parse the options (unless given parsed), train; the checkpoint path.

    A split given with plain ``.tar`` shards (no manifest) is ignored.
    """
    args = parse_options(args, add_arguments, prog="python -m streamaug.train inpainter", description=__doc__)
    return train_inpainter(config_from_args(InpainterRun, args), resume=args.resume)
