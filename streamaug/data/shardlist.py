"""Shard listing, per-shard sample counts, and the assignment of shards to readers.

A *reader* is one DataLoader worker of one rank (:class:`streamaug.data.distributed.Slot`). The
assignment is a pure function of the shard list, their sample counts, ``(seed, epoch)`` and the
number of ranks and workers, so every process computes the same plan without talking to the
others, and a resumed run recomputes it exactly.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from webdataset.tariterators import base_plus_ext

from streamaug.io.errors import ShardError
from streamaug.io.tar import READ_ERRORS, is_url, iter_tar_files, open_tar_stream

MANIFEST = "manifest.json"


def expand_urls(urls: str | os.PathLike | Sequence[str | os.PathLike], split: str | None = None) -> list[str]:
    """Turn a shard spec into a list of shard paths.

    Accepts a list of paths, a brace pattern (``data-{000..009}.tar``), a glob, a folder
    (its ``*.tar`` files, or the shards its ``manifest.json`` lists for ``split``) or a
    ``manifest.json`` path. ``http(s)://`` and ``pipe:CMD`` URLs (as in WebDataset) are
    brace-expanded but not globbed: ``"pipe:cat /data/x-{0..3}.tar"``.

    Raises:
        ShardError: when the spec matches no shard.
    """
    if isinstance(urls, (list, tuple)):
        out = [str(u) for u in urls]
    elif is_url(urls):
        import braceexpand

        out = list(braceexpand.braceexpand(str(urls)))
    else:
        spec = str(urls)
        path = Path(spec)
        if path.name == MANIFEST or (path.is_dir() and (path / MANIFEST).exists() and split is not None):
            manifest_path = path if path.name == MANIFEST else path / MANIFEST
            out = manifest_shards(manifest_path, split)
        elif path.is_dir():
            out = sorted(glob.glob(str(path / "*.tar")) + glob.glob(str(path / "*.tar.gz")))
        else:
            import braceexpand

            out = []
            for pattern in braceexpand.braceexpand(spec):
                hits = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
                out.extend(hits)
    if not out:
        raise ShardError(f"no shards found for {urls!r}: pass .tar paths, a folder of shards, a brace "
                         "pattern, or a manifest.json written by `python -m streamaug.cli.pack`")
    return out


def load_manifest(path: str | os.PathLike) -> dict:
    """Read a ``manifest.json`` written by ``python -m streamaug.cli.pack``."""
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ShardError(f"cannot read shard manifest {path}: {err}. Re-run `python -m streamaug.cli.pack`.") from err
    if "splits" not in manifest:
        raise ShardError(f"{path} is not a streamaug shard manifest (no 'splits'); re-run `python -m streamaug.cli.pack`")
    return manifest


def manifest_shards(path: str | os.PathLike, split: str | None) -> list[str]:
    """Shard paths of one split (all splits when ``split`` is None), absolute."""
    manifest = load_manifest(path)
    root = Path(path).parent
    splits = manifest["splits"]
    if split is not None and split not in splits:
        raise ShardError(f"split {split!r} not in {path}; it has {sorted(splits)}")
    names = [s for k, v in splits.items() if split in (None, k) for s in v["shards"]]
    return [str(root / s["name"]) for s in names]


def find_manifest(shard: str | os.PathLike) -> Path | None:
    """The ``manifest.json`` in the shard's folder or the folder above it (split folders); None
    for URLs (their samples are counted by reading the headers)."""
    if is_url(shard):
        return None
    here = Path(shard).resolve().parent
    for folder in (here, here.parent):
        if (folder / MANIFEST).exists():
            return folder / MANIFEST
    return None


def _manifest_counts(manifest_path: Path) -> dict[str, int]:
    manifest = load_manifest(manifest_path)
    root = manifest_path.parent.resolve()
    return {
        str((root / s["name"]).resolve()): int(s["count"])
        for split in manifest["splits"].values()
        for s in split["shards"]
    }


def count_tar_samples(shard: str | os.PathLike) -> int:
    """Count samples (distinct keys) of a tar shard by reading its headers only."""
    keys: set[str] = set()
    try:
        with open_tar_stream(shard) as fh:
            for name, _ in iter_tar_files(fh, headers_only=True):
                prefix, _ext = base_plus_ext(name)
                if prefix is not None:
                    keys.add(prefix)
    except READ_ERRORS as err:
        raise ShardError(f"cannot list shard {shard}: {err}. The file is truncated or not a tar; "
                         "re-pack it or pass on_error='skip'.") from err
    return len(keys)


def scan_metadata(shard: str | os.PathLike) -> list[tuple[str, dict]]:
    """``(key, json metadata)`` of every sample of a shard, without decoding images."""
    out = []
    try:
        with open_tar_stream(shard) as fh:
            for name, data in iter_tar_files(fh):
                prefix, ext = base_plus_ext(name)
                if prefix is not None and ext == "json":
                    out.append((prefix, json.loads(data)))
    except (*READ_ERRORS, json.JSONDecodeError) as err:
        raise ShardError(f"cannot scan shard {shard}: {err}. Re-pack it.") from err
    return out


def shard_counts(shards: Sequence[str]) -> list[int]:
    """Samples per shard: from the packer's ``manifest.json`` when it lists the shard, else by
    reading the tar headers (one pass over each shard, once per process)."""
    cache: dict[Path, dict[str, int]] = {}
    counts = []
    for shard in shards:
        manifest = find_manifest(shard)
        known: dict[str, int] = {}
        if manifest is not None:
            if manifest not in cache:
                cache[manifest] = _manifest_counts(manifest)
            known = cache[manifest]
        resolved = str(Path(shard).resolve())
        counts.append(known[resolved] if resolved in known else count_tar_samples(shard))
    return counts


@dataclass(frozen=True)
class ReaderPlan:
    """What one reader reads in one epoch.

    Attributes:
        shards: indices into the shard list, in reading order.
        natural: samples in those shards.
        quota: samples this reader yields (``natural`` plus its share of the rank's padding).
    """

    shards: tuple[int, ...]
    natural: int
    quota: int


def plan_epoch(counts: Sequence[int], *, world: int, num_workers: int, seed: int, epoch: int,
               shuffle: bool, equalize: str = "pad") -> list[list[ReaderPlan]]:
    """Assign shards to ``world x num_workers`` readers and fix every reader's quota.

    Shards are taken in a (seeded) shuffled order and each goes to the rank holding the fewest
    samples so far, then to that rank's worker holding the fewest; this keeps ranks within one
    shard's size of each other. With ``equalize="pad"`` every rank then yields the same number of
    samples, the largest rank total: the ranks that have fewer re-read the start of their own
    stream (like ``DistributedSampler`` padding) and the padded count is reported in the stream's
    stats. ``equalize="none"`` leaves rank totals unequal (fine without DDP).

    Returns:
        ``plans[rank][worker]``.

    Raises:
        ShardError: when there are fewer non-empty shards than readers (some reader would get
            nothing and ranks could not be equalized without silent loss or a hang).
    """
    if equalize not in ("pad", "none"):
        raise ValueError(f"equalize must be 'pad' or 'none', got {equalize!r}")
    readers = world * num_workers
    order = list(range(len(counts)))
    if shuffle:
        np.random.default_rng([seed, epoch, 0x5A4D]).shuffle(order)
    order = [i for i in order if counts[i] > 0]
    if len(order) < readers:
        raise ShardError(
            f"{len(order)} non-empty shards cannot feed {world} rank(s) x {num_workers} worker(s) = "
            f"{readers} readers without some reading nothing. Re-pack with a smaller --shard-size "
            f"(at most {max(1, sum(counts) // readers)} samples per shard), use fewer workers, "
            "or pass resampled=True for an unbounded stream.")
    rank_total = [0] * world
    assigned: list[list[list[int]]] = [[[] for _ in range(num_workers)] for _ in range(world)]
    worker_total = [[0] * num_workers for _ in range(world)]
    # First make sure every reader gets one shard, then balance the rest by sample count.
    for pos, i in enumerate(order):
        if pos < readers:
            r, w = divmod(pos, num_workers)
        else:
            r = min(range(world), key=lambda k: (rank_total[k], k))
            w = min(range(num_workers), key=lambda k: (worker_total[r][k], k))
        assigned[r][w].append(i)
        rank_total[r] += counts[i]
        worker_total[r][w] += counts[i]
    target = max(rank_total)
    plans = []
    for r in range(world):
        deficit = target - rank_total[r] if equalize == "pad" else 0
        extra = [deficit // num_workers + (1 if w < deficit % num_workers else 0) for w in range(num_workers)]
        plans.append([ReaderPlan(tuple(assigned[r][w]), worker_total[r][w], worker_total[r][w] + extra[w])
                      for w in range(num_workers)])
    return plans
