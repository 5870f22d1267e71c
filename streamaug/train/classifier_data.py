"""Data for the classifier trainer: the run config, sample selection, train/val streams, augmentation."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal

import numpy as np
import torch

from streamaug.data.collate import collate_xray, unbatch
from streamaug.io.labels import to_int_label
from streamaug.data.shardlist import expand_urls, find_manifest, load_manifest, scan_metadata
from streamaug.data.select import KeySelect, rare_positive_select
from streamaug.data.stream import XRayShards
from streamaug.models.drn import DRN_PRESETS


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
        stream: plain: the real images only; lesion: on-the-fly lesion synthesis (needs --translator).
        translator: translator.pt for --stream lesion.
        filter_classifier: baseline classifier (its best.pt) for the pseudo-label filter; default: no filter.
        filter_threshold: pseudo-label threshold: keep synthetic positives the filter scores at least this.
        synthetic_fraction: share of each epoch's samples that are synthetic (--stream lesion).
        positive_ratio: keep real training positives at this many per normal (e.g. 0.1); default: all.
        oversample: repeat every real positive this many times per epoch (--stream plain).
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
    filter_classifier: str | None = None
    filter_threshold: float = 0.9
    synthetic_fraction: float = 0.25
    positive_ratio: float | None = None
    oversample: int = 1
    augment: Literal["none", "flip", "classic"] = "flip"
    preset: str = field(default="tiny", metadata={"choices": sorted(DRN_PRESETS)})
    image_size: int = 128
    epochs: int = 12
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-4
    patience: int = 1
    workers: int = 0
    seed: int = 0
    device: str = "cpu"
    blend_n: float = 2.0
    s: float = 1.0
    n: int = 7

    RESUMABLE = ("epochs", "device", "workers", "out")


def _spec(shards: list[str]) -> str | list[str]:
    return shards[0] if len(shards) == 1 else list(shards)


def count_selected(cfg: RunConfig) -> dict[str, int]:
    """Counts of the selected real training samples (``positives``, ``normals``)."""
    _, counts = rare_positive_select(_spec(cfg.train_shards), cfg.train_split, cfg.region, cfg.positive_ratio, cfg.seed)
    return counts


def _oversampled(loader: Any, times: int, batch_size: int, seed: int) -> Iterator[dict[str, Any]]:
    """Re-batch ``loader`` with every positive repeated ``times`` times, through a shuffle buffer."""
    rng = np.random.default_rng(seed)
    buf: list[dict[str, Any]] = []
    for batch in loader:
        for sample in unbatch(batch):
            buf.extend([sample] * (times if sample["label"] == 1 else 1))
        while len(buf) >= 4 * batch_size:
            rng.shuffle(buf)
            yield collate_xray(buf[:batch_size])
            buf = buf[batch_size:]
    rng.shuffle(buf)
    for i in range(0, len(buf), batch_size):
        yield collate_xray(buf[i:i + batch_size])


def build_train_stream(cfg: RunConfig, *, n_real: dict[str, int], world: int,
                       device: torch.device) -> tuple[Callable[[], Iterator[dict[str, Any]]], Any]:
    """``(batches, stream)``: ``batches()`` yields one epoch of collated training batches."""
    select, _ = rare_positive_select(_spec(cfg.train_shards), cfg.train_split, cfg.region, cfg.positive_ratio, cfg.seed)
    if cfg.stream == "plain":
        ds = XRayShards(_spec(cfg.train_shards), split=cfg.train_split, seed=cfg.seed, resize=cfg.image_size,
                        select=select)
        loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, num_workers=cfg.workers,
                                             collate_fn=collate_xray)
        if cfg.oversample > 1:
            return (lambda: _oversampled(loader, cfg.oversample, cfg.batch_size, cfg.seed + ds.epoch)), ds
        return (lambda: iter(loader)), ds
    if cfg.stream != "lesion":
        raise ValueError(f"stream must be 'plain' or 'lesion', got {cfg.stream!r}")
    if not cfg.translator:
        raise ValueError("--stream lesion needs --translator PATH (train one with `python -m streamaug.train translator`)")
    from streamaug.filters.pseudo_label import PseudoLabel
    from streamaug.sites import LesionBoxBank, SiteProposer
    from streamaug.synth.lesion_stream import LesionStream

    manifest = find_manifest(expand_urls(_spec(cfg.train_shards), cfg.train_split)[0])
    if manifest is None:
        raise ValueError("--stream lesion needs shards written by `python -m streamaug.cli.pack` (manifest.json)")
    records = [r for r in load_manifest(manifest)["lesion_boxes"] if r.get("split") in (cfg.train_split, None)
               and select(r["key"], {"region": r.get("region"), "label": r.get("label", "tumor")})]
    sites = SiteProposer(LesionBoxBank.from_records(records), s=cfg.s, n=cfg.n, seed=cfg.seed)
    filt = PseudoLabel(cfg.filter_classifier, cfg.filter_threshold, device=device) if cfg.filter_classifier else None
    total = n_real["positives"] + n_real["normals"]
    stream = LesionStream(_spec(cfg.train_shards), translator=cfg.translator, filter=filt,
                          synthetic_fraction=cfg.synthetic_fraction, blend_n=cfg.blend_n, device=device,
                          seed=cfg.seed, sites=sites, split=cfg.train_split, resize=cfg.image_size,
                          num_workers=cfg.workers, select=select,
                          epoch_length=math.ceil(total / world / (1 - cfg.synthetic_fraction)))
    return (lambda: stream.iter_batches(cfg.batch_size)), stream


def build_val_stream(cfg: RunConfig) -> torch.utils.data.DataLoader:
    """Every validation sample of the region, once, on every rank (ranks compute the same AUC)."""
    ds = XRayShards(_spec(cfg.val_shards), split=cfg.val_split, shuffle=False, resize=cfg.image_size,
                    select=KeySelect(cfg.region), equalize="none", distributed=False)
    return torch.utils.data.DataLoader(ds, batch_size=64, num_workers=cfg.workers, collate_fn=collate_xray)


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
