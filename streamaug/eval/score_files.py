"""Score files: one ``key,label,score`` row per test case (and, where the shards know it, the case's
``group``: its patient), written by ``streamaug-eval score --scores`` and read, checked, by
``streamaug-eval compare``, which resamples patients when the baseline file has groups."""
from __future__ import annotations

import csv
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["load_score_groups", "load_scores", "save_scores"]

_FIX = "write it with `streamaug-eval score ... --scores FILE` (columns key,label,score)"


def load_scores(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a score CSV (``key,label,score``, as :func:`save_scores` and ``--scores`` write it),
    checked: ``(y, scores, keys)``.

    Raises:
        ValueError: a missing column, a row with another number of cells than the header, a label
            other than 0/1, a score that is not a finite number, a key given twice, no rows, or one
            class only. The message names the file (and line) and the fix.
    """
    return _read(path)[:3]


def load_score_groups(path: str | os.PathLike) -> list[str] | None:
    """The ``group`` column of a score file, in row order (checked like :func:`load_scores`), or
    None when it has no such column. A row with an empty group is its own group (its key).

    Raises:
        ValueError: see :func:`load_scores`.
    """
    return _read(path)[3]


def _read(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, list[str], list[str] | None]:
    """``(y, scores, keys, groups)`` of a score file, checked (see :func:`load_scores`)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a score CSV; {_FIX}")
    if not path.exists():
        raise ValueError(f"{path}: no such score file; check the path, or {_FIX}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path}: not a CSV of UTF-8 text ({err}); {_FIX}") from err
    header = [c.strip() for c in rows[0]] if rows else []
    missing = [c for c in ("key", "label", "score") if c not in header]
    if missing:
        raise ValueError(f"{path}: no column{'s' if len(missing) > 1 else ''} {', '.join(missing)} (header: "
                         f"{header or 'none, the file is empty'}); {_FIX}")
    at = {c: header.index(c) for c in ("key", "label", "score")}
    group_at = header.index("group") if "group" in header else None
    y, s, keys, groups = [], [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(f"{path} line {line}: {len(row)} cells, the header has {len(header)}; one "
                             "key,label,score row per case")
        label, score = row[at["label"]].strip(), row[at["score"]].strip()
        if label not in ("0", "1"):
            raise ValueError(f"{path} line {line}: label {label!r} is not 0 or 1; a score file holds labelled "
                             "cases only (0 = no lesion, 1 = lesion)")
        try:
            value = float(score)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(f"{path} line {line}: score {score!r} is not a finite number; rescore the model "
                             "(a NaN score often means a diverged checkpoint)")
        y.append(int(label))
        s.append(value)
        keys.append(row[at["key"]])
        if group_at is not None:
            groups.append(row[group_at].strip() or keys[-1])
    twice = sorted(k for k, n in Counter(keys).items() if n > 1)
    if twice:
        raise ValueError(f"{path}: {len(twice)} key(s) on more than one row (e.g. {twice[:3]}); keep one row per "
                         "case (a key twice would count its case twice)")
    if len(set(y)) < 2:
        what = f"all {len(y)} cases have label {y[0]}" if y else "no cases"
        raise ValueError(f"{path}: {what}; an AUC needs cases of both labels (0 and 1): score a split with both")
    return (np.asarray(y, dtype=np.int64), np.asarray(s, dtype=np.float64), keys,
            groups if group_at is not None else None)


def save_scores(path: str | os.PathLike[str], y: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray,
                keys: Sequence[str], groups: Sequence[object] | None = None) -> Path:
    """Write ``key,label,score`` rows (the CLI's input), with a ``group`` column (the patient of each
    case, what ``compare`` resamples) when ``groups`` is given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        if groups is None:
            w.writerow(["key", "label", "score"])
            w.writerows((k, int(lab), repr(float(s))) for k, lab, s in zip(keys, y, scores, strict=True))
        else:
            w.writerow(["key", "label", "score", "group"])
            w.writerows((k, int(lab), repr(float(s)), str(g))
                        for k, lab, s, g in zip(keys, y, scores, groups, strict=True))
    return path
