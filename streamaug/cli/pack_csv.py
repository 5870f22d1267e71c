"""The packer's CSV side: read the metadata CSV and turn each key's rows into one checked sample.

:func:`streamaug.cli.pack.pack` writes what :class:`SampleBuilder` returns; the rules are in the
docstring of :mod:`streamaug.cli.pack`. Every problem of a row is reported through
:meth:`SampleBuilder.bad` as ``CSV line N (key, file): reason``: raised as :class:`PackError` with
``on_error="raise"``, recorded in ``skipped`` with ``"skip"``; rows of one key with different labels
are such a problem, as differing images, masks or splits are. What is packed but worth a look (a
duplicate row or box, an empty mask beside boxes or one that packs empty, rows that differ in a
``--label-column``) goes through :meth:`SampleBuilder.warn` into ``warnings``.
"""
from __future__ import annotations

import codecs
import csv
import io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from streamaug.cli.pack_mask import MaskError, binary_mask_png
from streamaug.data.decode import IMAGE_EXTS
from streamaug.io.labels import to_int_label
from streamaug.io.readers import XRayDecodeError, decode_xray, sniff_ext
from streamaug.sites.boxes import box_problem, parse_boxes

__all__ = ["KNOWN_COLUMNS", "PackError", "SampleBuilder", "check_columns", "read_csv"]

#: Columns the packer reads by name; a header that differs from one only in case or spaces is refused.
KNOWN_COLUMNS = ("image", "mask", "label", "boxes_xyxy", "split")
_IGNORED = {"image": "no image would be found", "mask": "no mask would be packed",
            "label": "every sample would be packed unlabelled (label -1)",
            "boxes_xyxy": "no box would be read", "split": "every sample would go to one split"}
#: One number of a box cell, as the CSV may spell it: ASCII digits, ``.``, an exponent; ``nan``/``inf``
#: are read (and then refused as non-finite). ``float`` alone would also take ``1_0`` (10) and ``１``.
_BOX_NUMBER = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|nan|inf|infinity)", re.I)


#: An absolute path (``/x``, ``\\x``, ``C:x``) or a ``..`` component, with either separator.
_LEAVES_ROOT = re.compile(r"^(?:[A-Za-z]:|[\\/])|(?:^|[\\/])\.\.(?:[\\/]|$)")


class PackError(ValueError):
    """A bad CSV row under ``on_error="raise"``, or an unusable CSV/output folder."""


class _RowProblem(ValueError):
    """A row that cannot be packed for a reason this module states itself (not a decode error)."""


def read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict]], dict[int, int]]:
    """Columns, ``(line number, row)`` pairs (header is line 1) and the short rows; strips nothing but the BOM.

    The CSV is read strictly: a quote that is never closed (which would swallow every later line
    into one cell) or a stray ``"`` after a quoted cell stops the pack. A row with fewer cells than
    the header is returned padded with ``""`` and listed in the third value, ``{line: cells}``, for
    the caller to report as a bad row.

    Raises:
        PackError: unreadable file, not UTF-8, a NUL byte, malformed quoting, a row with more
            cells than the header, duplicate columns.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise PackError(f"{path}: cannot read the metadata CSV ({err.strerror or err})") from err
    text = _utf8_text(path, data)
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    columns: list[str] = []
    rows: list[tuple[int, dict]] = []
    short: dict[int, int] = {}
    start = 1  # the line the record being read starts on
    try:
        columns = list(reader.fieldnames or [])
        start = reader.line_num + 1
        for row in reader:
            if None in row:
                raise PackError(f"{path} line {reader.line_num}: more cells than the header has columns")
            missing = sum(v is None for v in row.values())
            if missing:
                short[reader.line_num] = len(columns) - missing
            rows.append((reader.line_num, {c: (v if v is not None else "") for c, v in row.items()}))
            start = reader.line_num + 1
    except csv.Error as err:
        if "unexpected end of data" in str(err):
            raise PackError(f"{path} line {start}: a quoted cell of the row starting here is never closed, so every "
                            f"later line (to line {reader.reader.line_num}) would be read into it; close the quote or "
                            "remove the stray '\"' (a '\"' inside a quoted cell is written '\"\"')") from err
        raise PackError(f"{path} line {reader.reader.line_num}: malformed CSV ({err}); quote a cell that holds ',' or "
                        "'\"' and write each '\"' inside it as '\"\"'") from err
    if len(set(columns)) != len(columns):
        raise PackError(f"{path}: duplicate column names in the header {columns}")
    return columns, rows, short


def _utf8_text(path: Path, data: bytes) -> str:
    """``data`` decoded as UTF-8 (a BOM dropped); a PackError naming the byte, its line and the fix otherwise."""
    fix = "save it as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet, or iconv -f <its encoding> -t UTF-8)"
    utf16 = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        what = "it is UTF-16 (it starts with a UTF-16 byte-order mark)" if utf16 else \
            f"byte {err.start} is 0x{data[err.start]:02x} ({err.reason}): Latin-1 or another legacy encoding?"
        line = data.count(b"\n", 0, err.start) + 1
        raise PackError(f"{path} line {line}: the metadata CSV is not UTF-8 text; {what}; {fix}") from err
    if "\0" in text:
        at = text.index("\0")
        raise PackError(f"{path} line {text.count(chr(10), 0, at) + 1}: the metadata CSV holds a NUL byte (at "
                        f"character {at}): UTF-16 without a byte-order mark, or not text; {fix}")
    return text


def check_columns(path: Path, columns: list[str], named: set[str]) -> None:
    """Refuse a header that spells a :data:`KNOWN_COLUMNS` name with another case or with spaces.

    ``Label`` or `` label`` (a space after the comma) is not ``label``: the packer would ignore it and,
    for instance, pack every sample unlabelled. Columns passed by name (``named``: ``--label-column``,
    ``--boxes-column``, ``--key-column``) are the user's choice and pass.

    Raises:
        PackError: naming the CSV, the column as written and the name to rename it to.
    """
    for col in columns:
        canon = col.strip().lower()
        if col in KNOWN_COLUMNS or canon not in KNOWN_COLUMNS or col in named:
            continue
        if canon in columns:
            fix = f"the CSV also has {canon!r}: rename or drop {col!r}"
        elif col != col.strip():
            fix = f"rename it to {canon!r}, and remove the spaces around the commas (in the rows too)"
        else:
            fix = f"rename it to {canon!r}" + (f", or pass --label-column {col!r}" if canon == "label" else "")
        raise PackError(f"{path}: column {col!r} is not {canon!r} (it differs in case or spaces), so the packer "
                        f"would ignore it and {_IGNORED[canon]}; {fix}")


class SampleBuilder:
    """Checks the rows of one key and reads its files into ``(json doc, {member: bytes}, (H, W))``.

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
        self.warnings: list[dict] = []

    def bad(self, line: int, key: str, file: str, reason: str, cause: BaseException | None = None) -> None:
        """Report a bad row: raise (``on_error="raise"``) or record it in ``skipped``."""
        if self.on_error == "raise":
            raise PackError(f"{self.metadata} line {line} (key {key!r}, {file}): {reason}") from cause
        self.skipped.append({"line": line, "key": key, "file": file, "reason": reason})

    def warn(self, line: int, key: str, file: str, kind: str, reason: str) -> None:
        """Record something packed but worth a look (``kind``: ``duplicate_row``, ``duplicate_box``,
        ``empty_mask``, ``label_conflict``, ``label_spelling``) in ``warnings``; never raises."""
        self.warnings.append({"line": line, "key": key, "file": file, "kind": kind, "reason": reason})

    def build(self, key: str, group: list[tuple[int, dict]]) -> tuple[dict, dict[str, bytes], tuple] | None:
        """Check one key's rows; return ``(json doc, {member: bytes}, (H, W))``, or ``None`` when all are bad.

        A row identical to an earlier row of the key is dropped, and a box equal to one given
        earlier for the image is stored once in ``boxes`` (each with a warning): merged, they would
        count one lesion twice. A row whose ``image``, ``mask`` or ``split`` differs from the key's
        first row, or whose ``label`` reads as another label (:func:`~streamaug.io.labels.to_int_label`),
        is a bad row; a label spelled otherwise (``tumor``/``Tumor``), or a ``--label-column`` that
        reads as another label, is a warning.
        """
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
        seen_rows = {tuple(first.values()): line0}
        for line, row in group[1:]:
            clash = [c for c in ("image", "mask", "split") if c in self.columns and row[c] != first[c]]
            spelled = "label" in self.columns and row["label"] != first["label"]
            if spelled and to_int_label(row["label"]) != to_int_label(first["label"]):
                clash.append("label")
            elif spelled and not clash:
                self.warn(line, key, row["image"], "label_spelling", f"label {row['label']!r} here, "
                          f"{first['label']!r} on line {line0}: the same label ({to_int_label(row['label'])}), spelled "
                          "otherwise; the sample keeps the first spelling")
            same = seen_rows.setdefault(tuple(row.values()), line)
            if clash:
                self.bad(line, key, row["image"], f"same key as line {line0} but different {', '.join(clash)}"
                         + (f" ({first['label']!r} there, {row['label']!r} here): one image has one label; fix "
                            "the CSV" if "label" in clash else ""))
            elif same != line:
                self.warn(line, key, row["image"], "duplicate_row", f"the same row as line {same}; dropped "
                          "(its boxes would count twice): delete the repeated line")
            else:
                kept.append((line, row))

        before = len(self.warnings)
        loaded = self.load_files(key, kept)
        if loaded is None:
            return None
        files, (h, w), mask_pixels = loaded
        good = []
        for line, row in kept:
            text = row.get(self.boxes_column) if self.boxes_column else None
            try:
                boxes = _box_lists(_read_boxes(text)) if text else []
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
        seen_boxes: dict[tuple, int] = {}
        doc["boxes"] = []
        for line, _, boxes in good:
            for box in boxes:
                same = seen_boxes.get(tuple(box))
                if same is None:
                    seen_boxes[tuple(box)] = line
                    doc["boxes"].append(box)
                else:
                    where = "earlier in this row" if same == line else f"on line {same}"
                    self.warn(line, key, first["image"], "duplicate_box", f"box {box} repeats the one {where}; "
                              "stored once in 'boxes': delete the repeat")
        if len(good) > 1:
            differing = [c for c in self.columns if any(r[c] != good[0][1][c] for _, r, _ in good)]
            doc["rows"] = [{"line": line, **{c: r[c] for c in differing}, "boxes": boxes}
                           for line, r, boxes in good]
        warned = any(w["kind"] == "empty_mask" for w in self.warnings[before:])  # by load_files: said once
        if mask_pixels == 0 and doc["boxes"] and not warned:
            line = next(line for line, _, boxes in good if boxes)
            self.warn(line, key, first["image"], "empty_mask", f"mask {first['mask'].strip()} has no foreground "
                      "pixel, yet the image has boxes: check that the mask belongs to this image and marks the lesion")
        if self.label_column and "label" not in self.columns:  # the label is a copy of the first row's
            label = to_int_label(doc["label"])
            other = next(((ln, r) for ln, r, _ in good if to_int_label(r[self.label_column]) != label), None)
            if other is not None:  # findings that differ but read as one label (Mass, Nodule) are fine
                self.warn(other[0], key, first["image"], "label_conflict", f"--label-column {self.label_column!r} "
                          f"is {other[1][self.label_column]!r} here but {doc['label']!r} on line {good[0][0]}; the "
                          "sample's label is the first row's: give each image one label")
        return doc, files, (h, w)

    def load_files(self, key: str, kept: list[tuple[int, dict]]) -> tuple[dict[str, bytes], tuple, int | None] | None:
        """Read and decode the image (and mask) of ``key``: ``({member: bytes}, (H, W), mask pixels)`` or ``None``.

        The image is stored as read under its lower-cased suffix, which must be one of the stream's
        ``IMAGE_EXTS``; the mask as a binary PNG under ``mask.png`` (:func:`binary_mask_png`), with
        its count of foreground pixels (``None`` without a mask). Any failure (a path outside
        ``root``, a missing or undecodable file, an image type the stream cannot read, a mask of
        another size, or an unexpected error of the decoder) is reported for every row of the key.
        """
        image_rel, mask_rel = kept[0][1]["image"], (kept[0][1].get("mask") or "").strip()
        files: dict[str, bytes] = {}
        try:
            path = self.inside_root(image_rel)
            data = path.read_bytes()
            ext = Path(image_rel).suffix.lower().lstrip(".") or sniff_ext(data) or "bin"
            if ext not in IMAGE_EXTS:  # so it can never be stored as "json", "mask.png" or a member unread
                raise _RowProblem(f"image type {ext!r} is not one the stream reads ({', '.join(IMAGE_EXTS)}); "
                                  "convert the image to PNG (or give it its right extension)")
            decoded, _ = decode_xray(data, ext, source=str(path))
            size = tuple(decoded.shape[-2:])
            files[ext] = data
            mask_pixels, emptied = None, False
            if mask_rel:
                path = self.inside_root(mask_rel)
                files["mask.png"], mask_pixels, emptied = binary_mask_png(path.read_bytes(), source=mask_rel,
                                                                          size=size)
        except Exception as err:  # noqa: BLE001 - one file's failure is its rows' problem, reported by line
            for line, row in kept:
                self.bad(line, key, row["image"], _reason(err), cause=err)
            return None
        if emptied:
            self.warn(kept[0][0], key, image_rel, "empty_mask", f"mask {mask_rel} is not blank, but no pixel is "
                      "above half its largest value in a colour channel (marks only in alpha or palette indices?), "
                      "so it packs empty: save it as a grey PNG, lesion 255 (or 1) on 0")
        return files, size, mask_pixels

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
        return f"missing file: {err.filename!r}"
    if isinstance(err, (OSError, XRayDecodeError, _RowProblem, MaskError)):
        return str(err)
    return f"unexpected {type(err).__name__} while decoding: {err}"


def _read_boxes(text: str) -> np.ndarray:
    """:func:`~streamaug.sites.boxes.parse_boxes` of a CSV cell whose every number is plainly written.

    Raises:
        ValueError: a token that is not a plain number (``1_0``, ``0x1``, ``[[1``), or not (k, 4).
    """
    for token in text.replace(",", " ").replace(";", " ").split():
        if not _BOX_NUMBER.fullmatch(token):
            raise ValueError(f"{token!r} is not a plain number: digits, '.', an exponent, no '_'")
    return parse_boxes(text)


def _box_lists(boxes: np.ndarray) -> list[list[int | float]]:
    """JSON boxes from :func:`~streamaug.sites.boxes.parse_boxes`' float array: whole numbers as ints."""
    return [[int(v) if v.is_integer() else v for v in map(float, box)] for box in boxes]
