"""``python -m streamaug.train classifier``: train a DRN lesion classifier, optionally on the lesion stream.

One epoch = one pass over the (selected) real training samples, plus the synthetic share with
``--stream lesion``. After every epoch the validation AUC is computed; the best model is kept in
``OUT/best.pt`` (what :class:`streamaug.PseudoLabel` loads), the last state in ``OUT/last.pt``
(``--resume`` continues from it; with ``--stream lesion`` it holds every rank's stream position, so
the resumed run trains on the samples an uninterrupted one would have), and ``OUT/log.jsonl`` records
every epoch, with the label make-up the model trained on (``emitted``: real positives, oversampled
copies included, real normals, synthetic positives; ``real_positive_share``, ``synthetic_share``) and
the candidates the synthesis stage scored per accepted one (``candidates_per_accepted``). Adam, lr 1e-4, decayed
x0.9 when the validation AUC plateaus (Gupta et al. §4.2). Under ``torchrun`` the model is wrapped in
DDP (gloo on CPU, NCCL on CUDA, rank r on ``cuda:LOCAL_RANK``); shards are split by rank with equal
samples per rank; every rank validates rank 0's model (its BatchNorm statistics broadcast), so all
step the schedule on one AUC; rank 0 logs and saves, ``last.pt`` with every rank's random states.
Images whose label is unknown are left out of training and validation (and counted in a warning).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from streamaug.models.checkpoint import CheckpointError, load_classifier, save_classifier
from streamaug.models.drn import DRN, DRNConfig
from streamaug.train.classifier_data import (
    RunConfig,
    build_train_stream,
    build_val_stream,
    count_selected,
    device_augment,
)
from streamaug.train.inputs import check_splits, check_synthesis_options, check_training_classes, check_validation
from streamaug.train.runconfig import (
    JsonlLog,
    add_config_arguments,
    check_device,
    check_resume,
    check_run_folder,
    config_from_args,
    make_run_folder,
    parse_options,
)

logger = logging.getLogger(__name__)
# what last.pt holds beyond best.pt, so that a run can go on
TRAINER_STATE = ("epoch", "best_auc", "history", "optimizer", "scheduler", "torch_rng", "aug_rng")


# the label make-up of the samples an epoch trained on (LesionStream.stats' "emitted" kinds; copies
# made by --oversample count as real positives)
MAKEUP = ("real_positive", "real_normal", "real_other", "synthetic")


def _count_makeup(made: dict[str, int], batch: dict[str, Any]) -> None:
    labels = torch.as_tensor(batch["label"]).long()
    synthetic = torch.as_tensor(batch["synthetic"]).bool() if "synthetic" in batch else labels < -1  # none
    real = ~synthetic
    made["real_positive"] += int((real & (labels == 1)).sum())
    made["real_normal"] += int((real & (labels == 0)).sum())
    made["real_other"] += int((real & (labels != 0) & (labels != 1)).sum())
    made["synthetic"] += int(synthetic.sum())


def _stage_counts(stream: Any) -> tuple[int, int]:
    """``(generated, accepted)`` so far of the stream's synthesis stage ((0, 0) without one)."""
    stage = getattr(stream, "stage", None)
    if stage is None:
        return 0, 0
    stats = stage.stats
    return int(stats["generated"]), int(stats["accepted"])


def makeup_record(tally: Sequence[int]) -> dict[str, Any]:
    """One epoch's log fields from ``[*MAKEUP counts, generated, accepted]``.

    ``samples``, ``synthetic``, ``emitted`` (the make-up), ``real_positive_share`` (real positives
    / real samples, as :attr:`LesionStream.stats`), ``synthetic_share`` (synthetic / all),
    ``generated`` / ``accepted`` (candidates the synthesis stage scored / chose this epoch) and
    ``candidates_per_accepted`` (None without synthesis).
    """
    emitted = {k: int(v) for k, v in zip(MAKEUP, tally)}
    generated, accepted = (int(v) for v in tally[len(MAKEUP):])
    total = sum(emitted.values())
    real = total - emitted["synthetic"]
    return {"samples": total, "synthetic": emitted["synthetic"], "emitted": emitted,
            "real_positive_share": emitted["real_positive"] / real if real else None,
            "synthetic_share": emitted["synthetic"] / total if total else None,
            "generated": generated, "accepted": accepted,
            "candidates_per_accepted": generated / accepted if accepted else None}


def _ddp_setup(device: str) -> tuple[int, int, torch.device]:
    """``(rank, world, device)``; under ``torchrun`` with CUDA each rank takes the GPU of its
    ``LOCAL_RANK`` (made current before NCCL starts, which stages its objects there)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    cuda = device.startswith("cuda")
    dev = torch.device(device)
    if world > 1 and cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        if dev.index not in (None, local):
            logger.warning("--device %s under torchrun: rank with LOCAL_RANK %d uses cuda:%d", device, local, local)
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world, dev


def _gather(obj: Any, world: int) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` on one)."""
    if world == 1:
        return [obj]
    objs: list[Any] = [None] * world
    torch.distributed.all_gather_object(objs, obj)
    return objs


def _of_rank(saved: Any, rank: int) -> Any:
    """This rank's entry of a per-rank list saved in ``last.pt`` (an older ``last.pt`` saved one
    state for all ranks; a run resumed on more ranks than it was saved from gives rank 0's to the
    new ones)."""
    if not isinstance(saved, list):
        return saved
    return saved[rank] if rank < len(saved) else saved[0]


def _resume_state(out: Path, cfg: RunConfig) -> dict[str, Any]:
    """The state in ``OUT/last.pt`` (there: :func:`check_run_folder`) to go on from (weights under ``"model"``).

    Raises:
        CheckpointError: ``last.pt`` holds no trainer state (it is a ``best.pt``), or was trained
            with another config.
    """
    last = out / "last.pt"
    loaded = load_classifier(last, device="cpu")  # RNG states must stay on the CPU; load_state_dict moves the rest
    missing = [k for k in TRAINER_STATE if k not in loaded.extra]
    if missing:
        raise CheckpointError(f"{last}: no trainer state to resume from (lacks {missing}): it is a best.pt-style "
                              "checkpoint (weights for inference). --resume needs the last.pt that "
                              "`streamaug-train classifier` writes each epoch; restore it, or start a new run with "
                              "another --out (without --resume)")
    check_resume(last, loaded.extra.get("run"), cfg)
    return {"model": loaded.model.state_dict(), **loaded.extra}


def validation_auc(model: torch.nn.Module, loader: Any, device: torch.device) -> float:
    """ROC AUC of ``model``'s logits on ``loader``'s batches (NaN unless both classes are there).

    Logits, not probabilities: a float32 sigmoid rounds every logit above about 17 to 1.0, which
    ties the most confident positives (and can tie a confident normal with them).
    """
    from sklearn.metrics import roc_auc_score

    from streamaug.eval import score_loader

    ys, ss, _ = score_loader(model, loader, device, logits=True)
    return float(roc_auc_score(ys, ss)) if len(set(ys.tolist())) == 2 else float("nan")


def train_classifier(cfg: RunConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Train (or resume) a classifier.

    Before reading any image it refuses, with a message that names the option and the fix
    (:mod:`streamaug.train.inputs`): a device this machine lacks, synthesis options without
    ``--stream lesion``, a fresh run into a folder that holds checkpoints, a ``--resume`` with
    nothing to resume, a training stream that reads validation or test images, a kept training
    set without positives or normals, a validation set without both classes.

    Args:
        cfg: the run config (saved in ``best.pt`` and ``last.pt``).
        resume: continue from ``OUT/last.pt`` (same config but :attr:`RunConfig.RESUMABLE`).
        progress: show progress bars (they switch themselves off when stderr is not a terminal).

    Returns:
        The path of the best checkpoint, ``OUT/best.pt``.

    Raises:
        CheckpointError: (a ``ValueError``) the run cannot start or be resumed in ``cfg.out``; the
            message says why and what to do.
        ValueError: input that cannot give a sound run (see above).
    """
    from tqdm.auto import tqdm

    check_device(cfg.device)
    check_synthesis_options(cfg)
    rank, world, device = _ddp_setup(cfg.device)
    out = Path(cfg.out)
    check_run_folder(out, resume=resume, checkpoints=("best.pt", "last.pt"), resume_from="last.pt")
    state = _resume_state(out, cfg) if resume else None  # refuse early, before reading data
    check_splits(cfg)
    torch.manual_seed(cfg.seed)
    n_real = count_selected(cfg)
    check_training_classes(cfg, n_real)
    n_val = check_validation(cfg)
    for what, unknown in (("training", n_real["unknown"]), ("validation", n_val["unknown"])):
        if unknown and rank == 0:
            logger.warning("%d %s images%s have an unknown label: left out (the classifier learns and is validated "
                           "on labels 0 and 1 only)", unknown, what, f" of {cfg.region}" if cfg.region else "")
    make_run_folder(out)
    train_batches, stream = build_train_stream(cfg, n_real=n_real, world=world, device=device)
    val_loader = build_val_stream(cfg)
    model = DRN(DRNConfig.preset(cfg.preset)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.9, patience=cfg.patience)
    start, best_auc, history, aug_rng = 0, -1.0, [], None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(_of_rank(state["torch_rng"], rank))
        aug_rng = _of_rank(state["aug_rng"], rank)
        start, best_auc, history = state["epoch"] + 1, state["best_auc"], state["history"]
        saved_streams = state.get("stream") or []
        if cfg.stream == "lesion" and rank < len(saved_streams):
            # saved at an epoch's end: the counts carry on, and set_epoch(start) below drops the
            # finished epoch's position (a mid-epoch state would go on where it stopped)
            stream.load_state_dict(saved_streams[rank])
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    loss_fn = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed * 1000 + rank)
    if aug_rng is not None:
        gen.set_state(aug_rng)
    main_rank = rank == 0
    log = JsonlLog(out / "log.jsonl", "epoch", upto=start - 1) if main_rank else None
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        if hasattr(stream, "set_epoch"):
            stream.set_epoch(epoch)
        made = dict.fromkeys(MAKEUP, 0)
        stage_before = _stage_counts(stream)
        losses = []
        bar = tqdm(train_batches(epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
                   disable=None if progress and main_rank else True)  # None: off when not a terminal
        for batch in bar:
            x = device_augment(batch["image"].to(device), cfg.augment, gen)
            y = batch["label"].to(device).float()
            loss = loss_fn(net(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            _count_makeup(made, batch)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        stage_after = _stage_counts(stream)
        tally = [made[k] for k in MAKEUP] + [a - b for a, b in zip(stage_after, stage_before)]
        if world > 1:  # the log reports what all ranks trained on
            summed = torch.tensor(tally, dtype=torch.float64, device=device)
            torch.distributed.all_reduce(summed)
            tally = [int(v) for v in summed.tolist()]
        if world > 1:  # BatchNorm statistics differ by rank after training: every rank validates rank 0's
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, 0)
        val_auc = validation_auc(model, val_loader, device)
        sched.step(val_auc if val_auc == val_auc else 0.0)
        record = {"epoch": epoch, "train_loss": sum(losses) / max(1, len(losses)), "val_auc": val_auc,
                  **makeup_record(tally), "lr": opt.param_groups[0]["lr"],
                  "seconds": round(time.perf_counter() - t0, 2)}
        history.append(record)
        # every rank's stream position and random states, for an exact --resume
        streams = _gather(stream.state_dict(), world) if cfg.stream == "lesion" else None
        rngs = _gather((torch.get_rng_state(), gen.get_state()), world)
        if main_rank:
            extra = {"run": dataclasses.asdict(cfg), "input_size": cfg.image_size, "epoch": epoch,
                     "val_auc": val_auc, "history": history}
            if val_auc > best_auc:
                best_auc = val_auc
                save_classifier(out / "best.pt", model, extra=extra)
            save_classifier(out / "last.pt", model, extra={
                **extra, "best_auc": best_auc, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "torch_rng": [r[0] for r in rngs], "aug_rng": [r[1] for r in rngs], "stream": streams})
            log.write(record)
            logger.info("epoch %d: loss %.4f val AUC %.4f (%d samples: %d real positive, %d synthetic; %ss)",
                        epoch + 1, record["train_loss"], val_auc, record["samples"],
                        record["emitted"]["real_positive"], record["synthetic"], record["seconds"])
        best_auc = max(best_auc, val_auc) if val_auc == val_auc else best_auc
    if log is not None:
        log.close()
    if world > 1:
        torch.distributed.barrier()
    if not (out / "best.pt").exists() and main_rank:  # no epoch improved on -1 (e.g. NaN AUCs)
        save_classifier(out / "best.pt", model, extra={"run": dataclasses.asdict(cfg), "input_size": cfg.image_size})
    return out / "best.pt"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options: one per :class:`RunConfig` field, and ``--resume``."""
    add_config_arguments(p, RunConfig, required=("train_shards", "val_shards", "out"))
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt with the same options (--epochs may grow)")


def main(args: argparse.Namespace | Sequence[str] | None = None) -> Path:
    """``streamaug-train classifier``: parse the options (unless given parsed), train; the best checkpoint."""
    args = parse_options(args, add_arguments, prog="python -m streamaug.train classifier", description=__doc__)
    try:
        return train_classifier(config_from_args(RunConfig, args), resume=args.resume)
    finally:  # a torchrun rank that exits with gloo's threads still up may abort ("terminate called ...")
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
