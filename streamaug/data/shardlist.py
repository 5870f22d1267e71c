"""Shard listing, the packer's manifest (counts, hashes, the lesion-box bank ``sites=True`` builds),
per-shard sample counts and reading a shard against them (the assignment of shards to readers is
:mod:`streamaug.data.plan`)."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import tarfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from streamaug.data.shard_faults import damage_text, listing_fault, mark_copies, read_fault
from streamaug.io.errors import ShardError
from streamaug.io.opener import is_url, open_tar_stream
from streamaug.io.tar import READ_ERRORS, group_samples, iter_tar_files, shard_sha256, tar_samples

MANIFEST = "manifest.json"


def expand_urls(urls: str | os.PathLike | Sequence[str | os.PathLike], split: str | None = None) -> list[str]:
    """Turn a shard spec into a list of shard paths.

    Accepts a list of paths, a brace pattern (``data-{000..009}.tar``), a glob, a folder
    (its shards, :func:`folder_shards`, or those its ``manifest.json`` lists for ``split``) or a
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
            out = folder_shards(path)
        else:
            import braceexpand

            out = []
            for pattern in braceexpand.braceexpand(spec):
                hits = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
                out.extend(hits)
    if not out:
        if isinstance(urls, (str, os.PathLike)) and (Path(urls) / MANIFEST).exists():
            splits = sorted(load_manifest(Path(urls) / MANIFEST)["splits"])
            if not splits:
                raise ShardError(f"{urls} is a packed folder with no samples (its manifest lists no split); "
                                 "check the CSV given to `streamaug-pack`")
            raise ShardError(f"{urls} is a packed folder whose shards lie in its splits {splits}: pass "
                             f"split= (one of {splits}), or its manifest.json to read every split")
        raise ShardError(f"no shards found for {urls!r}: pass .tar paths, a folder of shards, a brace "
                         "pattern, or a manifest.json written by `python -m streamaug.cli.pack`")
    seen = [str(Path(u).resolve()) if not is_url(u) else u for u in out]
    times = Counter(seen)
    twice = sorted({u for u, k in zip(out, seen) if times[k] > 1})
    if twice:
        raise ShardError(f"shards listed more than once for {urls!r}: {twice}. Each would be read that many "
                         "times per epoch; list each shard once (resampled=True draws shards with replacement)")
    return out


#: Shard names a folder is listed by (any case): plain tars and those the opener decompresses
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")


def folder_shards(folder: Path) -> list[str]:
    """The shards of a folder, sorted: files named with a :data:`SHARD_SUFFIXES` suffix in any case
    (``.TAR``, ``.tgz``), hidden ones (``.name``, e.g. macOS's ``._name``) left out. A tar the reader
    cannot open (``.tar.zst``, ``.tar.lz4``) is named in a warning."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    odd = [n for n in names if ".tar." in n.lower() and not n.lower().endswith(SHARD_SUFFIXES)]
    if odd:
        warnings.warn(f"{folder}: not reading {odd[:5]}{' ...' if len(odd) > 5 else ''}: the reader opens plain, "
                      "gzip, bzip2 and xz tars only; decompress them (or re-pack)", stacklevel=3)
    return [str(folder / n) for n in names if n.lower().endswith(SHARD_SUFFIXES)]


def load_manifest(path: str | os.PathLike) -> dict:
    """Read a ``manifest.json`` written by ``python -m streamaug.cli.pack``."""
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ShardError(f"cannot read shard manifest {path}: {err}. Re-run `python -m streamaug.cli.pack`.") from err
    if "splits" not in manifest:
        raise ShardError(f"{path} is not a streamaug shard manifest (no 'splits'); re-run `streamaug-pack`")
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


def manifest_site_proposer(shards: Sequence[str], *, select: Callable[[str, dict], bool] | None = None,
                           seed: int = 0) -> Any:
    """The :class:`streamaug.SiteProposer` that ``sites=True`` builds: matched against the train-split
    lesion boxes of the packer's manifest beside ``shards[0]`` (or all of them when they share one
    other split, as in a pack without a split column), keeping only those ``select`` keeps (so a
    rare-positive selection does not leak the boxes of the positives it drops).

    Raises:
        ShardError: there is no manifest beside the shards, or its boxes lie in several splits, none train.
    """
    from streamaug.sites import LesionBoxBank, SiteProposer

    manifest = find_manifest(shards[0])
    if manifest is None:
        raise ShardError(f"sites=True needs the packer's manifest.json beside {shards[0]}; "
                         "pass sites=SiteProposer(LesionBoxBank.from_records(...)) instead")
    splits = sorted({str(e.get("split")) for e in load_manifest(manifest).get("lesion_boxes") or []})
    if "train" not in splits and len(splits) > 1:
        raise ShardError(f"sites=True matches normals against the train split's lesion boxes, but those of {manifest} "
                         f"are in splits {splits}: pass sites=SiteProposer(LesionBoxBank.from_manifest(manifest, "
                         "split=...)) with the split whose boxes may be used")
    split = splits[0] if len(splits) == 1 else "train"  # a pack without a split column has one: "all"
    return SiteProposer(LesionBoxBank.from_manifest(manifest, split=split, select=select), seed=seed)


def _file_key(path: str | os.PathLike) -> tuple[str, int, int] | None:
    """``(resolved path, size, mtime)``: a cache key that changes when the file does (None: no file)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return str(Path(path).resolve()), st.st_size, st.st_mtime_ns


@lru_cache(maxsize=64)
def _manifest_entries(key: tuple[str, int, int]) -> dict[str, dict]:
    """``{resolved shard path: {"count", "sha256"}}`` of a manifest (cached while the file is unchanged); an
    entry with the sha256 of an earlier one also has ``copy``, why it is refused (:func:`mark_copies`)."""
    manifest = load_manifest(key[0])
    root = Path(key[0]).parent
    try:
        entries = {str((root / s["name"]).resolve()): {"count": int(s["count"]), "sha256": s.get("sha256")}
                   for split in manifest["splits"].values() for s in split["shards"]}
    except (KeyError, TypeError, ValueError) as err:
        raise ShardError(f"shard manifest {key[0]} has a shard entry without a valid 'name' and 'count' "
                         f"({type(err).__name__}: {err}); re-run `streamaug-pack` to write it again") from err
    return mark_copies(key[0], entries)


@dataclass(frozen=True)
class ShardScan:
    """What reading a shard's headers (or its JSON) found.

    Attributes:
        count: complete samples before any damage (all of them when the shard is intact).
        entries: ``(key, metadata)`` of those samples when the JSON was read (``{}`` for a sample
            without JSON, None for JSON that does not parse); empty for a header-only count.
        damage: what is wrong with the shard (the reader's error), or None.
    """

    count: int
    entries: tuple[tuple[str, dict | None], ...] = ()
    damage: str | None = None


def _scan(shard: str | os.PathLike, metadata: bool) -> ShardScan:
    count, entries = 0, []
    try:
        with open_tar_stream(shard) as fh:
            for sample in group_samples(iter_tar_files(fh, headers_only=not metadata)):
                count += 1
                if metadata:
                    try:
                        meta = json.loads(sample["json"]) if "json" in sample else {}
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        meta = None
                    entries.append((sample["__key__"], meta if isinstance(meta, dict) or meta is None else None))
    except READ_ERRORS as err:
        return ShardScan(count, tuple(entries), damage_text(shard, err))
    return ShardScan(count, tuple(entries))


@lru_cache(maxsize=4096)
def _scan_cached(key: tuple[str, int, int], metadata: bool) -> ShardScan:
    return _scan(key[0], metadata)


def scan_shard(shard: str | os.PathLike, *, metadata: bool = True) -> ShardScan:
    """Scan a shard once per process: its JSON (``metadata``) or only its headers.

    Results are cached while the file's size and mtime stay the same, so the counts, a
    ``select`` built from the metadata and the stream's plan all share one scan.
    """
    key = _file_key(shard)
    return _scan(shard, metadata) if key is None else _scan_cached(key, metadata)


def count_tar_samples(shard: str | os.PathLike) -> int:
    """Count samples (distinct keys) of a tar shard by reading its headers only.

    Raises:
        ShardError: the shard is damaged (its header scan stopped early).
    """
    scan = scan_shard(shard, metadata=False)
    if scan.damage is not None:
        raise ShardError(listing_fault(shard, scan.damage))
    return scan.count


def scan_metadata(shard: str | os.PathLike) -> list[tuple[str, dict]]:
    """``(key, json metadata)`` of every sample of a shard that has JSON, without decoding images.

    Raises:
        ShardError: the shard is damaged or a sample's JSON does not parse.
    """
    scan = scan_shard(shard)
    bad = next((k for k, m in scan.entries if m is None), None)
    if scan.damage is not None or bad is not None:
        why = scan.damage or f"the JSON of sample {bad!r} does not parse"
        raise ShardError(f"cannot scan shard {shard}: {why}. Re-pack it.")
    return [(k, m) for k, m in scan.entries if m]


@dataclass(frozen=True)
class ShardInfo:
    """What is known of one shard before reading it.

    Attributes:
        count: its samples: the packer's manifest count, else the complete samples of a scan
            (None: not counted, e.g. a resampled stream without a manifest).
        selected: samples the stream will take from it (``count``, or those ``select`` keeps).
        sha256: the manifest's sha256 of the shard file, or None.
        damage: what the scan found wrong (only with ``on_error`` "skip"/"warn"), else None.
        readable: complete samples the scan found before the damage (None: not scanned).
    """

    count: int | None
    selected: int | None
    sha256: str | None = None
    damage: str | None = None
    readable: int | None = None


def shard_infos(shards: Sequence[str], *, on_error: str = "raise", select: Callable[[str, dict], bool] | None = None,
                count: bool = True) -> list[ShardInfo]:
    """Counts, ``select`` counts and manifest hashes of shards, scanning each shard at most once.

    A shard's count comes from the packer's ``manifest.json`` when it lists the shard, else from
    a scan of its headers (its JSON when ``select`` is given; ``count=False``: no scan).

    Raises:
        ShardError: a damaged shard when ``on_error="raise"`` (with "skip" or "warn" the complete
            samples before the damage are counted and the damage is kept in ``ShardInfo.damage``), or
            one whose manifest sha256 is another listed shard's (a copy: with "skip", none of it is read).
    """
    out = []
    for shard in shards:
        manifest = find_manifest(shard)
        key = None if manifest is None else _file_key(manifest)
        entry = _manifest_entries(key).get(str(Path(shard).resolve())) if key else None
        listed = entry["count"] if entry else None
        sha = entry["sha256"] if entry else None
        if entry and "copy" in entry:  # refused before any scan: the same bytes as another listed shard
            if on_error == "raise":
                raise ShardError(f"shard {shard}: {entry['copy']}; or pass on_error='skip' to skip it as a bad shard")
            out.append(ShardInfo(listed, 0, sha, f"ShardCopy: {entry['copy']}", 0))
            continue
        if select is not None:
            scan = scan_shard(shard)
            selected = sum(m is not None and bool(select(k, m)) for k, m in scan.entries)
            info = ShardInfo(scan.count if listed is None else listed, selected, sha, scan.damage, scan.count)
        elif listed is not None or not count:
            info = ShardInfo(listed, listed, sha)
        else:
            scan = scan_shard(shard, metadata=False)
            info = ShardInfo(scan.count, scan.count, sha, scan.damage, scan.count)
        if info.damage is not None and on_error == "raise":
            raise ShardError(listing_fault(shard, info.damage))
        out.append(info)
    return out


def shard_counts(shards: Sequence[str]) -> list[int]:
    """Samples per shard: from the packer's ``manifest.json`` when it lists the shard, else by
    reading the tar headers (one pass over each shard, once per process)."""
    return [int(i.count or 0) for i in shard_infos(shards)]


class ShardCheckError(tarfile.ReadError):
    """A shard that reads as a tar but differs from its manifest: another sha256 or sample count."""


def _verified(shard: str, sha256: str, how: bool | str) -> Iterable[dict[str, Any]]:
    """The shard's raw samples once its bytes match ``sha256``: hashed first (``True``, a second
    read of the file) or read once into memory while hashing (``"buffer"``)."""
    stamp = _file_stamp(shard, sha256)
    if stamp is not None and stamp in _VERIFIED:  # unchanged since this process checked it: no re-hash
        return tar_samples(shard)
    if how == "buffer":
        h = hashlib.sha256()
        samples = list(tar_samples(shard, h))
        digest = h.hexdigest()
    else:
        digest, samples = shard_sha256(shard), None
    if digest != sha256:
        raise ShardCheckError(f"its sha256 {digest[:16]}... differs from the manifest's {sha256[:16]}...: the "
                              "file changed after packing")
    if stamp is not None:
        _VERIFIED.add(stamp)
    return samples if samples is not None else tar_samples(shard)


#: (path, inode, size, mtime_ns, sha256) of local shards whose bytes this process has checked; a
#: resampled stream draws a shard many times and need not hash it again while the file is unchanged
_VERIFIED: set[tuple] = set()


def _file_stamp(shard: str, sha256: str) -> tuple | None:
    """What identifies an unchanged local file (None for URLs and unreadable paths: always hashed)."""
    if is_url(shard):
        return None
    try:
        st = os.stat(shard)
    except OSError:
        return None
    return (os.path.abspath(shard), st.st_ino, st.st_size, st.st_mtime_ns, sha256)


def read_tar(shard: str, on_error: str, counters: Any, *, expected: int | None = None,
             sha256: str | None = None, verify: bool | str = False, report: bool = True) -> Iterator[dict[str, Any]]:
    """Raw samples ``{"__key__", "__url__", ext: bytes, ...}`` of one tar shard, in file order.

    A shard is bad when it is truncated or corrupt, its members are out of WebDataset order,
    it holds another number of samples than ``expected`` (the manifest's or a scan's count), or
    (``verify`` and a ``sha256``) its bytes differ from the manifest's: then no sample of it
    is yielded, the hash being checked before the first one. A bad shard raises
    :class:`ShardError` (``on_error="raise"``) or ends there, its partial last sample dropped,
    counting it in ``bad_shards`` and the samples it was to hold in ``lost_samples``
    (``report=False``: not counted, a padding pass re-reading a shard already counted) through
    ``counters.add(name, value)``.
    """
    n, key = 0, None
    try:
        source = _verified(shard, sha256, verify) if verify and sha256 else tar_samples(shard)
        for raw in source:
            n, key = n + 1, raw["__key__"]
            if expected is not None and n > expected and on_error == "raise":
                raise ShardCheckError(f"it holds more samples than the {expected} listed for it")
            yield raw
        if expected is not None and n != expected:
            raise ShardCheckError(f"it holds {n} complete samples, not the {expected} listed for it")
    except READ_ERRORS as err:
        at = f" after key {key!r}" if key is not None else ""
        if on_error == "raise":
            if isinstance(err, FileNotFoundError) and n == 0:
                raise ShardError(f"shard {shard} does not exist: {err}. Restore the file or re-pack, or pass "
                                 "on_error='skip' to count its listed samples as lost.") from err
            raise ShardError(read_fault(shard, err, at)) from err
        if report:
            counters.add("bad_shards")
            lost = max(0, expected - n) if expected is not None else 0
            counters.add("lost_samples", lost)
            if on_error == "warn":
                of = f" of the {expected} listed for it" if expected is not None else ""
                warnings.warn(f"skipping the rest of shard {shard}{at} ({lost} samples{of} lost): {err}", stacklevel=2)
