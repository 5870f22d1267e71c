"""The translator's training patches (Gupta et al. §3.2), built from shards with the stream's sites.

Lesion patches: square crops ``s`` times the larger side of each lesion box, placed at random
around it. Normal patches: crops at the boxes of ``n`` matched lesion images, dropped when their
mean intensity is below ``min_intensity``. The two sets are balanced (the larger is subsampled),
as in the paper's Table 1.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from streamaug.data.shardlist import find_manifest
from streamaug.sites import LesionBoxBank, SiteProposer
from streamaug.data.stream import XRayShards
from streamaug.synth.ops import crop_sites


@dataclass
class PatchSets:
    """Balanced patch sets: ``normal`` and ``lesion`` are ``(N, 1, P, P)`` float32 in ``[0, 1]``."""

    normal: torch.Tensor
    lesion: torch.Tensor
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


def build_patch_sets(shards: str | Sequence[str], *, patch_size: int, s: float = 1.0, n: int = 7,
                     region: str | None = None, split: str | None = None, min_intensity: float = 0.15,
                     resize: int | tuple[int, int] | None = None, seed: int = 0,
                     select: Callable[[str, dict], bool] | None = None, progress: bool = True) -> PatchSets:
    """Read the shards once and cut the balanced lesion / normal patch sets.

    Args:
        shards: shard spec for :class:`streamaug.XRayShards` (lesion and normal images together).
        patch_size: side ``P`` every patch is resized to.
        s: crop side as a multiple of the lesion box's larger side (1 or 2 in the paper).
        n: matched lesion images per normal image.
        region: keep only images of this ``region`` (e.g. ``lower_limb``); None keeps all.
        split: split of a packed folder / manifest.
        min_intensity: drop normal crops darker than this (0.15: no bone).
        resize: resize images before cropping (as the stream would).
        seed: seeds site placement and the balancing subsample.
        select: keep only images for which ``select(key, metadata_json)`` is true (e.g. the kept
            positives of a rare-positive run, :class:`streamaug.data.select.KeySelect`).

    Returns:
        :class:`PatchSets` with ``info`` = counts, images used and the data fingerprint.

    Raises:
        ValueError: when either set comes out empty (wrong region? no boxes?).
    """
    from tqdm.auto import tqdm

    stream = XRayShards(shards, split=split, shuffle=False, resize=resize, equalize="none", select=select)
    samples = [x for x in tqdm(stream, desc="reading images", disable=None if progress else True, unit="img")
               if region is None or _region_of(x) == region]
    lesions = [x for x in samples if x["label"] == 1 and len(x["boxes"])]
    normals = [x for x in samples if x["label"] == 0]
    bank = LesionBoxBank.from_records([
        {"key": x["key"], "region": x["meta"].get("region"), "view": x["meta"].get("view"),
         "height": x["image"].shape[-2], "width": x["image"].shape[-1], "boxes": x["boxes"].tolist()}
        for x in lesions])
    proposer = SiteProposer(bank, s=s, n=n, min_intensity=min_intensity, seed=seed)

    def cut(group: list[dict[str, Any]]) -> torch.Tensor:
        out = []
        for x in tqdm(group, desc="cutting patches", disable=None if progress else True, unit="img", leave=False):
            sites = proposer(x)["sites"]
            if len(sites):
                out.append(crop_sites(x["image"][None], sites, torch.zeros(len(sites), dtype=torch.long), patch_size))
        return torch.cat(out) if out else torch.zeros(0, 1, patch_size, patch_size)

    lesion, normal = cut(lesions), cut(normals)
    if len(lesion) == 0 or len(normal) == 0:
        raise ValueError(f"no training patches: {len(lesion)} lesion / {len(normal)} normal patches from "
                         f"{len(lesions)} lesion and {len(normals)} normal images (region={region!r}); check "
                         "the region name, the boxes in the metadata and min_intensity")
    g = torch.Generator().manual_seed(seed)
    k = min(len(lesion), len(normal))
    lesion = lesion[torch.randperm(len(lesion), generator=g)[:k]]
    normal = normal[torch.randperm(len(normal), generator=g)[:k]]
    info = {"lesion_images": len(lesions), "normal_images": len(normals), "patches_per_domain": k,
            "dropped_dark": proposer.stats["dropped_dark"], "region": region, "s": s, "n": n,
            "patch_size": patch_size, "data_sha256": data_fingerprint(stream.shards)}
    return PatchSets(normal.contiguous(), lesion.contiguous(), info)
