"""Stream counters shared by the DataLoader workers and the main process (a shared-memory array)."""
from __future__ import annotations

import multiprocessing
import warnings

#: seconds :meth:`Counters.add` waits for the counters' lock before counting without it
LOCK_WAIT_S = 10.0
STAT_NAMES = ("yielded", "skipped_samples", "bad_shards", "padded", "lost_samples")


class Counters:
    """The :attr:`streamaug.XRayShards.stats` counts (:data:`STAT_NAMES`), one shared-memory array.

    When the owning dataset is pickled outside of process start-up (e.g. ``copy.deepcopy``), the
    copy gets counters of its own.
    """

    def __init__(self) -> None:
        self._arr = multiprocessing.get_context().Array("q", len(STAT_NAMES))
        self._lock_lost = False

    def add(self, name: str, value: int = 1) -> None:
        """Add ``value`` to the count ``name``, under the array's lock (workers add at once).

        A worker killed while it held the lock (an out-of-memory kill) would hold it for ever: after
        :data:`LOCK_WAIT_S` the count is added without it, with a warning, rather than hang the stream.
        """
        lock = self._arr.get_lock()
        held = not self._lock_lost and lock.acquire(timeout=LOCK_WAIT_S)
        try:
            if not held and not self._lock_lost:
                self._lock_lost = True  # in this process from now on: one wait, not one per sample
                warnings.warn(f"the stream's counters were locked for {LOCK_WAIT_S:g} s (a DataLoader worker killed "
                              "while counting?); counting without the lock, so a count may be off", stacklevel=2)
            self._arr.get_obj()[STAT_NAMES.index(name)] += value
        finally:
            if held:
                lock.release()

    def as_dict(self) -> dict[str, int]:
        """``{name: count}`` as now (read without the lock, so a dead worker's lock cannot block it)."""
        return dict(zip(STAT_NAMES, self._arr.get_obj()[:]))

    def __getstate__(self) -> dict:
        from multiprocessing import context

        return {"arr": self._arr if context.get_spawning_popen() is not None else None}

    def __setstate__(self, state: dict) -> None:
        self._arr = state["arr"] if state["arr"] is not None else multiprocessing.get_context().Array(
            "q", len(STAT_NAMES))
        self._lock_lost = False
