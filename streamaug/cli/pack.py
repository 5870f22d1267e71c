"""Pack a folder of X-rays plus a metadata CSV into WebDataset shards and a ``manifest.json``.

``python -m streamaug.cli.pack --root DIR --metadata CSV --out DIR [--shard-size N]
[--on-error skip|raise] [--prefix NAME] [--boxes-column COL] [--key-column COL] [--label-column COL]``

Layout and manifest follow ``docs/ARCHITECTURE.md``. Rules this packer adds:

* **CSV.** ``image`` (path relative to ``--root``) is required; ``mask``, ``label``, ``split`` and the
  boxes column (``--boxes-column``, default ``boxes_xyxy`` when present; ``x0 y0 x1 y1;...``,
  end-exclusive pixels) are optional; every column is kept, as the string the CSV gives.
* **Key.** ``--key-column``, else ``image_id`` when present, else the image file stem. Keys may not
  contain ``.`` or ``/`` (WebDataset splits member names at the first dot).
* **Sample.** ``<key>.<ext>`` holds the image bytes exactly as stored (``ext`` is the lower-cased
  file suffix, sniffed from the bytes when there is none), ``<key>.mask.<ext>`` the mask bytes
  (``mask.png`` for PNG masks; an empty ``mask`` cell means no mask), and ``<key>.json`` every column
  plus ``boxes`` (a list of ``[x0, y0, x1, y1]``; ints stay ints, ``[]`` for none). With
  ``--label-column COL`` and no ``label`` column, ``label`` is a copy of ``COL``.
* **Several rows, one image** (e.g. one row per box): they become one sample. Boxes are
  concatenated in row order; a column equal in every row is stored once; a column that differs is
  stored with the first row's value at the top level *and* per row in ``rows``:
  ``[{"line": csv line, <differing columns>, "boxes": that row's boxes}, ...]``. Rows of one key
  must agree on ``image``, ``mask`` and ``split``.
* **Splits.** One set of shards per value of ``split``
  (``OUT/<split>/<prefix>-<split>-000000.tar``); an empty cell is split ``unassigned``. Without a
  ``split`` column: ``OUT/<prefix>-000000.tar`` and the manifest names the split ``all``.
* **Bad rows** (missing or undecodable image/mask, mask size differing from the image, a box that
  is degenerate or outside the image, an invalid key, conflicting duplicate rows) are reported
  as ``CSV line N (key, file): reason``. ``--on-error raise`` (default) stops at the first one;
  ``skip`` leaves the row out (an image whose rows are all bad is left out) and records it in
  ``manifest["skipped"]``.
* **Manifest** counts labels and regions per split as given (``unknown`` for empty); the
  ``lesion_boxes`` bank has one entry per sample with boxes (plus its ``shard``). Shards are
  written with a fixed mtime, so packing the same input twice gives the same ``sha256``.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import hashlib
import json
import math
import os
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streamaug.io.readers import XRayDecodeError, decode_xray, sniff_ext

__all__ = ["pack", "main", "parse_boxes", "PackError", "MANIFEST_FORMAT"]

MANIFEST_FORMAT = "streamaug-shards/1"
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_MTIME = 946684800  # 2000-01-01: fixed so shards are byte-reproducible; an int, so no pax header per file


class PackError(ValueError):
    """A bad CSV row under ``on_error="raise"``, or an unusable CSV/output folder."""


def parse_boxes(text: str | None) -> list[list[int | float]]:
    """Parse ``"x0 y0 x1 y1;x0 y0 x1 y1"`` (spaces or commas inside a box) into a list of boxes.

    >>> parse_boxes("1 2 3 4; 5.5 6 7 8")
    [[1, 2, 3, 4], [5.5, 6, 7, 8]]
    >>> parse_boxes("")
    []
    """
    boxes = []
    for part in (text or "").split(";"):
        fields = part.replace(",", " ").split()
        if not fields:
            continue
        if len(fields) != 4:
            raise ValueError(f"box {part.strip()!r} has {len(fields)} numbers, expected 4 (x0 y0 x1 y1)")
        box = []
        for f in fields:
            try:
                v: int | float = int(f)
            except ValueError:
                v = float(f)  # raises ValueError for non-numbers
            if not math.isfinite(v):
                raise ValueError(f"box {part.strip()!r} has a non-finite number")
            box.append(v)
        boxes.append(box)
    return boxes


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
    shuffle_seed: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Pack ``root`` + ``metadata`` into shards under ``out`` (rules in the module docstring).

    Args:
        root: folder the CSV's ``image``/``mask`` paths are relative to.
        metadata: the CSV file.
        out: output folder (created); gets the shards and ``manifest.json``.
        shard_size: samples per shard.
        on_error: ``"raise"`` or ``"skip"`` for bad rows.
        prefix: shard name prefix (default: the name of ``root``).
        boxes_column: column with boxes (default ``boxes_xyxy`` when present, else none).
        key_column: column with the sample key (default ``image_id``, else the file stem).
        label_column: column copied to ``label`` when the CSV has no ``label`` column.
        shuffle_seed: shuffle the sample order before writing (default: CSV order).
        overwrite: replace an existing pack in ``out`` (its listed shards are deleted).
        progress: show a tqdm progress bar.

    Returns:
        The manifest dict (also written to ``out/manifest.json``).

    Raises:
        PackError: a bad row with ``on_error="raise"``, a missing required column, or an
            existing ``manifest.json`` without ``overwrite``.
    """
    from tqdm import tqdm

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    root, metadata, out = Path(root), Path(metadata), Path(out)
    prefix = prefix or root.resolve().name
    columns, rows = _read_csv(metadata)
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
    _prepare_out(out, overwrite)

    groups: dict[str, list[tuple[int, dict]]] = {}
    for line, row in rows:
        key = (row.get(key_column) or "").strip() if key_column else Path(row["image"]).stem
        groups.setdefault(key, []).append((line, row))
    order = list(groups)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)

    packer = _Packer(root, out, metadata, columns, prefix=prefix, shard_size=shard_size, on_error=on_error,
                     boxes_column=boxes_column, label_column=label_column, has_split="split" in columns)
    t0 = time.perf_counter()
    try:
        for key in tqdm(order, desc=f"pack {metadata.name}", unit="img", disable=not progress):
            packer.add(key, groups[key])
    finally:  # on an error the shards written so far are closed (no manifest is written)
        splits = packer.close()
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"root": str(root.resolve()), "metadata": str(metadata.resolve()),
                   "metadata_sha256": _sha256(metadata), "columns": columns, "key_column": key_column,
                   "boxes_column": boxes_column, "label_column": label_column, "shard_size": shard_size,
                   "on_error": on_error, "shuffle_seed": shuffle_seed, "csv_rows": len(rows)},
        "count": sum(s["count"] for s in splits.values()),
        "splits": splits,
        "lesion_boxes": packer.lesion_boxes,
        "skipped_count": len(packer.skipped),
        "skipped": packer.skipped,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out / "manifest.json")
    return manifest


class _Packer:
    """Validates each key's rows and writes its sample into its split's shards, keeping the counts."""

    def __init__(self, root: Path, out: Path, metadata: Path, columns: list[str], *, prefix: str,
                 shard_size: int, on_error: str, boxes_column: str | None, label_column: str | None,
                 has_split: bool):
        self.root, self.out, self.metadata, self.columns = root, out, metadata, columns
        self.prefix, self.shard_size, self.on_error = prefix, shard_size, on_error
        self.boxes_column, self.label_column, self.has_split = boxes_column, label_column, has_split
        self.writers: dict[str, _SplitWriter] = {}
        self.splits: dict[str, dict] = {}
        self.lesion_boxes: list[dict] = []
        self.skipped: list[dict] = []

    def bad(self, line: int, key: str, file: str, reason: str) -> None:
        """Report a bad row: raise (``on_error="raise"``) or record it in ``skipped``."""
        if self.on_error == "raise":
            raise PackError(f"{self.metadata} line {line} (key {key!r}, {file}): {reason}")
        self.skipped.append({"line": line, "key": key, "file": file, "reason": reason})

    def add(self, key: str, group: list[tuple[int, dict]]) -> None:
        """Validate the rows of ``key`` and write its sample (nothing when every row is bad)."""
        sample = self.build(key, group)
        if sample is None:
            return
        doc, files, size = sample
        split = (doc.get("split") or "unassigned") if self.has_split else "all"
        if not _SPLIT_RE.match(split):
            self.bad(group[0][0], key, doc["image"], f"split {split!r} is not a plain name ([A-Za-z0-9_-])")
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

    def build(self, key: str, group: list[tuple[int, dict]]) -> tuple[dict, dict[str, bytes], tuple] | None:
        """Validate one key's rows; return ``(json doc, {ext: bytes}, (H, W))`` or ``None``."""
        line0, first = group[0]
        image_rel = first["image"]
        if not key or "." in key or "/" in key or "\\" in key:
            for line, row in group:
                self.bad(line, key, row["image"], f"invalid key {key!r}: must be non-empty without '.', "
                         "'/' or '\\' (use --key-column or rename the file)")
            return None
        kept = []
        for line, row in group[1:]:
            clash = [c for c in ("image", "mask", "split") if c in self.columns and row[c] != first[c]]
            if clash:
                self.bad(line, key, row["image"], f"same key as line {line0} but different {', '.join(clash)}")
            else:
                kept.append((line, row))
        kept.insert(0, (line0, first))

        loaded = self.load_files(key, kept)
        if loaded is None:
            return None
        files, size = loaded
        h, w = size
        good = []
        for line, row in kept:
            try:
                boxes = parse_boxes(row.get(self.boxes_column)) if self.boxes_column else []
            except ValueError as err:
                self.bad(line, key, image_rel, f"column {self.boxes_column!r}: {err}")
                continue
            reason = next((_box_problem(b, w, h) for b in boxes if _box_problem(b, w, h)), None)
            if reason:
                self.bad(line, key, image_rel, f"column {self.boxes_column!r}: {reason}")
                continue
            good.append((line, row, boxes))
        if not good:
            return None

        doc: dict[str, Any] = dict(good[0][1])
        if self.label_column and "label" not in self.columns:
            doc["label"] = doc[self.label_column]
        doc["boxes"] = [b for _, _, boxes in good for b in boxes]
        if len(good) > 1:
            differing = [c for c in self.columns if any(r[c] != good[0][1][c] for _, r, _ in good)]
            doc["rows"] = [{"line": line, **{c: r[c] for c in differing}, "boxes": boxes}
                           for line, r, boxes in good]
        return doc, files, size

    def load_files(self, key: str, kept: list[tuple[int, dict]]) -> tuple[dict[str, bytes], tuple] | None:
        """Read and decode the image (and mask) of ``key``: ``({ext: bytes}, (H, W))`` or ``None``."""
        image_rel, mask_rel = kept[0][1]["image"], (kept[0][1].get("mask") or "").strip()
        files: dict[str, bytes] = {}
        try:
            size: tuple = ()
            for name, rel in (("", image_rel), ("mask.", mask_rel)):
                if not rel:
                    continue
                data = (self.root / rel).read_bytes()
                ext = Path(rel).suffix.lower().lstrip(".") or sniff_ext(data) or "bin"
                decoded, _ = decode_xray(data, ext, source=str(self.root / rel))
                if size and tuple(decoded.shape[-2:]) != size:
                    raise XRayDecodeError(f"mask {rel} is {tuple(decoded.shape[-2:])}, image is {size}")
                size = size or tuple(decoded.shape[-2:])
                files[name + ext] = data
        except (OSError, XRayDecodeError) as err:
            reason = f"missing file: {err.filename}" if isinstance(err, FileNotFoundError) else str(err)
            for line, row in kept:
                self.bad(line, key, row["image"], reason)
            return None
        return files, size


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


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """Columns and ``(line number, row)`` pairs (header is line 1); strips nothing but the BOM."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = list(reader.fieldnames or [])
            rows = []
            for row in reader:
                if None in row:
                    raise PackError(f"{path} line {reader.line_num}: more cells than the header has columns")
                rows.append((reader.line_num, {c: (v if v is not None else "") for c, v in row.items()}))
    except OSError as err:
        raise PackError(f"{path}: cannot read the metadata CSV ({err.strerror or err})") from err
    if len(set(columns)) != len(columns):
        raise PackError(f"{path}: duplicate column names in the header {columns}")
    return columns, rows


def _prepare_out(out: Path, overwrite: bool) -> None:
    manifest = out / "manifest.json"
    if manifest.exists():
        if not overwrite:
            raise PackError(f"{out} already holds a pack (manifest.json); pass --overwrite or choose another --out")
        old = json.loads(manifest.read_text())
        for split in old.get("splits", {}).values():
            for shard in split.get("shards", []):
                (out / shard["name"]).unlink(missing_ok=True)
        manifest.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _box_problem(box: list, width: int, height: int) -> str | None:
    """Why ``box`` (``x0 y0 x1 y1``, end-exclusive) is unusable in a ``width`` x ``height`` image."""
    x0, y0, x1, y1 = box
    if x0 >= x1 or y0 >= y1:
        return f"degenerate box {box} (needs x0 < x1 and y0 < y1)"
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        return f"box {box} is outside the {width}x{height} image (needs x0, y0 >= 0, x1 <= width, y1 <= height)"
    return None


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
    ap.add_argument("--shuffle-seed", type=int, default=None, help="shuffle sample order before writing")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing pack in --out")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = ap.parse_args(argv)
    try:
        manifest = pack(args.root, args.metadata, args.out, shard_size=args.shard_size, on_error=args.on_error,
                        prefix=args.prefix, boxes_column=args.boxes_column, key_column=args.key_column,
                        label_column=args.label_column, shuffle_seed=args.shuffle_seed,
                        overwrite=args.overwrite, progress=not args.no_progress)
    except PackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for entry in manifest["skipped"]:
        print(f"skipped: line {entry['line']} ({entry['key']}, {entry['file']}): {entry['reason']}", file=sys.stderr)
    counts = ", ".join(f"{k}={v['count']}" for k, v in manifest["splits"].items())
    print(f"packed {manifest['count']} samples ({counts}) from {manifest['source']['csv_rows']} rows into "
          f"{args.out} in {manifest['seconds']} s; skipped {manifest['skipped_count']} rows; "
          f"{len(manifest['lesion_boxes'])} samples with boxes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
