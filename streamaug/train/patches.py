"""The translator's training patches (Gupta et al. §3.2), built from shards with the stream's sites.

Lesion patches: ``crops_per_box`` square crops per lesion box, side ``s`` times the box's larger
side, each placed at random so that the box lies inside it (the paper cut 2-9 per image), or with
the box at the crop's centre (``centre``: the cosine blend fades what lies off centre). Normal
patches: crops at the boxes of ``n`` matched lesion images, dropped when their mean intensity is
below ``min_intensity``. ``s`` may differ per region (paper: 1 for tibia, 2 for humerus). All
patches are kept (the trainer balances each batch) unless ``balance_sets`` cuts the larger set to
the smaller one's size (the original recipe, as the paper's Table 1).

``holdout`` sets a fraction of the images apart, by patient group (``meta["group"]``, else the
key), for the quality score: their lesion patches are cut :data:`HELDOUT_CROPS_PER_BOX` per box at
random places (whatever ``crops_per_box`` and ``centre`` say, so scores compare across recipes;
several, so that a small hold-out still gives a score), their normal patches as above.
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from streamaug.data.shardlist import find_manifest
from streamaug.data.stream import XRayShards
from streamaug.sites import LesionBoxBank, SiteProposer, lesion_crops, parse_boxes, sample_seed
from streamaug.synth.ops import crop_sites

SValue = float | Mapping[str, float]
HELDOUT_CROPS_PER_BOX = 4


@dataclass
class PatchSets:
    """Patch sets, each ``(N, 1, P, P)`` float32 in ``[0, 1]``: ``normal`` and ``lesion`` to train on,
    ``heldout_normal`` and ``heldout_lesion`` (possibly empty) from the held-out images."""

    normal: torch.Tensor
    lesion: torch.Tensor
    heldout_normal: torch.Tensor
    heldout_lesion: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


def data_fingerprint(shards: Sequence[str]) -> str:
    """sha256 of the packer's manifest beside the shards (else of the shard names and sizes)."""
    manifest = find_manifest(shards[0])
    h = hashlib.sha256()
    if manifest is not None:
        h.update(manifest.read_bytes())
    else:
        import os

        for s in shards:
            h.update(f"{os.path.basename(s)}:{os.path.getsize(s)}".encode())
    return h.hexdigest()


def _region_of(sample: dict[str, Any]) -> str:
    return str(sample["meta"].get("region") or "")


def s_for_region(s: SValue, region: str | None) -> float:
    """The crop factor ``s`` of ``region``: ``s`` itself, or its entry in a mapping (key ``"*"``: any other region).

    Raises:
        ValueError: the mapping names neither the region nor ``"*"``.

    Examples:
        >>> s_for_region({"lower_limb": 1.0, "*": 2.0}, "pelvis"), s_for_region(1.5, "pelvis")
        (2.0, 1.5)
    """
    if not isinstance(s, Mapping):
        return float(s)
    if region in s:
        return float(s[region])  # type: ignore[index]
    if "*" in s:
        return float(s["*"])
    raise ValueError(f"no s for region {region!r}: s names {sorted(s)}; add {region}=S or a bare number for the rest")


def lesion_patch_sites(boxes: Any, height: int, width: int, *, s: float, k: int = 1, centre: bool = False,
                       min_size: int = 1, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """``k`` square crops per lesion box, each containing its box (:func:`streamaug.sites.lesion_crops` placement).

    Args:
        boxes: ``(m, 4)`` boxes ``x0 y0 x1 y1`` (anything :func:`streamaug.sites.parse_boxes` reads).
        height: image height.
        width: image width.
        s: crop side as a multiple of the box's larger side.
        k: crops per box, placed independently at random (with ``centre``: one, as they would agree).
        centre: put each box at its crop's centre (shifted only as far as the image edge needs).
        min_size: smallest crop side.
        rng: numpy generator or seed for the placement.

    Returns:
        ``(m' * k, 4)`` int64 crops, the ``k`` crops of a box together; boxes empty after clipping
        to the image give none.

    Examples:
        >>> crops = lesion_patch_sites([[10, 10, 30, 20]], 64, 64, s=2.0, k=3, rng=0)
        >>> crops.shape, bool(((crops[:, :2] <= [10, 10]) & (crops[:, 2:] >= [30, 20])).all())
        ((3, 4), True)
        >>> lesion_patch_sites([[10, 10, 30, 20]], 64, 64, s=2.0, k=3, centre=True).tolist()
        [[0, 0, 40, 40]]
    """
    b = parse_boxes(boxes)
    lo = np.clip(np.floor(b[:, :2]), 0, [width, height])  # as lesion_crops widens and clips them
    hi = np.clip(np.ceil(b[:, 2:]), 0, [width, height])
    b = np.concatenate([lo, hi], 1)[np.isfinite(b).all(1) & (hi > lo).all(1)]
    crops = lesion_crops(np.repeat(b, 1 if centre else k, axis=0), height, width, s, rng, min_size=min_size)
    if centre and len(crops):
        side = crops[:, 2:3] - crops[:, 0:1]
        start = np.round((b[:, :2] + b[:, 2:]) / 2 - side / 2).astype(np.int64)
        start = np.clip(start, 0, np.array([width, height]) - side)
        crops = np.concatenate([start, start + side], 1)
    return crops


def _heldout_groups(samples: list[dict[str, Any]], fraction: float, seed: int) -> set[str]:
    """Patient groups set apart: ``ceil(fraction x groups)`` of the groups with lesion images and as
    many of those with only normal images (but never all of them), the ones of lowest hash of
    ``(seed, group)``."""
    if fraction <= 0:
        return set()
    group = {x["key"]: str(x["meta"].get("group") or x["key"]) for x in samples}
    lesion_groups = {group[x["key"]] for x in samples if x["label"] == 1}
    normal_groups = {group[x["key"]] for x in samples} - lesion_groups
    out: set[str] = set()
    for groups in (lesion_groups, normal_groups):
        ranked = sorted(groups, key=lambda gr: sample_seed(seed, 0, "holdout:" + gr))
        out.update(ranked[:min(math.ceil(fraction * len(ranked)), len(ranked) - 1)])
    return out


def build_patch_sets(shards: str | Sequence[str], *, patch_size: int, s: SValue = 1.0, n: int = 7,
                     region: str | None = None, split: str | None = None, min_intensity: float = 0.15,
                     resize: int | tuple[int, int] | None = None, seed: int = 0,
                     select: Callable[[str, dict], bool] | None = None, crops_per_box: int = 1,
                     centre: bool = False, balance_sets: bool = False, holdout: float = 0.0,
                     progress: bool = True) -> PatchSets:
    """Read the shards once and cut the lesion / normal patch sets (and the held-out ones).

    Args:
        shards: shard spec for :class:`streamaug.XRayShards` (lesion and normal images together).
        patch_size: side ``P`` every patch is resized to.
        s: crop side as a multiple of the lesion box's larger side (1 or 2 in the paper), or a
            mapping region -> s (key ``"*"``: the other regions; see :func:`s_for_region`).
        n: matched lesion images per normal image.
        region: keep only images of this ``region`` (e.g. ``lower_limb``); None keeps all.
        split: split of a packed folder / manifest.
        min_intensity: drop normal crops darker than this (0.15: no bone).
        resize: resize images before cropping (as the stream would).
        seed: seeds site placement, the held-out groups and the balancing subsample.
        select: keep only images for which ``select(key, metadata_json)`` is true (e.g. the kept
            positives of a rare-positive run, :class:`streamaug.data.select.KeySelect`).
        crops_per_box: random crops per lesion box (training images).
        centre: crop lesion boxes at the crop's centre (one crop per box).
        balance_sets: cut the larger training set to the smaller's size (the original recipe).
        holdout: fraction of patient groups set apart (see the module docstring); 0: none.

    Returns:
        :class:`PatchSets` with ``info`` = image and patch counts, the ``s`` used per region, the
        data fingerprint.

    Raises:
        ValueError: when either training set comes out empty (wrong region? no boxes?), or an ``s``
            mapping lacks the region of some image.
    """
    from tqdm.auto import tqdm

    stream = XRayShards(shards, split=split, shuffle=False, resize=resize, equalize="none", select=select)
    samples = [x for x in tqdm(stream, desc="reading images", disable=None if progress else True, unit="img")
               if region is None or _region_of(x) == region]
    samples = [x for x in samples if x["label"] == 0 or (x["label"] == 1 and len(x["boxes"]))]
    bank = LesionBoxBank.from_records([
        {"key": x["key"], "region": x["meta"].get("region"), "view": x["meta"].get("view"),
         "height": x["image"].shape[-2], "width": x["image"].shape[-1], "boxes": x["boxes"].tolist()}
        for x in samples if x["label"] == 1])
    s_used = {r: s_for_region(s, r) for r in sorted({_region_of(x) for x in samples})}
    proposers = {v: SiteProposer(bank, s=v, n=n, min_intensity=min_intensity, seed=seed)
                 for v in sorted(set(s_used.values()))}
    held = _heldout_groups(samples, holdout, seed)
    is_held = {x["key"]: str(x["meta"].get("group") or x["key"]) in held for x in samples}
    per_region: Counter[str] = Counter()

    def cut(group: list[dict[str, Any]], k: int, at_centre: bool) -> torch.Tensor:
        out = []
        for x in tqdm(group, desc="cutting patches", disable=None if progress else True, unit="img", leave=False):
            sv = s_used[_region_of(x)]
            if x["label"] == 1:
                h, w = x["image"].shape[-2:]
                sites = torch.from_numpy(lesion_patch_sites(
                    x["boxes"], h, w, s=sv, k=k, centre=at_centre, min_size=proposers[sv].min_size,
                    rng=np.random.default_rng(sample_seed(seed, 0, x["key"]))))
                per_region[_region_of(x)] += len(sites) * (not is_held[x["key"]])
            else:
                sites = proposers[sv](x)["sites"]
            if len(sites):
                out.append(crop_sites(x["image"][None], sites, torch.zeros(len(sites), dtype=torch.long), patch_size))
        return torch.cat(out) if out else torch.zeros(0, 1, patch_size, patch_size)

    def pick(label: int, heldout: bool) -> list[dict[str, Any]]:
        return [x for x in samples if x["label"] == label and is_held[x["key"]] == heldout]

    lesion, normal = cut(pick(1, False), crops_per_box, centre), cut(pick(0, False), 1, False)
    dropped_dark = sum(p.stats["dropped_dark"] for p in proposers.values())
    heldout_lesion, heldout_normal = cut(pick(1, True), HELDOUT_CROPS_PER_BOX, False), cut(pick(0, True), 1, False)
    if len(lesion) == 0 or len(normal) == 0:
        raise ValueError(f"no training patches: {len(lesion)} lesion / {len(normal)} normal patches from "
                         f"{len(pick(1, False))} lesion and {len(pick(0, False))} normal images (region={region!r}); "
                         "check --region, --positives (keys of lesion images with boxes; default: every one), the "
                         "boxes in the metadata, and --min-intensity (normal patches darker than it are dropped)")
    if balance_sets:
        g = torch.Generator().manual_seed(seed)
        k = min(len(lesion), len(normal))
        lesion = lesion[torch.randperm(len(lesion), generator=g)[:k]]
        normal = normal[torch.randperm(len(normal), generator=g)[:k]]
    info = {"lesion_images": len(pick(1, False)), "normal_images": len(pick(0, False)),
            "lesion_patches": len(lesion), "normal_patches": len(normal), "dropped_dark": dropped_dark,
            "heldout_lesion_images": len(pick(1, True)), "heldout_normal_images": len(pick(0, True)),
            "heldout_lesion_patches": len(heldout_lesion), "heldout_normal_patches": len(heldout_normal),
            "region": region, "s": s_used, "lesion_patches_by_region": dict(per_region), "n": n,
            "crops_per_box": crops_per_box, "centre": centre, "balance_sets": balance_sets, "holdout": holdout,
            "patch_size": patch_size, "data_sha256": data_fingerprint(stream.shards)}
    return PatchSets(normal.contiguous(), lesion.contiguous(), heldout_normal.contiguous(),
                     heldout_lesion.contiguous(), info)
