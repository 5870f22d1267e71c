"""A shard URL's command, watched: ``pipe:CMD``, or the ``curl`` webdataset runs for ``http(s)://``.

Webdataset's :class:`~webdataset.gopen.Pipe` runs the command; :class:`CommandSource` reads it as a
raw stream for :func:`streamaug.io.opener.open_tar_stream`, and:

* waits at most :func:`pipe_timeout` seconds (``STREAMAUG_PIPE_TIMEOUT``, default 600) for output,
  then raises :class:`TimeoutError` naming the command, so a stalled download fails instead of
  hanging the loader;
* checks the command's exit status at the end of its output (webdataset's message, with the status);
* when closed before the end (a consumer that stops early, Ctrl-C, an error), ends the command, a
  ``pipe:`` command with every process it started (it runs in a session of its own), instead of
  waiting for it, up to two hours, in ``Pipe.close``;
* in a DataLoader worker, ends its commands when the loader ends the worker with SIGTERM (as it
  does with a worker stuck in a read), then dies of that SIGTERM as before.
"""
from __future__ import annotations

import contextlib
import io
import os
import select
import signal
import subprocess
import weakref
from typing import Any

__all__ = ["CommandSource", "PIPE_TIMEOUT_S", "open_url", "pipe_timeout"]

#: default seconds a URL's command may go without output before a read raises
PIPE_TIMEOUT_S = 600.0
_OPEN: weakref.WeakSet[CommandSource] = weakref.WeakSet()


def pipe_timeout() -> float | None:
    """Seconds from ``STREAMAUG_PIPE_TIMEOUT`` (default :data:`PIPE_TIMEOUT_S`); None for ``inf``.

    Raises:
        ValueError: a value that is not a number above 0, naming the variable.
    """
    text = os.environ.get("STREAMAUG_PIPE_TIMEOUT")
    if text is None:
        return PIPE_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError(f"STREAMAUG_PIPE_TIMEOUT={text!r}: give the seconds a shard's command may go without "
                         "output, a number above 0 (inf: wait for ever)")
    return None if value == float("inf") else value


class CommandSource(io.RawIOBase):
    """A raw, read-only, non-seekable view of a webdataset ``Pipe`` (``proc``, ``stream``), see the module."""

    def __init__(self, pipe: Any, spec: str, *, timeout: float | None, session: bool = False) -> None:
        super().__init__()
        self._pipe, self._spec, self._timeout, self._session = pipe, spec, timeout, session
        self._proc: subprocess.Popen = pipe.proc
        self._fd = pipe.stream.fileno()  # read directly: nothing is buffered where poll cannot see it
        self._poll = select.poll()  # not select.select: it refuses descriptors >= 1024
        self._poll.register(self._fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        self._ended, self._first = False, True
        _OPEN.add(self)

    def readable(self) -> bool:
        return True

    def _read(self, view: memoryview) -> int:
        if not self._poll.poll(None if self._timeout is None else self._timeout * 1000):
            raise TimeoutError(f"{self._spec}: no output for {self._timeout:g} s; the command or download stalled. "
                               "Check it in a shell, or set STREAMAUG_PIPE_TIMEOUT (seconds) higher")
        data = os.read(self._fd, len(view))
        view[: len(data)] = data
        if not data:
            self._ended = True
            self._pipe.wait_for_child()  # raises on a failed command, with its exit status
        return len(data)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = self._read(view)
        if self._first:  # the first bytes name the compression: a short read must not cut them
            self._first = False
            while 0 < n < min(6, len(view)):
                got = self._read(view[n:])
                if not got:
                    break
                n += got
        return n

    def stop(self) -> None:
        """Send the command (its process group for a ``pipe:``) SIGTERM, without waiting."""
        self._signal(signal.SIGTERM)

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.killpg(self._proc.pid, signum) if self._session else self._proc.send_signal(signum)

    def close(self) -> None:
        if self.closed:
            return
        _OPEN.discard(self)
        try:
            if self._ended:
                self._pipe.ignore_errors = True  # its exit status was checked at the end of its output
            elif self._proc.poll() is None:
                self._pipe.ignore_errors = True  # stopped by us: its exit status says nothing
                self.stop()
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
            self._pipe.close()  # a command that ended on its own before its output did: its status is checked
        finally:
            super().close()


def _stop_commands_and_die(signum: int, frame: Any) -> None:
    for source in list(_OPEN):
        source.stop()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _stop_commands_on_sigterm_in_workers() -> None:
    """In a DataLoader worker's main thread, end the open commands on SIGTERM before dying of it (torch's
    own handler, which Python cannot see or call, would leave them running)."""
    import threading

    from torch.utils.data import get_worker_info

    if (get_worker_info() is not None and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is not _stop_commands_and_die):
        signal.signal(signal.SIGTERM, _stop_commands_and_die)


def open_url(spec: str, timeout: float | None) -> Any:
    """A raw stream of the URL ``spec``: a ``pipe:CMD`` as webdataset runs it (a shell, exit 141 ignored)
    but in a session of its own; other URLs through :func:`webdataset.gopen.gopen` (a command for
    ``http(s)://``: a :class:`CommandSource` too; otherwise what ``gopen`` returns)."""
    from webdataset import utils
    from webdataset.gopen import Pipe, gopen

    _stop_commands_on_sigterm_in_workers()
    if spec.startswith("pipe:") and not utils.enforce_security:
        pipe = Pipe(spec[5:], mode="rb", shell=True, bufsize=8192, ignore_status=[141], start_new_session=True)
        return CommandSource(pipe, spec, timeout=timeout, session=True)
    opened = gopen(spec, "rb")
    if hasattr(opened, "proc") and hasattr(opened, "stream"):
        return CommandSource(opened, spec, timeout=timeout)
    return _Reader(opened)


class _Reader(io.RawIOBase):
    """A raw view of an object with ``read(n)`` (what ``gopen`` returns for other schemes)."""

    def __init__(self, source: Any) -> None:
        super().__init__()
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._source.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._source.close()
            finally:
                super().close()
