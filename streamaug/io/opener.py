"""Opening a shard for sequential reading: local files, ``http(s)://`` and ``pipe:CMD`` URLs (through
webdataset's own opener, :func:`webdataset.gopen.gopen`, and its :class:`~webdataset.gopen.Pipe`),
gzip / bzip2 / xz found by their magic bytes, and an optional hasher fed the bytes as stored.
:func:`open_tar_stream` is the one place a shard is opened; :mod:`streamaug.io.tar` reads the
members of what it returns.

A URL's command (``pipe:CMD``, or the ``curl`` webdataset runs for ``http(s)://``) is watched:

* a read that waits longer than :data:`PIPE_TIMEOUT_S` seconds (``STREAMAUG_PIPE_TIMEOUT``) for
  output raises :class:`TimeoutError` naming the command, so a stalled download fails instead of
  hanging the loader;
* closing the stream before the end (a consumer that stops early, Ctrl-C, an error) ends the
  command (a ``pipe:`` command's whole process group: it runs in a session of its own) instead of
  waiting for it, up to two hours, in webdataset's ``Pipe.close``; in a DataLoader worker, the
  SIGTERM with which the loader ends a worker stuck in a read closes the streams too.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import re
import select
import signal
import subprocess
from typing import Any, BinaryIO

#: seconds a URL's command may go without output before a read raises (``STREAMAUG_PIPE_TIMEOUT``)
PIPE_TIMEOUT_S = float(os.environ.get("STREAMAUG_PIPE_TIMEOUT", 600))

_DECOMPRESSORS: tuple[tuple[bytes, Any], ...] = (
    (b"\x1f\x8b", lambda fh: gzip.GzipFile(fileobj=fh, mode="rb")),
    (b"BZh", lambda fh: bz2.BZ2File(fh, "rb")),
    (b"\xfd7zXZ", lambda fh: lzma.LZMAFile(fh, "rb")))  # noqa: SIM115 - closed by _Decompressed


_URL = re.compile(r"^(pipe:|[A-Za-z][A-Za-z0-9+.-]*://)")


def is_url(spec: str | os.PathLike) -> bool:
    """True for ``pipe:CMD`` and ``scheme://...`` shard specs (read through webdataset's opener).

    >>> [is_url(s) for s in ("pipe:cat a.tar", "http://host/a.tar", "/data/a.tar", "a.tar")]
    [True, True, False, False]
    """
    return bool(_URL.match(os.fspath(spec)))


class _Source(io.RawIOBase):
    """A raw, read-only, non-seekable view of what :func:`webdataset.gopen.gopen` returns.

    For a command (webdataset's ``Pipe``: ``proc`` and ``stream``) each read waits at most
    ``timeout`` seconds for output, the exit status is checked at the end of its output, and
    closing before the end ends the command (its process group when ``session``).
    """

    def __init__(self, source: Any, spec: str, *, timeout: float | None = None, session: bool = False) -> None:
        super().__init__()
        self._source, self._spec, self._timeout, self._session = source, spec, timeout, session
        self._proc = getattr(source, "proc", None)
        self._fd = source.stream.fileno() if self._proc is not None else None
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._fd is None:  # not a command: the source's own read
            data = self._source.read(len(buffer))
        else:  # the pipe's descriptor itself: nothing is buffered where select cannot see it
            if self._timeout is not None and not select.select([self._fd], [], [], self._timeout)[0]:
                raise TimeoutError(f"{self._spec}: no output for {self._timeout:g} s; the command or download "
                                   "stalled. Check it in a shell, or set STREAMAUG_PIPE_TIMEOUT (seconds) higher")
            data = os.read(self._fd, len(buffer))
            if not data:
                self._ended = True
                self._source.wait_for_child()  # raises on a failed command, with its exit status
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._proc is not None and self._ended:
                self._source.ignore_errors = True  # its exit status was checked at the end of its output
            elif self._proc is not None and self._proc.poll() is None:
                self._source.ignore_errors = True  # stopped by us: its exit status says nothing
                _end(self._proc, self._session)
            self._source.close()  # a command that exited on its own before the end: its status is checked
        finally:
            super().close()


def _end(proc: subprocess.Popen, session: bool) -> None:
    """Terminate ``proc`` (its process group when it leads a session of its own), killing it after 5 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM) if session else proc.terminate()
        proc.wait(5)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL) if session else proc.kill()
        proc.wait()


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _clean_exit_in_workers() -> None:
    """In a DataLoader worker, turn SIGTERM (how the loader ends a worker stuck in a read) into
    ``SystemExit``, so the open streams close and end their commands instead of leaving them running."""
    import threading

    from torch.utils.data import get_worker_info

    if (get_worker_info() is not None and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL):
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _open_url(spec: str, timeout: float | None) -> _Source:
    """A ``pipe:CMD`` as webdataset runs it (a shell, exit 141 ignored) but in a session of its own,
    so that closing early can end every process it started; other URLs through ``gopen``."""
    from webdataset import utils
    from webdataset.gopen import Pipe, gopen

    _clean_exit_in_workers()
    if spec.startswith("pipe:") and not utils.enforce_security:
        pipe = Pipe(spec[5:], mode="rb", shell=True, bufsize=8192, ignore_status=[141], start_new_session=True)
        return _Source(pipe, spec, timeout=timeout, session=True)
    return _Source(gopen(spec, "rb"), spec, timeout=timeout)


class _HashingReader(io.RawIOBase):
    """A raw file that feeds every byte read from it to ``hasher`` (``hashlib``-like)."""

    def __init__(self, raw: BinaryIO, hasher: Any) -> None:
        super().__init__()
        self._raw, self._hasher = raw, hasher

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)
        if n:
            self._hasher.update(memoryview(buffer)[:n])
        return n

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


class _Decompressed:
    """A decompressing stream that also closes the file under it (read-only, not seekable)."""

    def __init__(self, stream: Any, under: BinaryIO) -> None:
        self._stream, self._under = stream, under
        self.read = stream.read

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._under.close()

    def __enter__(self) -> _Decompressed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_tar_stream(path: str | os.PathLike, *, decompress: bool = True, hasher: Any = None,
                    timeout: float | None = None) -> BinaryIO:
    """Open a shard for sequential reading, decompressing gzip, bzip2 or xz by their magic bytes.

    This is the one place a shard is opened.

    Args:
        path: the shard: a local path, or an ``http(s)://`` / ``pipe:CMD`` URL (see :func:`is_url`).
        decompress: False: the file's bytes as stored (e.g. to hash them).
        hasher: a ``hashlib`` object fed every byte read from the file as stored (before
            decompression). Read the stream to its end for the digest of the whole file.
        timeout: seconds a URL's command may go without output before a read raises
            :class:`TimeoutError`; None: :data:`PIPE_TIMEOUT_S`; ``math.inf``: wait forever.

    Returns:
        A binary stream; closing it closes the file, decompressor or pipe behind it.
    """
    spec = os.fspath(path)
    if timeout is None:
        timeout = PIPE_TIMEOUT_S
    raw: Any = (_open_url(spec, None if timeout == float("inf") else timeout) if is_url(spec)
                else open(spec, "rb", buffering=0))  # noqa: SIM115 - returned to the caller
    if hasher is not None:
        raw = _HashingReader(raw, hasher)
    fh: BinaryIO = io.BufferedReader(raw, 1 << 16)  # type: ignore[assignment]
    if not decompress:
        return fh
    try:
        magic = fh.peek(6)[:6]  # type: ignore[attr-defined]
    except BaseException:  # e.g. a command that failed at once: the caller never gets fh to close
        fh.close()
        raise
    for prefix, decompressor in _DECOMPRESSORS:
        if magic.startswith(prefix):
            return _Decompressed(decompressor(fh), fh)  # type: ignore[return-value]
    return fh
