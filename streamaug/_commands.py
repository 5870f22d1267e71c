"""Shared argument checks of the commands, and how a user error ends one: ``error: <message>``, exit 2.

Each command checks its options before any work (a path it will write, a count, the device) and
catches :data:`USER_ERRORS` around the work; any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from streamaug.io.errors import SampleError, ShardError

__all__ = ["USER_ERRORS", "check_at_least", "check_device", "check_folder_to_write", "check_file_to_write",
           "check_region", "check_shards", "fail", "message"]

#: what bad input raises: ValueError (CheckpointError, PackError, XRayDecodeError), the stream's
#: ShardError and SampleError (RuntimeErrors), and OSError for paths.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, ShardError, SampleError, OSError)


def message(err: BaseException) -> str:
    """One line for ``err``: an OSError as ``<path>: <reason>``; for an error re-raised from a
    ``DataLoader`` worker (its message holds the worker's traceback), the original message."""
    if isinstance(err, OSError) and err.filename is not None:
        both = f"{err.filename} -> {err.filename2}" if err.filename2 is not None else f"{err.filename}"
        return f"{both}: {err.strerror or type(err).__name__}"
    text = str(err)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = re.sub(r"^[\w.]+: ", "", last.strip())
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(err).__name__


def fail(err: BaseException | str) -> int:
    """Print ``error: <message>`` to stderr; return the exit code 2."""
    print(f"error: {err if isinstance(err, str) else message(err)}", file=sys.stderr)
    return 2


def _nearest(path: Path) -> Path:
    """``path`` or its nearest existing ancestor."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _creatable(path: Path, option: str) -> None:
    """Refuse a path whose missing folders cannot be made: an ancestor is a file, or not writable."""
    base = _nearest(path.parent)
    if not base.is_dir():
        raise ValueError(f"{option} {path}: {base} is a file, not a folder; choose another {option}")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: no permission to write in {base}; choose another {option}")


def check_file_to_write(path: str | os.PathLike | None, option: str, *, make_folders: bool = True) -> None:
    """Refuse, before any work, a file the command would write at the end but could not.

    Args:
        path: the file (None: nothing to check).
        option: the option that named it, for the message.
        make_folders: the command creates missing folders above the file; False: they must exist.

    Raises:
        ValueError: ``path`` is a folder, or its folder is missing (without ``make_folders``), cannot
            be made or is not writable.
    """
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give the path of a file to write, e.g. inside it")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{option} {path}: no permission to write it; choose another {option}")
    if not make_folders and not path.parent.is_dir():
        raise ValueError(f"{option} {path}: no folder {path.parent}; create it first or choose another {option}")
    _creatable(path, option)


def check_folder_to_write(path: str | os.PathLike, option: str) -> None:
    """Refuse, before any work, an output folder that is a file or cannot be made.

    Raises:
        ValueError: ``path`` (or a folder above it) is a file, or cannot be written to.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file, not a folder; choose another {option}")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"{option} {path}: no permission to write in it; choose another {option}")
        return
    _creatable(path, option)


def check_at_least(value: float, low: float, option: str, what: str = "") -> None:
    """Refuse ``value < low`` naming ``option`` (``what``: what the option counts, for the message).

    Raises:
        ValueError: ``value`` is below ``low``.
    """
    if value < low:
        raise ValueError(f"{option} must be >= {low:g}{f' ({what})' if what else ''}, got {value:g}")


def check_device(device: str, option: str = "--device") -> None:
    """Refuse a torch device string that is malformed or not on this machine, before any work.

    Raises:
        ValueError: the message names the device and the fix (``--device cpu``).
    """
    from streamaug.models.devices import device_problem

    problem = device_problem(device)
    if problem:
        raise ValueError(f"{option} {device}: {problem}")


def check_shards(spec: str | os.PathLike | None, option: str) -> None:
    """Refuse a shard spec naming a path that is not there (URLs, brace patterns and globs pass).

    Raises:
        ValueError: no such folder or file.
    """
    from streamaug.io.opener import is_url

    text = None if spec is None else os.fspath(spec)
    if text is None or is_url(text) or any(c in text for c in "{*?[") or os.path.exists(text):
        return
    raise ValueError(f"{option} {text}: no such folder or file; give a folder packed by streamaug-pack (or its "
                     "manifest.json, or .tar shards)")


def check_region(spec: str | os.PathLike, split: str | None, region: str | None) -> None:
    """Refuse a ``--region`` that no image of ``--split`` has, by the packer's manifest beside the
    shards (shards without one are not checked here: the stream then says that nothing was selected).

    Raises:
        ValueError: the region is not in the split's ``regions`` counts.
        ShardError: ``spec`` matches no shard, or its manifest has no ``split``.
    """
    from streamaug.data.shardlist import expand_urls, find_manifest, load_manifest

    if not region:
        return
    manifest = find_manifest(expand_urls(spec, split)[0])
    if manifest is None:
        return
    splits = load_manifest(manifest)["splits"]
    regions = (splits.get(split) or (next(iter(splits.values())) if len(splits) == 1 else {})).get("regions") or {}
    if regions and region not in regions:
        raise ValueError(f"--region {region!r} has no image in --split {split!r} of {manifest.parent} (regions: "
                         f"{sorted(regions)}); pick one of those, or leave --region out")
