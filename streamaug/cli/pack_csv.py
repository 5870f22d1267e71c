"""The packer's CSV side: read the metadata CSV and turn each key's rows into one checked sample.

:func:`streamaug.cli.pack.pack` writes what :class:`SampleBuilder` returns; the rules are in the
docstring of :mod:`streamaug.cli.pack`. Every problem of a row is reported through
:meth:`SampleBuilder.bad` as ``CSV line N (key, file): reason``: raised as :class:`PackError` with
``on_error="raise"``, recorded in ``skipped`` with ``"skip"``.
"""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from streamaug.io.readers import XRayDecodeError, decode_xray, sniff_ext
from streamaug.sites.boxes import box_problem, parse_boxes

__all__ = ["PackError", "SampleBuilder", "read_csv"]


#: An absolute path (``/x``, ``\\x``, ``C:x``) or a ``..`` component, with either separator.
_LEAVES_ROOT = re.compile(r"^(?:[A-Za-z]:|[\\/])|(?:^|[\\/])\.\.(?:[\\/]|$)")


class PackError(ValueError):
    """A bad CSV row under ``on_error="raise"``, or an unusable CSV/output folder."""


class _RowProblem(ValueError):
    """A row that cannot be packed for a reason this module states itself (not a decode error)."""


def read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """Columns and ``(line number, row)`` pairs (header is line 1); strips nothing but the BOM.

    Raises:
        PackError: unreadable file, a row with more cells than the header, duplicate columns.
    """
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


class SampleBuilder:
    """Checks the rows of one key and reads its files into ``(json doc, {ext: bytes}, (H, W))``.

    Args:
        root: folder the CSV's ``image``/``mask`` paths are relative to; nothing outside it is read.
        metadata: the CSV (named in messages).
        columns: the CSV's columns.
        on_error: ``"raise"`` or ``"skip"``.
        boxes_column: column with ``x0 y0 x1 y1;...`` boxes, or ``None``.
        label_column: column copied to ``label`` when the CSV has no ``label`` column.
    """

    def __init__(self, root: Path, metadata: Path, columns: list[str], *, on_error: str,
                 boxes_column: str | None, label_column: str | None):
        self.root, self.real_root, self.metadata, self.columns = root, os.path.realpath(root), metadata, columns
        self._real_dirs: dict[str, str] = {}  # folder -> its realpath: one lstat per file, not per component
        self.on_error, self.boxes_column, self.label_column = on_error, boxes_column, label_column
        self.skipped: list[dict] = []

    def bad(self, line: int, key: str, file: str, reason: str, cause: BaseException | None = None) -> None:
        """Report a bad row: raise (``on_error="raise"``) or record it in ``skipped``."""
        if self.on_error == "raise":
            raise PackError(f"{self.metadata} line {line} (key {key!r}, {file}): {reason}") from cause
        self.skipped.append({"line": line, "key": key, "file": file, "reason": reason})

    def build(self, key: str, group: list[tuple[int, dict]]) -> tuple[dict, dict[str, bytes], tuple] | None:
        """Check one key's rows; return ``(json doc, {ext: bytes}, (H, W))``, or ``None`` when all are bad."""
        for line, row in group:
            if not row["image"].strip():
                self.bad(line, key, "", "empty 'image' cell: every row needs an image path relative to --root")
        group = [(line, row) for line, row in group if row["image"].strip()]
        if not group:
            return None
        line0, first = group[0]
        if not key or "." in key or "/" in key or "\\" in key:
            for line, row in group:
                self.bad(line, key, row["image"], f"invalid key {key!r}: must be non-empty without '.', "
                         "'/' or '\\' (use --key-column or rename the file)")
            return None
        kept = [(line0, first)]
        for line, row in group[1:]:
            clash = [c for c in ("image", "mask", "split") if c in self.columns and row[c] != first[c]]
            if clash:
                self.bad(line, key, row["image"], f"same key as line {line0} but different {', '.join(clash)}")
            else:
                kept.append((line, row))

        loaded = self.load_files(key, kept)
        if loaded is None:
            return None
        files, (h, w) = loaded
        good = []
        for line, row in kept:
            text = row.get(self.boxes_column) if self.boxes_column else None
            try:
                boxes = _box_lists(parse_boxes(text)) if text else []
            except ValueError as err:
                self.bad(line, key, first["image"], f"column {self.boxes_column!r}: cannot read {text!r} as "
                         f"boxes 'x0 y0 x1 y1;...' ({err})")
                continue
            reason = next(filter(None, (box_problem(b, h, w) for b in boxes)), None)
            if reason:
                self.bad(line, key, first["image"], f"column {self.boxes_column!r}: {reason}")
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
        return doc, files, (h, w)

    def load_files(self, key: str, kept: list[tuple[int, dict]]) -> tuple[dict[str, bytes], tuple] | None:
        """Read and decode the image (and mask) of ``key``: ``({ext: bytes}, (H, W))`` or ``None``.

        Any failure (a path outside ``root``, a missing or undecodable file, a mask of another size,
        or an unexpected error of the decoder) is reported for every row of the key.
        """
        image_rel, mask_rel = kept[0][1]["image"], (kept[0][1].get("mask") or "").strip()
        files: dict[str, bytes] = {}
        size: tuple = ()
        try:
            for name, rel in (("", image_rel), ("mask.", mask_rel)):
                if not rel:
                    continue
                path = self.inside_root(rel)
                data = path.read_bytes()
                ext = Path(rel).suffix.lower().lstrip(".") or sniff_ext(data) or "bin"
                decoded, _ = decode_xray(data, ext, source=str(path))
                if size and tuple(decoded.shape[-2:]) != size:
                    raise _RowProblem(f"mask {rel} is {tuple(decoded.shape[-2:])}, image is {size}")
                size = size or tuple(decoded.shape[-2:])
                files[name + ext] = data
        except Exception as err:  # noqa: BLE001 - one file's failure is its rows' problem, reported by line
            for line, row in kept:
                self.bad(line, key, row["image"], _reason(err), cause=err)
            return None
        return files, size

    def inside_root(self, rel: str) -> Path:
        """``root / rel``, refusing absolute paths, ``..`` and links that lead outside ``root``.

        Raises:
            _RowProblem: the path would read outside ``root``.
        """
        if _LEAVES_ROOT.search(rel):
            raise _RowProblem(f"path {rel!r} is absolute or uses '..': give paths inside --root, relative to it")
        path = self.root / rel
        folder = str(path.parent)
        if folder not in self._real_dirs:
            self._real_dirs[folder] = os.path.realpath(folder)
        real = os.path.realpath(path) if path.is_symlink() else os.path.join(self._real_dirs[folder], path.name)
        if os.path.commonpath([real, self.real_root]) != self.real_root:
            raise _RowProblem(f"path {rel!r} resolves to {real}, outside --root {self.real_root} (a symbolic "
                              "link?); copy the file into --root")
        return path


def _reason(err: Exception) -> str:
    """The ``skipped`` reason for an exception raised while reading one key's files."""
    if isinstance(err, FileNotFoundError):
        return f"missing file: {err.filename}"
    if isinstance(err, (OSError, XRayDecodeError, _RowProblem)):
        return str(err)
    return f"unexpected {type(err).__name__} while decoding: {err}"


def _box_lists(boxes: np.ndarray) -> list[list[int | float]]:
    """JSON boxes from :func:`~streamaug.sites.boxes.parse_boxes`' float array: whole numbers as ints."""
    return [[int(v) if v.is_integer() else v for v in map(float, box)] for box in boxes]
