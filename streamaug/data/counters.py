"""Stream counters shared by the DataLoader workers and the main process (a shared-memory array)."""
from __future__ import annotations

import multiprocessing

STAT_NAMES = ("yielded", "skipped_samples", "bad_shards", "padded", "lost_samples")


class Counters:
    """The :attr:`streamaug.XRayShards.stats` counts (:data:`STAT_NAMES`), one shared-memory array.

    When the owning dataset is pickled outside of process start-up (e.g. ``copy.deepcopy``), the
    copy gets counters of its own.
    """

    def __init__(self) -> None:
        self._arr = multiprocessing.get_context().Array("q", len(STAT_NAMES))

    def add(self, name: str, value: int = 1) -> None:
        """Add ``value`` to the count ``name`` (under the array's lock: workers add at once)."""
        with self._arr.get_lock():
            self._arr[STAT_NAMES.index(name)] += value

    def as_dict(self) -> dict[str, int]:
        """``{name: count}`` as now."""
        return dict(zip(STAT_NAMES, self._arr[:]))

    def __getstate__(self) -> dict:
        from multiprocessing import context

        return {"arr": self._arr if context.get_spawning_popen() is not None else None}

    def __setstate__(self, state: dict) -> None:
        self._arr = state["arr"] if state["arr"] is not None else multiprocessing.get_context().Array(
            "q", len(STAT_NAMES))
