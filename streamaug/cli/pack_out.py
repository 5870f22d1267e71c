"""The packer's output folder: what ``--out`` may hold, and the atomic swap of a finished pack into it.

``--out`` must be absent or empty, unless ``--overwrite``: then it may hold exactly one pack, at its
top level: ``manifest.json`` (``manifest.json.tmp`` too) and the shards that manifest lists, in the
split folders that hold them. Anything else (another file, a link, a folder the manifest does not
list, a pack in a subfolder, ``.tar`` files no manifest lists) is refused, never deleted.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path, PurePosixPath

from streamaug.cli.pack_csv import PackError

__all__ = ["check_out", "pack_members", "replace_out", "sibling"]

_TOP = ("manifest.json", "manifest.json.tmp")


def pack_members(out: Path) -> tuple[set[str], set[str], str]:
    """``(files, folders, problem)``: the pack at the top of ``out`` as POSIX paths relative to
    ``out``, or no members and why (no manifest.json, or one that is not a pack manifest)."""
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        names = [entry["name"] for split in manifest["splits"].values() for entry in split["shards"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        if not (out / "manifest.json").exists():
            return set(), set(), "has no manifest.json"
        return set(), set(), f"has a manifest.json that is not a pack manifest ({type(err).__name__}: {err})"
    files, folders = set(_TOP), set()
    for name in names:
        rel = PurePosixPath(str(name))
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            continue  # never a member: nothing outside out is replaced
        files.add(str(rel))
        folders.update(str(p) for p in rel.parents if str(p) != ".")
    return files, folders, ""


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse, before anything is written, an ``out`` that a finished pack may not replace.

    Raises:
        PackError: ``out`` is a file or a link, holds anything without ``overwrite``, or, with it,
            holds anything but the pack at its top level (see the module docstring).
    """
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise PackError(f"--out {out} is a file or a symbolic link, not a folder; choose another --out")
    held = [p for p in out.rglob("*") if p.is_symlink() or not p.is_dir()] if out.exists() else []
    if not held:  # absent, or empty folders only: nothing is lost
        return
    if not overwrite:
        what = "a pack (manifest.json)" if (out / "manifest.json").exists() else f"{len(held)} files"
        raise PackError(f"{out} already holds {what}; pass --overwrite or choose another --out")
    files, folders, problem = pack_members(out)
    foreign: list[str] = []
    for top, dirs, names in os.walk(out):
        here = Path(top).relative_to(out).as_posix()
        for d in list(dirs):
            rel = d if here == "." else f"{here}/{d}"
            if os.path.islink(os.path.join(top, d)) or rel not in folders:
                foreign.append(rel + "/")
                dirs.remove(d)  # refused whole: what it holds is not listed one by one
        for n in names:
            rel = n if here == "." else f"{here}/{n}"
            if os.path.islink(os.path.join(top, n)) or rel not in files:
                foreign.append(rel)
    if foreign:
        foreign.sort()
        raise PackError(f"--overwrite replaces only a pack at the top of --out (manifest.json and the shards it "
                        f"lists), and {out} {problem or 'holds more than a pack'}: {foreign[:5]}"
                        f"{' ...' if len(foreign) > 5 else ''}; move those or choose another --out")


def sibling(out: Path, what: str) -> Path:
    """A fresh hidden name beside ``out``: ``.<name>.<what>-<random>`` (same file system: renames are atomic)."""
    return out.parent / f".{out.name}.{what}-{secrets.token_hex(4)}"


def replace_out(out: Path, work: Path) -> None:
    """Move the finished folder ``work`` to ``out``; a previous ``out`` is deleted only after that."""
    if not out.exists():
        os.replace(work, out)
        return
    old = sibling(out, "old")
    os.replace(out, old)
    try:
        os.replace(work, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old)
