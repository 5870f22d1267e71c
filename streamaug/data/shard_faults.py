"""The messages for a shard that cannot be read (:mod:`streamaug.data.shardlist`): each names the
shard, says what went wrong (a missing file, a ``pipe:`` command that failed, a link member, damage)
and gives the fix, so a failed command is not reported as a truncated tar; and the manifest check
that finds a shard listed twice under two names (:func:`mark_copies`).
"""
from __future__ import annotations

import os
import re

from streamaug.io.tar import TarLinkError

__all__ = ["damage_text", "listing_fault", "mark_copies", "pipe_failure", "read_fault"]

#: webdataset's error for a pipe whose command exited non-zero (``(args, kw): exit N (read) {...}``),
#: or this module's rewording of it (:func:`damage_text`)
_PIPE_EXIT = re.compile(r": exit (-?\d+) \(read\)|failed with exit status (-?\d+)")
_SKIP_REST = "or pass on_error='skip' to count the samples before it and skip the rest"


def pipe_failure(shard: str | os.PathLike, text: str) -> str | None:
    """What to say when ``shard`` is a ``pipe:CMD`` URL whose command failed (``text``: the error),
    with its exit status; None for anything else.

    >>> pipe_failure("pipe:false", "OSError: (('false',), {'shell': True}): exit 1 (read) {}")
    "its command 'false' failed with exit status 1"
    >>> pipe_failure("/data/a.tar", "TarTruncated: unexpected end of data") is None
    True
    """
    spec = os.fspath(shard)
    found = _PIPE_EXIT.search(text) if spec.startswith("pipe:") else None
    if found is None:
        return None
    return f"its command {spec[5:]!r} failed with exit status {found.group(1) or found.group(2)}"


def damage_text(shard: str | os.PathLike, err: BaseException) -> str:
    """``"ErrorType: message"`` for what a scan of ``shard`` found (a failed command said as such)."""
    return f"{type(err).__name__}: {pipe_failure(shard, str(err)) or err}"


def listing_fault(shard: str | os.PathLike, damage: str) -> str:
    """The message for a shard whose listing scan failed with ``damage`` (``"ErrorType: message"``)."""
    if damage.startswith("FileNotFoundError"):
        return (f"cannot list shard {os.fspath(shard)!r}: {damage}. The file does not exist: fix the path or restore "
                "it, or pass on_error='skip' to count it as a bad shard.")
    failed = pipe_failure(shard, damage)
    if failed is not None:
        return (f"cannot list shard {shard}: {failed}. Run the command in a shell to see why and fix it, "
                f"{_SKIP_REST}.")
    if damage.startswith(f"{TarLinkError.__name__}:"):
        return f"cannot list shard {shard}: {damage}; {_SKIP_REST}."
    return (f"cannot list shard {shard}: {damage}. The file is truncated or not a tar; re-pack it, or pass "
            "on_error='skip' to count the samples before the damage and skip the rest.")


def read_fault(shard: str, err: BaseException, at: str) -> str:
    """The message for a shard whose reading failed with ``err`` (``at``: where, e.g. after which key),
    past a missing file (reported by the caller)."""
    failed = pipe_failure(shard, str(err))
    if failed is not None:
        return (f"shard {shard}: {failed}{at}. Run the command in a shell to see why and fix it, or pass "
                "on_error='skip' to count and skip the rest.")
    if isinstance(err, TimeoutError):
        return f"shard {shard}{at}: {err}; or pass on_error='skip' to count and skip the rest."
    if isinstance(err, TarLinkError):
        return f"shard {shard} holds a link member{at}: {err}; or pass on_error='skip' to count and skip the rest."
    return (f"shard {shard} is truncated or corrupt{at}: {err}. Re-pack it, or pass "
            "on_error='skip' to count and skip the damaged part.")


def mark_copies(manifest: str | os.PathLike, entries: dict[str, dict]) -> dict[str, dict]:
    """Give each manifest entry (``{resolved path: {"sha256", ...}}``, in manifest order) whose sha256
    an earlier entry has a ``copy`` message naming both shards: a shard copied under a new name,
    whose samples would be read twice an epoch (or leak across splits). Compares listed hashes only."""
    first: dict[str, str] = {}
    for path, entry in entries.items():
        sha = entry.get("sha256")
        if isinstance(sha, str) and sha and first.setdefault(sha, path) != path:
            entry["copy"] = (f"manifest {manifest} lists it with the same sha256 ({sha[:16]}...) as shard "
                             f"{first[sha]}: it is a copy, whose samples would be read twice. Delete the copy and "
                             "its manifest entry, or re-run `streamaug-pack`")
    return entries
