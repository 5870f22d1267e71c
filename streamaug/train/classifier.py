"""``python -m streamaug.train classifier``: train a DRN lesion classifier, optionally on the lesion stream.

One epoch = one pass over the (selected) real training samples, plus the synthetic share with
``--stream lesion``. After every epoch the validation AUC is computed; the best model is kept in
``OUT/best.pt`` (what :class:`streamaug.PseudoLabel` loads), the last state in ``OUT/last.pt``
(``--resume`` continues from it), and ``OUT/log.jsonl`` records every epoch. Adam, lr 1e-4, decayed
x0.9 when the validation AUC plateaus (Gupta et al. §4.2). Under ``torchrun`` the model is wrapped in
DDP (gloo on CPU, NCCL on CUDA); shards are split by rank with equal samples per rank; rank 0 logs
and saves.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Sequence

import torch

from streamaug.train.classifier_data import RunConfig, build_train_stream, build_val_stream, count_selected, device_augment


def _ddp_setup(device: str) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    dev = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if device == "cuda" and world > 1 else device)
    return rank, world, dev


def train_classifier(cfg: RunConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Train (or resume) and return the path of the best checkpoint."""
    from sklearn.metrics import roc_auc_score
    from tqdm.auto import tqdm

    from streamaug.eval import score_loader
    from streamaug.models.checkpoint import load_classifier, save_classifier
    from streamaug.models.drn import DRN, DRNConfig

    rank, world, device = _ddp_setup(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    n_real = count_selected(cfg)
    train_batches, stream = build_train_stream(cfg, n_real=n_real, world=world, device=device)
    val_loader = build_val_stream(cfg)
    model = DRN(DRNConfig.preset(cfg.preset)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.9, patience=cfg.patience)
    start, best_auc, history, aug_rng = 0, -1.0, [], None
    if resume and (out / "last.pt").exists():
        last = load_classifier(out / "last.pt", device=device)
        saved = last.extra.get("run", {})
        changed = {k: (saved.get(k), v) for k, v in dataclasses.asdict(cfg).items()
                   if k not in RunConfig.RESUMABLE and saved.get(k) != v}
        if changed:
            raise ValueError(f"{out / 'last.pt'}: --resume with a different config {changed} (saved, given)")
        model.load_state_dict(last.model.state_dict())
        opt.load_state_dict(last.extra["optimizer"])
        sched.load_state_dict(last.extra["scheduler"])
        torch.set_rng_state(last.extra["torch_rng"])
        aug_rng = last.extra["aug_rng"]
        start, best_auc, history = last.extra["epoch"] + 1, last.extra["best_auc"], last.extra["history"]
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    loss_fn = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed * 1000 + rank)
    if aug_rng is not None:
        gen.set_state(aug_rng)
    main_rank = rank == 0
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        if hasattr(stream, "set_epoch"):
            stream.set_epoch(epoch)
        seen = synthetic = 0
        losses = []
        bar = tqdm(train_batches(), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (progress and main_rank),
                   unit="batch", leave=False)
        for batch in bar:
            x = device_augment(batch["image"].to(device), cfg.augment, gen)
            y = batch["label"].to(device).float()
            loss = loss_fn(net(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            seen += len(y)
            synthetic += int(batch["synthetic"].sum()) if "synthetic" in batch else 0
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        ys, ss, _ = score_loader(model, val_loader, device)
        val_auc = float(roc_auc_score(ys, ss)) if len(set(ys)) == 2 else float("nan")
        sched.step(val_auc if val_auc == val_auc else 0.0)
        record = {"epoch": epoch, "train_loss": sum(losses) / max(1, len(losses)), "val_auc": val_auc,
                  "samples": seen, "synthetic": synthetic, "lr": opt.param_groups[0]["lr"],
                  "seconds": round(time.perf_counter() - t0, 2)}
        if stream is not None and hasattr(stream, "stats") and cfg.stream == "lesion":
            record["acceptance"] = {k: v for k, v in stream.stats.items() if k in ("generated", "accepted", "rate")}
        history.append(record)
        if main_rank:
            extra = {"run": dataclasses.asdict(cfg), "input_size": cfg.image_size, "epoch": epoch,
                     "val_auc": val_auc, "history": history}
            if val_auc > best_auc:
                best_auc = val_auc
                save_classifier(out / "best.pt", model, extra=extra)
            save_classifier(out / "last.pt", model, extra={
                **extra, "best_auc": best_auc, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "torch_rng": torch.get_rng_state(), "aug_rng": gen.get_state()})
            with open(out / "log.jsonl", "a") as log:
                log.write(json.dumps(record) + "\n")
            if progress:
                print(f"epoch {epoch + 1}: loss {record['train_loss']:.4f} val AUC {val_auc:.4f} "
                      f"({seen} samples, {synthetic} synthetic, {record['seconds']}s)")
        best_auc = max(best_auc, val_auc) if val_auc == val_auc else best_auc
    if world > 1:
        torch.distributed.barrier()
    if not (out / "best.pt").exists() and main_rank:  # no epoch improved on -1 (e.g. NaN AUCs)
        save_classifier(out / "best.pt", model, extra={"run": dataclasses.asdict(cfg), "input_size": cfg.image_size})
    return out / "best.pt"


def add_arguments(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--train-shards", nargs="+", required=True, help="training shards (a packed folder with --train-split)")
    a("--val-shards", nargs="+", required=True)
    a("--train-split", default=None, help="split name when --train-shards is a packed folder")
    a("--val-split", default=None)
    a("--out", required=True)
    a("--region", default=None, help="only images of this region (e.g. lower_limb)")
    a("--stream", default="plain", choices=["plain", "lesion"], help="lesion: on-the-fly synthesis")
    a("--translator", default=None, help="translator.pt for --stream lesion")
    a("--filter-classifier", default=None, help="baseline classifier (best.pt) for the pseudo-label filter")
    a("--filter-threshold", type=float, default=0.9)
    a("--synthetic-fraction", type=float, default=0.25)
    a("--positive-ratio", type=float, default=None, help="keep real positives at R per normal (e.g. 0.1)")
    a("--oversample", type=int, default=1, help="repeat every real positive this many times per epoch")
    a("--augment", default="flip", choices=["none", "flip", "classic"])
    a("--preset", default="tiny", choices=["tiny", "small", "paper"])
    a("--image-size", type=int, default=128)
    a("--epochs", type=int, default=12)
    a("--batch-size", type=int, default=32)
    a("--lr", type=float, default=1e-4)
    a("--weight-decay", type=float, default=1e-4)
    a("--patience", type=int, default=1)
    a("--workers", type=int, default=0)
    a("--seed", type=int, default=0)
    a("--device", default="cpu")
    a("--blend-n", type=float, default=2.0)
    a("--s", type=float, default=1.0, help="site size factor for the lesion stream")
    a("--n", type=int, default=7)
    a("--resume", action="store_true")


def main(args: argparse.Namespace | Sequence[str] | None = None) -> Path:
    if not isinstance(args, argparse.Namespace):
        p = argparse.ArgumentParser(prog="python -m streamaug.train classifier")
        add_arguments(p)
        args = p.parse_args(args)
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    cfg = RunConfig(**{k: v for k, v in vars(args).items() if k in fields})
    return train_classifier(cfg, resume=args.resume)
