"""Pack a folder of X-rays plus a metadata CSV into WebDataset shards and a ``manifest.json``.

``python -m streamaug.cli.pack --root DIR --metadata CSV --out DIR [--shard-size N]
[--on-error skip|raise] [--prefix NAME] [--boxes-column COL] [--key-column COL] [--label-column COL]``

Layout and manifest follow ``docs/ARCHITECTURE.md``. Rules this packer adds:

* **CSV.** UTF-8 (a BOM is dropped), read strictly: an unclosed quote, another encoding or a NUL
  byte stops the pack naming the line. ``image`` (path relative to ``--root``) is required;
  ``mask``, ``label``, ``split`` and the boxes column (``--boxes-column``, default ``boxes_xyxy``
  when present; ``x0 y0 x1 y1;...``, end-exclusive pixels, plain numbers) are optional; every
  column is kept, as the string the CSV gives. A header that spells one of these (or
  ``boxes_xyxy``) in another case or with spaces (``Label``, `` label``) stops the pack.
* **Key.** ``--key-column``, else ``image_id`` when present, else the image file stem. Keys may not
  contain ``.`` or ``/`` (WebDataset splits member names at the first dot).
* **Sample.** ``<key>.<ext>`` holds the image bytes exactly as stored (``ext`` is the lower-cased
  file suffix, sniffed from the bytes when there is none; one the stream reads,
  ``streamaug.data.decode.IMAGE_EXTS``), ``<key>.mask.png`` the mask as a 0/255 8-bit PNG (the
  bytes as given when already one; else binarized by :mod:`streamaug.cli.pack_mask`'s rule; an
  empty ``mask`` cell means no mask), and ``<key>.json`` every column
  plus ``boxes`` (a list of ``[x0, y0, x1, y1]`` read by :func:`streamaug.sites.boxes.parse_boxes`;
  whole numbers are written as ints, so ``5.0`` becomes ``5``; ``[]`` for none). With
  ``--label-column COL`` and no ``label`` column, ``label`` is a copy of ``COL``.
* **Several rows, one image** (e.g. one row per box): they become one sample. Boxes are
  concatenated in row order (a row identical to an earlier one is dropped and a repeated box stored
  once, with a warning); a column equal in every row is stored once; a column that differs is
  stored with the first row's value at the top level *and* per row in ``rows``:
  ``[{"line": csv line, <differing columns>, "boxes": that row's boxes}, ...]``. Rows of one key
  must agree on ``image``, ``mask``, ``label`` and ``split`` (a ``--label-column`` that differs is a
  warning: the first row's value is the label).
* **Splits.** One set of shards per value of ``split``
  (``OUT/<split>/<prefix>-<split>-000000.tar``); an empty cell is split ``unassigned``. Without a
  ``split`` column: ``OUT/<prefix>-000000.tar`` and the manifest names the split ``all``.
* **Paths.** ``image`` and ``mask`` must stay inside ``--root``: absolute paths, ``..`` and links
  that resolve outside it are bad rows; nothing outside ``--root`` is read.
* **Bad rows** (fewer cells than the header, an empty ``image`` cell, a path outside ``--root``,
  missing or undecodable image/mask, an image type the stream cannot read, any other error while
  decoding, mask size differing from the image, a box that is unreadable, non-finite, degenerate or
  outside the image, an invalid key, conflicting duplicate rows) are reported as
  ``CSV line N (key, file): reason``. ``--on-error raise`` (default) stops at the first one;
  ``skip`` leaves the row out (an image whose rows are all bad is left out) and records it in
  ``manifest["skipped"]``. A CSV without rows packs nothing and stops.
* **Warnings** (packed, but worth a look: a dropped duplicate row, a repeated box, a mask without
  foreground beside boxes, a mask that is not blank but packs empty, a ``--label-column`` that differs
  between the rows of one image) are recorded by CSV line in ``manifest["warnings"]`` and printed.
* **Manifest** counts labels and regions per split as given (``unknown`` for empty); the
  ``lesion_boxes`` bank has one entry per sample with boxes (plus its ``shard``). Shards are
  written with a fixed mtime, so packing the same input twice gives the same ``sha256``.
* **Output.** Everything is written into a hidden folder beside ``--out``
  (``.<name>.packing-<random>``) that replaces ``--out`` only once the manifest is written: a
  failed or interrupted pack leaves ``--out`` as it was (absent, empty, or the previous pack).
  ``--out`` must be absent or empty unless ``--overwrite``, which replaces a folder holding only
  a pack at its top level (``manifest.json`` and the shards it lists; anything else, another pack in
  a subfolder too, is refused, never deleted: :mod:`streamaug.cli.pack_out`).
  ``--prefix`` must be a plain file name.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import random
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streamaug._commands import USER_ERRORS, fail
from streamaug.cli.pack_csv import PackError, SampleBuilder, check_columns, read_csv
from streamaug.cli.pack_out import check_out as _check_out
from streamaug.cli.pack_out import replace_out as _replace
from streamaug.cli.pack_out import sibling as _sibling
from streamaug.io.labels import to_int_label

__all__ = ["pack", "main", "summary", "PackError", "MANIFEST_FORMAT"]

MANIFEST_FORMAT = "streamaug-shards/1"
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_MTIME = 946684800  # 2000-01-01: fixed so shards are byte-reproducible; an int, so no pax header per file


def pack(
    root: str | os.PathLike,
    metadata: str | os.PathLike,
    out: str | os.PathLike,
    *,
    shard_size: int = 1000,
    on_error: str = "raise",
    prefix: str | None = None,
    boxes_column: str | None = None,
    key_column: str | None = None,
    label_column: str | None = None,
    shuffle_seed: int | None = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Pack ``root`` + ``metadata`` into shards under ``out`` (rules in the module docstring).

    Args:
        root: folder the CSV's ``image``/``mask`` paths are relative to.
        metadata: the CSV file.
        out: output folder (created, or replaced at the end); gets the shards and ``manifest.json``.
        shard_size: samples per shard.
        on_error: ``"raise"`` or ``"skip"`` for bad rows.
        prefix: shard name prefix, a plain file name (default: the name of ``root``).
        boxes_column: column with boxes (default ``boxes_xyxy`` when present, else none).
        key_column: column with the sample key (default ``image_id``, else the file stem).
        label_column: column copied to ``label`` when the CSV has no ``label`` column.
        shuffle_seed: shuffle the sample order with this seed before writing (default 0), so every
            shard holds a fair mix of labels even when the CSV is sorted by label (BTXRD's is: in CSV
            order its train shards held one label each, and a stream that draws shards at random
            swung in label make-up by hundreds of samples); None keeps the CSV order.
        overwrite: replace an existing pack in ``out``, once the new one is complete.
        progress: show a tqdm progress bar.

    Returns:
        The manifest dict (also written to ``out/manifest.json``).

    Raises:
        PackError: a bad row with ``on_error="raise"``, a missing required column, a bad
            ``prefix``, ``shard_size`` or ``on_error``, or an ``out`` that is not empty (without
            ``overwrite``) or holds more than a pack. ``out`` is then left as it was.
    """
    if on_error not in ("raise", "skip"):
        raise PackError(f"--on-error must be 'raise' or 'skip', got {on_error!r}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise PackError(f"--shard-size must be a whole number >= 1 (samples per shard), got {shard_size!r}")
    root, metadata, out = Path(root), Path(metadata), Path(out)
    prefix = prefix or root.resolve().name
    if not prefix or prefix in (".", "..") or any(c in prefix for c in "/\\\0"):
        raise PackError(f"--prefix {prefix!r} must be a plain file name: not empty, '.' or '..', and without "
                        "'/' or '\\' (the default is the name of --root)")
    columns, rows, short = read_csv(metadata)
    check_columns(metadata, columns, {c for c in (key_column, label_column, boxes_column) if c})
    for col, what in ((key_column, "--key-column"), (label_column, "--label-column"), (boxes_column, "--boxes-column")):
        if col is not None and col not in columns:
            raise PackError(f"{metadata}: {what} {col!r} is not a column (columns: {columns})")
    if "image" not in columns:
        raise PackError(f"{metadata}: needs an 'image' column (path relative to --root); columns: {columns}")
    if boxes_column is None and "boxes_xyxy" in columns:
        boxes_column = "boxes_xyxy"
    reserved = {"boxes", "rows"} - {boxes_column}
    if reserved & set(columns):
        raise PackError(f"{metadata}: columns {sorted(reserved & set(columns))} are reserved by the packer "
                        "(parsed boxes, merged rows); rename them")
    if label_column and label_column != "label" and "label" in columns:
        raise PackError(f"{metadata}: has a 'label' column already; drop --label-column {label_column!r}")
    key_column = key_column or ("image_id" if "image_id" in columns else None)
    if not rows:
        raise PackError(f"{metadata}: a header ({len(columns)} columns) but no row: nothing to pack. Was it cut "
                        "or filtered to nothing (e.g. a grep that missed CRLF line ends)?")
    _check_out(out, overwrite)

    samples = SampleBuilder(root, metadata, columns, on_error=on_error, boxes_column=boxes_column,
                            label_column=label_column)
    groups: dict[str, list[tuple[int, dict]]] = {}
    for line, row in rows:
        key = (row.get(key_column) or "").strip() if key_column else Path(row["image"]).stem
        if line in short:
            samples.bad(line, key, row["image"], f"{short[line]} cells, the header has {len(columns)} columns; "
                        "write every cell (an empty one is fine), so the values stay under their columns")
            continue
        groups.setdefault(key, []).append((line, row))
    order = list(groups)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)

    source = {"root": str(root.resolve()), "metadata": str(metadata.resolve()),
              "metadata_sha256": _sha256(metadata), "columns": columns, "key_column": key_column,
              "boxes_column": boxes_column, "label_column": label_column, "shard_size": shard_size,
              "on_error": on_error, "shuffle_seed": shuffle_seed, "csv_rows": len(rows)}
    out.parent.mkdir(parents=True, exist_ok=True)
    work = _sibling(out, "packing")
    work.mkdir()
    try:
        manifest = _pack_into(work, samples, [(key, groups[key]) for key in order], source, prefix=prefix,
                              progress=progress)
        _replace(out, work)
    except BaseException:  # a failed or interrupted pack leaves out as it was
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest


def _pack_into(work: Path, samples: SampleBuilder, groups: list[tuple[str, list[tuple[int, dict]]]], source: dict,
               *, prefix: str, progress: bool) -> dict:
    """Write the sample of every ``(key, rows)`` group, then the manifest, into the empty folder ``work``."""
    from tqdm import tqdm

    packer = _Packer(samples, work, prefix=prefix, shard_size=source["shard_size"],
                     has_split="split" in samples.columns)
    t0 = time.perf_counter()
    try:
        bar = tqdm(groups, desc=f"pack {samples.metadata.name}", unit="img",
                   disable=None if progress else True)  # None: off when not a terminal
        for key, group in bar:
            packer.add(key, group)
    finally:  # on an error the shards written so far are closed (and then deleted by pack)
        splits = packer.close()
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "count": sum(s["count"] for s in splits.values()),
        "splits": splits,
        "lesion_boxes": packer.lesion_boxes,
        "skipped_count": len(samples.skipped),
        "skipped": samples.skipped,
        "warnings_count": len(samples.warnings),
        "warnings": samples.warnings,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


class _Packer:
    """Writes each key's checked sample into its split's shards, keeping the counts."""

    def __init__(self, samples: SampleBuilder, out: Path, *, prefix: str, shard_size: int, has_split: bool):
        self.samples, self.out, self.prefix = samples, out, prefix
        self.shard_size, self.has_split = shard_size, has_split
        self.writers: dict[str, _SplitWriter] = {}
        self.splits: dict[str, dict] = {}
        self.lesion_boxes: list[dict] = []

    def add(self, key: str, group: list[tuple[int, dict]]) -> None:
        """Validate the rows of ``key`` and write its sample (nothing when every row is bad)."""
        sample = self.samples.build(key, group)
        if sample is None:
            return
        doc, files, size = sample
        split = (doc.get("split") or "unassigned") if self.has_split else "all"
        if not _SPLIT_RE.match(split):
            self.samples.bad(group[0][0], key, doc["image"], f"split {split!r} is not a plain name ([A-Za-z0-9_-])")
            return
        if split not in self.writers:
            self.writers[split] = _SplitWriter(self.out, self.prefix, split if self.has_split else None,
                                               self.shard_size)
            self.splits[split] = {"shards": [], "count": 0, "labels": Counter(), "regions": Counter()}
        shard = self.writers[split].write({"__key__": key, **files, "json": json.dumps(doc).encode("utf-8")})
        info = self.splits[split]
        info["count"] += 1
        info["labels"][_as_name(doc.get("label"))] += 1
        info["regions"][_as_name(doc.get("region"))] += 1
        if doc["boxes"]:
            self.lesion_boxes.append({"key": key, "split": split, "label": doc.get("label"),
                                      "region": doc.get("region"), "view": doc.get("view"), "width": size[1],
                                      "height": size[0], "boxes": doc["boxes"], "shard": shard})

    def close(self) -> dict[str, dict]:
        """Close every shard; return the manifest's ``splits``."""
        for split, writer in self.writers.items():
            info = self.splits[split]
            info.update(shards=writer.close(), labels=dict(sorted(info["labels"].items())),
                        regions=dict(sorted(info["regions"].items())))
        return dict(sorted(self.splits.items()))


class _SplitWriter:
    """Writes one split's samples into numbered tar shards of ``shard_size`` samples."""

    def __init__(self, out: Path, prefix: str, split: str | None, shard_size: int):
        self.out, self.prefix, self.split, self.shard_size = out, prefix, split, shard_size
        self.done: list[dict] = []
        self.writer = None
        self.name = ""
        self.count = 0

    def write(self, sample: dict) -> str:
        """Write one sample; return the shard name (relative to ``out``) it went to."""
        import webdataset as wds

        if self.writer is None or self.count >= self.shard_size:
            self._finish()
            index = len(self.done)
            self.name = (f"{self.split}/{self.prefix}-{self.split}-{index:06d}.tar" if self.split
                         else f"{self.prefix}-{index:06d}.tar")
            (self.out / self.name).parent.mkdir(parents=True, exist_ok=True)
            self.writer = wds.TarWriter(str(self.out / self.name), encoder=False, mtime=_MTIME)
            self.count = 0
        self.writer.write(sample)
        self.count += 1
        return self.name

    def _finish(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.done.append({"name": self.name, "count": self.count, "sha256": _sha256(self.out / self.name)})
            self.writer = None

    def close(self) -> list[dict]:
        self._finish()
        return self.done


def _as_name(value: Any) -> str:
    text = "" if value is None else str(value).strip()
    return text or "unknown"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``python -m streamaug.cli.pack`` / ``streamaug-pack``)."""
    ap = argparse.ArgumentParser(prog="python -m streamaug.cli.pack", description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True, help="folder the CSV paths are relative to")
    ap.add_argument("--metadata", required=True, help="metadata CSV with an 'image' column")
    ap.add_argument("--out", required=True, help="output folder for shards and manifest.json")
    ap.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    ap.add_argument("--on-error", choices=("skip", "raise"), default="raise", help="bad rows: skip or stop")
    ap.add_argument("--prefix", default=None, help="shard name prefix (default: name of --root)")
    ap.add_argument("--boxes-column", default=None, help="column with 'x0 y0 x1 y1;...' boxes")
    ap.add_argument("--key-column", default=None, help="column with the sample key")
    ap.add_argument("--label-column", default=None, help="column copied to 'label' when there is none")
    ap.add_argument("--shuffle-seed", type=int, default=0,
                    help="seed of the shuffle of the sample order before writing (default 0), so shards mix labels")
    ap.add_argument("--keep-order", action="store_true", help="write samples in CSV order (no shuffle)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing pack in --out")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = ap.parse_args(argv)
    try:
        manifest = pack(args.root, args.metadata, args.out, shard_size=args.shard_size, on_error=args.on_error,
                        prefix=args.prefix, boxes_column=args.boxes_column, key_column=args.key_column,
                        label_column=args.label_column, shuffle_seed=None if args.keep_order else args.shuffle_seed,
                        overwrite=args.overwrite, progress=not args.no_progress)
    except USER_ERRORS as err:  # PackError, XRayDecodeError; OSError: --root, --metadata, --out paths
        return fail(err)
    for what, entry in [("skipped", e) for e in manifest["skipped"]] + [("warning", e) for e in manifest["warnings"]]:
        print(f"{what}: line {entry['line']} ({entry['key']}, {entry['file']}): {entry['reason']}", file=sys.stderr)
    print(summary(manifest, args.out))
    return 0


def summary(manifest: dict, out: str | os.PathLike) -> str:
    """The lines :func:`main` prints after a pack: counts, each label with the int
    :func:`~streamaug.io.labels.to_int_label` maps it to, and the warnings by kind.

    >>> print(summary({"count": 3, "splits": {"all": {"count": 3, "labels": {"0.0": 1, "tumor": 2}}},
    ...                "source": {"csv_rows": 4}, "seconds": 0.1, "skipped_count": 0, "lesion_boxes": [],
    ...                "warnings": [{"kind": "duplicate_row"}]}, "out"))
    packed 3 samples (all=3) from 4 rows into out in 0.1 s; skipped 0 rows; 0 samples with boxes
    labels: 0.0 -> 0 (1), tumor -> 1 (2)
    warnings: 1 (duplicate_row=1)
    """
    counts = ", ".join(f"{k}={v['count']}" for k, v in manifest["splits"].items())
    labels: Counter = Counter()
    for split in manifest["splits"].values():
        labels.update(split["labels"])
    kinds = Counter(w["kind"] for w in manifest.get("warnings", []))
    return (f"packed {manifest['count']} samples ({counts}) from {manifest['source']['csv_rows']} rows into "
            f"{out} in {manifest['seconds']} s; skipped {manifest['skipped_count']} rows; "
            f"{len(manifest['lesion_boxes'])} samples with boxes\n"
            f"labels: {', '.join(f'{k} -> {to_int_label(k)} ({n})' for k, n in sorted(labels.items())) or 'none'}\n"
            f"warnings: {sum(kinds.values())}"
            + (f" ({', '.join(f'{k}={n}' for k, n in sorted(kinds.items()))})" if kinds else ""))


if __name__ == "__main__":
    sys.exit(main())
