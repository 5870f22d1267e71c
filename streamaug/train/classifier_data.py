"""Data for the classifier trainer: the run config, sample selection, train/val streams, augmentation."""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from streamaug.data.collate import collate_xray
from streamaug.data.oversample import oversample_batches, oversample_gap
from streamaug.data.select import KeySelect, matched_normals, rare_positive_select
from streamaug.data.shardlist import expand_urls, find_manifest
from streamaug.data.stream import XRayShards
from streamaug.models.drn import DRN_PRESETS
from streamaug.train.inputs import (
    check_calibration_positives,
    check_synthesis_options,
    check_workers,
    lesion_box_records,
)
from streamaug.train.runconfig import above, at_least, between, check_bounds

logger = logging.getLogger(__name__)


@dataclass
class RunConfig:
    """Everything a classifier run depends on; saved in its checkpoints and compared on ``--resume``.

    Every field is a ``streamaug-train classifier`` option (``batch_size`` -> ``--batch-size``).

    Attributes:
        train_shards: training shards: paths, or a packed folder with --train-split.
        val_shards: validation shards: paths, or a packed folder with --val-split.
        train_split: split name when --train-shards is a packed folder.
        val_split: split name when --val-shards is a packed folder.
        out: run folder: best.pt, last.pt and log.jsonl go here.
        region: only images of this region (e.g. lower_limb); default: all.
        stream: plain: the real images only; lesion: on-the-fly lesion synthesis (see --synthesizer).
        translator: translator.pt for --stream lesion with --synthesizer translate or mix.
        synthesizer: what makes the synthetic lesions of --stream lesion: translate (the UNIT
            translator of --translator), copy_paste (crops of the kept real training positives,
            pasted at normal sites), mix (both, equal weights), inpaint (the pix2pix inpainter of
            --inpainter gives the kept real positives new surroundings, their lesion boxes kept) or
            swap (copy_paste onto the kept real positives: another kept lesion of a similar size
            covers each one's own lesion, in that positive's context).
        inpainter: inpainter.pt (`streamaug-train inpainter`) for --synthesizer inpaint.
        paste_rot90: copy_paste, swap, mix: turn each pasted lesion by a random multiple of 90 degrees
            (besides the random flip); --no-paste-rot90 keeps its orientation (a limb's bone edges
            keep their direction).
        paste_match: copy_paste, swap, mix: paste at each site only lesions whose image has the same
            value of this metadata field as the site's (e.g. bone: a humerus lesion on a humerus); a
            site whose value no kept lesion shares (a normal without a bone entry) draws from all.
        paste_avoid: copy_paste, swap, mix: never paste a lesion whose image has the same value of this
            metadata field as the site's (e.g. group, a patient id: with swap, never a positive's own lesion).
        paste_shape: copy_paste, mix: box pastes each lesion crop whole (the lesion and its own
            surroundings); mask pastes only the lesion, by its mask in the shards widened and feathered
            (TumorCP's way: the site keeps its own bone around it). Not with swap.
        filter_classifier: baseline classifier (its best.pt) for the pseudo-label filter, or a patch
            scorer (streamaug-train scorer's scorer.pt: scores the blended sites); default: no filter.
        filter_mode: threshold: keep every candidate the filter scores at least the threshold (the paper);
            rank: keep the best-scored candidates of each synthesis round, as many as asked, so the
            synthetic share never depends on the score scale (no floor unless --filter-quantile).
        filter_threshold: threshold mode: the pseudo-label threshold, unless --filter-quantile sets it.
        filter_quantile: calibrate the threshold (threshold mode) or the floor (rank mode) as this
            quantile of the filter's scores on the validation real positives (PseudoLabel.calibrate);
            default: threshold mode uses --filter-threshold, rank mode has no floor.
        synthetic_fraction: share of each epoch's samples that are synthetic (--stream lesion); an epoch
            is one pass over the real training samples plus the synthetic ones.
        synthetic_per_positive: synthetic positives per kept real positive and epoch (--stream lesion;
            replaces --synthetic-fraction): r makes an epoch as long, with as many positives, as
            --oversample k + r without synthesis, so synthetic positives can be set against copies of
            real ones at an equal budget.
        positive_ratio: keep real training positives at this many per normal (e.g. 0.1); default: all.
        match_sources: --stream lesion: make synthetic positives only from normals whose value of this
            numeric metadata column (e.g. age) is distributed as among the kept positives
            (streamaug.data.select.matched_normals); default: from every normal.
        oversample: show every real positive this many times per epoch, the copies spread over the
            epoch (streamaug.data.oversample); with --stream lesion only real positives are copied.
        augment: device augmentation: none, flip (horizontal flips) or classic (flips, affine, brightness/contrast).
        preset: DRN size preset.
        image_size: side images are resized to, for training and validation.
        epochs: epochs in all (a resumed run continues up to this).
        batch_size: images per batch (per rank under torchrun).
        lr: Adam learning rate (decayed x0.9 when the validation AUC plateaus).
        weight_decay: Adam weight decay.
        patience: epochs without validation-AUC gain before the learning rate decays.
        workers: DataLoader worker processes (per rank).
        seed: seeds the selection of rare positives, the stream order, initialisation and augmentation.
        device: torch device (cpu, cuda; under torchrun each rank takes its LOCAL_RANK GPU).
        blend_n: exponent n of the cosine blending mask (--stream lesion).
        s: site size factor: lesion-site side / larger box side (--stream lesion).
        n: matched lesion images whose boxes place sites on each normal (--stream lesion).
    """

    train_shards: list[str] = field(default_factory=list)
    val_shards: list[str] = field(default_factory=list)
    train_split: str | None = None
    val_split: str | None = None
    out: str = "runs/classifier"
    region: str | None = None
    stream: Literal["plain", "lesion"] = "plain"
    translator: str | None = None
    synthesizer: Literal["translate", "copy_paste", "mix", "inpaint", "swap"] = "translate"
    inpainter: str | None = None
    paste_rot90: bool = True
    paste_match: str | None = None
    paste_avoid: str | None = None
    paste_shape: Literal["box", "mask"] = "box"
    filter_classifier: str | None = None
    filter_mode: Literal["threshold", "rank"] = "threshold"
    filter_threshold: float = field(default=0.9, metadata=between(0, 1))
    filter_quantile: float | None = field(default=None, metadata=between(0, 1))
    synthetic_fraction: float = field(default=0.25, metadata=between(
        0, 1, high_open=True, why="an epoch is one pass over the real training samples plus the synthetic share: "
                                  "at 1 it would hold no real sample"))
    synthetic_per_positive: float | None = field(default=None, metadata=at_least(0))
    positive_ratio: float | None = field(default=None, metadata=above(0))
    match_sources: str | None = None
    oversample: int = field(default=1, metadata=at_least(1))
    augment: Literal["none", "flip", "classic"] = "flip"
    preset: str = field(default="tiny", metadata={"choices": sorted(DRN_PRESETS)})
    image_size: int = field(default=128, metadata=at_least(1))
    epochs: int = field(default=12, metadata=at_least(1))
    batch_size: int = field(default=32, metadata=at_least(1))
    lr: float = field(default=1e-4, metadata=above(0))
    weight_decay: float = field(default=1e-4, metadata=at_least(0))
    patience: int = field(default=1, metadata=at_least(0))
    workers: int = field(default=0, metadata=at_least(0))
    seed: int = field(default=0, metadata=at_least(0))
    device: str = "cpu"
    blend_n: float = field(default=2.0, metadata=above(0))
    s: float = field(default=1.0, metadata=above(0))
    n: int = field(default=7, metadata=at_least(1))

    RESUMABLE = ("epochs", "device", "workers", "out")

    def __post_init__(self) -> None:
        check_bounds(self)


def _spec(shards: list[str]) -> str | list[str]:
    return shards[0] if len(shards) == 1 else list(shards)


def count_selected(cfg: RunConfig) -> dict[str, int]:
    """Counts of the selected real training samples (``positives``, ``normals``)."""
    _, counts = rare_positive_select(_spec(cfg.train_shards), cfg.train_split, cfg.region, cfg.positive_ratio, cfg.seed)
    return counts


def is_real_positive(sample: dict[str, Any]) -> bool:
    """What ``--oversample`` copies: real positives (label 1), never synthetic ones."""
    return int(sample["label"]) == 1 and not bool(sample.get("synthetic", False))


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed numpy and ``random`` in a DataLoader worker from its torch seed."""
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def seeded_loader(dataset: Any, cfg: RunConfig, batch_size: int,
                  workers: int | None = None) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` whose workers are seeded from ``cfg.seed`` (``generator=``, ``worker_init_fn=``);
    ``workers`` of them (default: ``cfg.workers``)."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size,
                                       num_workers=cfg.workers if workers is None else workers,
                                       collate_fn=collate_xray, generator=torch.Generator().manual_seed(cfg.seed),
                                       worker_init_fn=seed_worker)


def build_filter(cfg: RunConfig, device: torch.device | str = "cpu") -> Any:
    """The pseudo-label filter of ``cfg`` (a :class:`streamaug.PseudoLabel`), or None without
    ``filter_classifier``. With ``filter_quantile`` its threshold (or rank-mode floor) is calibrated on
    the scores of the validation real positives (:meth:`PseudoLabel.calibrate`)."""
    if not cfg.filter_classifier:
        return None
    from streamaug.filters.pseudo_label import PseudoLabel

    if cfg.filter_mode not in ("threshold", "rank"):
        raise ValueError(f"filter_mode must be 'threshold' or 'rank', got {cfg.filter_mode!r}")
    threshold = cfg.filter_threshold if cfg.filter_mode == "threshold" else None
    filt = PseudoLabel(cfg.filter_classifier, threshold, mode=cfg.filter_mode, device=device)
    if cfg.filter_quantile is not None and filt.on == "site":
        raise ValueError(f"--filter-quantile calibrates on whole validation images, but {cfg.filter_classifier} is a "
                         "site scorer (streamaug-train scorer): use rank mode or --filter-threshold with it")
    if cfg.filter_quantile is not None:
        check_calibration_positives(cfg)  # the filter cannot score an empty set
        scores = filt.positive_scores(build_val_stream(cfg))
        if not len(scores):
            raise ValueError("--filter-quantile needs validation positives (none in --val-shards for this region)")
        filt.calibrate(scores, cfg.filter_quantile)
    return filt


def build_synthesizer(cfg: RunConfig, select: Any, device: torch.device | str = "cpu") -> Any:
    """The synthesizer of ``cfg.synthesizer``: a :class:`streamaug.synth.Translate` of ``cfg.translator``,
    a :class:`streamaug.synth.CopyPaste` of the selected (kept) training positives, a
    :class:`streamaug.synth.Mix` of both, or an :class:`streamaug.synth.Inpaint` of ``cfg.inpainter``
    (its sources are the kept real positives: the stream's ``select``), or a lesion swap
    (``CopyPaste(onto="lesions")``, sources and lesions both the kept real positives)."""
    from streamaug.synth.copy_paste import CopyPaste
    from streamaug.synth.mix import Mix
    from streamaug.synth.translate import Translate

    if cfg.synthesizer not in ("translate", "copy_paste", "mix", "inpaint", "swap"):
        raise ValueError(f"synthesizer must be translate, copy_paste, mix, inpaint or swap, got {cfg.synthesizer!r}")
    if cfg.synthesizer == "inpaint":
        from streamaug.synth.inpaint import Inpaint

        if not cfg.inpainter:
            raise ValueError("--synthesizer inpaint needs --inpainter PATH (train one with "
                             "`python -m streamaug.train inpainter`)")
        return Inpaint(cfg.inpainter, device=device)
    parts = []
    if cfg.synthesizer in ("translate", "mix"):
        if not cfg.translator:
            raise ValueError(f"--synthesizer {cfg.synthesizer} needs --translator PATH (train one with "
                             "`python -m streamaug.train translator`), or use --synthesizer copy_paste")
        parts.append(Translate(cfg.translator, blend_n=cfg.blend_n, device=device))
    if cfg.synthesizer in ("copy_paste", "mix", "swap"):
        parts.append(CopyPaste(_spec(cfg.train_shards), split=cfg.train_split, select=select, resize=cfg.image_size,
                               blend_n=cfg.blend_n, onto="lesions" if cfg.synthesizer == "swap" else "normals",
                               rot90=cfg.paste_rot90, match=cfg.paste_match, avoid=cfg.paste_avoid,
                               shape=cfg.paste_shape, device=device))
    return parts[0] if len(parts) == 1 else Mix(parts)


def synthetic_share(cfg: RunConfig, n_real: dict[str, int], world: int = 1) -> float:
    """The share of each epoch's samples (before oversampling copies) that are synthetic:
    ``cfg.synthetic_fraction``, or with ``cfg.synthetic_per_positive = r`` the share that puts ``r``
    synthetic samples per kept real positive beside one pass over the real samples.

    Examples:
        >>> synthetic_share(RunConfig(synthetic_per_positive=2.0), {"positives": 10, "normals": 100})
        0.15384615384615385
    """
    if cfg.synthetic_per_positive is None:
        return cfg.synthetic_fraction
    if cfg.synthetic_per_positive < 0:
        raise ValueError(f"synthetic_per_positive must be >= 0, got {cfg.synthetic_per_positive}")
    synthetic = cfg.synthetic_per_positive * n_real["positives"] / world
    return synthetic / ((n_real["positives"] + n_real["normals"]) / world + synthetic)


def build_train_stream(cfg: RunConfig, *, n_real: dict[str, int], world: int,
                       device: torch.device) -> tuple[Callable[[int], Iterator[dict[str, Any]]], Any]:
    """``(batches, stream)``: ``batches(epoch)`` yields one epoch of collated training batches (call
    ``stream.set_epoch(epoch)`` first); ``stream`` is the dataset (``XRayShards`` or ``LesionStream``)."""
    check_synthesis_options(cfg)  # e.g. --match-sources without --stream lesion
    select, _ = rare_positive_select(_spec(cfg.train_shards), cfg.train_split, cfg.region, cfg.positive_ratio, cfg.seed)
    check_workers(cfg, select, world)  # before any reader starts: a worker's error would come late and wrapped
    real = (n_real["positives"] + n_real["normals"]) / world  # real samples per rank and epoch
    refuse = ("--match-sources chooses the normals synthetic positives are made from: it needs --stream lesion "
              "and a synthesizer that starts from normals (not inpaint or swap)")
    if cfg.stream == "plain":
        ds = XRayShards(_spec(cfg.train_shards), split=cfg.train_split, seed=cfg.seed, resize=cfg.image_size,
                        select=select)
        source: Callable[[], Iterator[dict[str, Any]]] = functools.partial(iter, seeded_loader(ds, cfg, cfg.batch_size))
    elif cfg.stream == "lesion":
        from streamaug.sites import LesionBoxBank, SiteProposer
        from streamaug.synth.lesion_stream import LesionStream
        from streamaug.synth.sources import source_label

        manifest = find_manifest(expand_urls(_spec(cfg.train_shards), cfg.train_split)[0])
        if manifest is None:
            raise ValueError("--stream lesion needs shards written by `python -m streamaug.cli.pack` (manifest.json)")
        records = lesion_box_records(cfg, manifest, select)  # of the shards read, even without --train-split
        sites = SiteProposer(LesionBoxBank.from_records(records), s=cfg.s, n=cfg.n, seed=cfg.seed)
        fraction = synthetic_share(cfg, n_real, world)
        synthesizer = build_synthesizer(cfg, select, device)
        if cfg.match_sources and source_label(synthesizer) == 1:
            raise ValueError(refuse)
        source_select = None
        if cfg.match_sources:
            source_select, matched = matched_normals(_spec(cfg.train_shards), cfg.train_split, select,
                                                     cfg.match_sources, cfg.seed)
            logger.info("synthesis sources matched on %s: %d of %d normals (%d per bin, edges %s)",
                        cfg.match_sources, matched["sources"], matched["normals"], matched["per_bin"],
                        matched["edges"])
        ds = LesionStream(_spec(cfg.train_shards), synthesizer=synthesizer,
                          filter=build_filter(cfg, device), synthetic_fraction=fraction, device=device,
                          seed=cfg.seed, sites=sites, split=cfg.train_split, resize=cfg.image_size,
                          num_workers=cfg.workers, select=select, source_select=source_select, real_pass=True)
        source = functools.partial(ds.iter_batches, cfg.batch_size)
    else:
        raise ValueError(f"stream must be 'plain' or 'lesion', got {cfg.stream!r}")
    if cfg.oversample == 1:
        return (lambda epoch: source()), ds
    per_epoch = (real if cfg.stream == "plain" else real / (1 - synthetic_share(cfg, n_real, world))) \
        + (cfg.oversample - 1) * n_real["positives"] / world
    gap = oversample_gap(per_epoch, cfg.oversample, cfg.batch_size)
    # no inputs= (the epoch's length): with it the lower limb's oversample arm scored -0.031 [-0.069,
    # +0.007] over ten seeds (RESULTS, ninth session), so the recorded schedule stays
    return (lambda epoch: oversample_batches(source(), cfg.oversample, cfg.batch_size, gap=gap,
                                             select=is_real_positive, seed=[cfg.seed, epoch])), ds


def build_val_stream(cfg: RunConfig) -> torch.utils.data.DataLoader:
    """Every validation sample of the region with a known label, once, on every rank (ranks validate
    the same model, rank 0's, and compute the same AUC); read
    by at most one ``--workers`` worker per validation shard that holds any (more would fail)."""
    ds = XRayShards(_spec(cfg.val_shards), split=cfg.val_split, shuffle=False, resize=cfg.image_size,
                    select=KeySelect(cfg.region, labelled=True), equalize="none", distributed=False)
    return seeded_loader(ds, cfg, 64, workers=min(cfg.workers, sum(c > 0 for c in ds.counts or [1])))


_CLASSIC: dict[str, Any] = {}


def device_augment(x: torch.Tensor, mode: str, gen: torch.Generator) -> torch.Tensor:
    """Augment a ``(B, 1, H, W)`` batch on its device.

    ``none``: nothing; ``flip``: random horizontal flips; ``classic``: flips plus kornia's random
    affine (±10°, ±5 % shift, 0.9-1.1 scale) and brightness/contrast jitter (±10 %).
    """
    if mode == "none":
        return x
    flip = (torch.rand(len(x), generator=gen) < 0.5).to(x.device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if mode == "flip":
        return x
    if mode != "classic":
        raise ValueError(f"augment must be none, flip or classic, got {mode!r}")
    if "aug" not in _CLASSIC:
        import kornia.augmentation as K

        _CLASSIC["aug"] = torch.nn.Sequential(
            K.RandomAffine(degrees=10.0, translate=(0.05, 0.05), scale=(0.9, 1.1), p=0.8, padding_mode="border"),
            K.ColorJiggle(brightness=0.1, contrast=0.1, p=0.8))
    return _CLASSIC["aug"](x).clamp(0, 1)
