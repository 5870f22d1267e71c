"""Commands and worker processes behind a stream: a ``pipe:`` command that stalls, never outputs or
fails is ended, timed out or reported, never left running or hanging the loader; a dead worker's
lock on the shared counters does not block the stream."""
from __future__ import annotations

import multiprocessing
import os
import time
import warnings
from pathlib import Path

import pytest
import torch
from shardgen import write_shards
from torch.utils.data import DataLoader

from streamaug.data import counters as counters_module
from streamaug.data.counters import Counters
from streamaug.io.opener import open_tar_stream


def running(marker: str) -> list[int]:
    """Pids of processes whose command line holds ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def gone(marker: str, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while running(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not running(marker)


@pytest.fixture()
def shard(tmp_path):
    (path,) = write_shards(tmp_path, n=10, shard_size=10, size=64, manifest=False)
    return path


def test_stopping_early_ends_a_stalled_command_at_once(shard):
    """Before: closing waited in webdataset's Pipe.close for the command to end by itself (up to 2 h),
    and a command of several processes outlived it."""
    marker = "sleep 31.25"
    fh = open_tar_stream(f"pipe:head -c 70000 {shard}; {marker}; cat {shard}")
    assert len(fh.read(10000)) == 10000
    t0 = time.monotonic()
    fh.close()
    assert time.monotonic() - t0 < 3 and gone(marker)


def test_a_command_without_output_times_out_naming_it():
    """Before: a read of a silent command blocked for ever."""
    marker = "sleep 32.5"
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=f"pipe:{marker}: no output for 0.5 s.*STREAMAUG_PIPE_TIMEOUT"):
        open_tar_stream(f"pipe:{marker}", timeout=0.5)
    assert time.monotonic() - t0 < 3 and gone(marker)


def test_compression_is_found_when_the_first_bytes_come_in_pieces(shard):
    """The review of the first fix: a read returns what the pipe holds, so a gzip or xz magic split
    over two writes read as a plain tar (TarHeaderError at byte 0)."""
    import gzip

    packed = shard.with_suffix(".tar.gz")
    packed.write_bytes(gzip.compress(shard.read_bytes()))
    with open_tar_stream(f"pipe:head -c 1 {packed}; sleep 0.2; tail -c +2 {packed}") as fh:
        assert fh.read() == shard.read_bytes()


@pytest.mark.parametrize("value", ["10m", "0", "-1", "nan"])
def test_a_bad_pipe_timeout_setting_names_the_variable(monkeypatch, value):
    monkeypatch.setenv("STREAMAUG_PIPE_TIMEOUT", value)
    with pytest.raises(ValueError, match=f"STREAMAUG_PIPE_TIMEOUT='{value}': give the seconds"):
        open_tar_stream("pipe:true")


def test_a_failing_command_is_reported_and_leaves_no_descriptor_open():
    """Before: a failure found while checking the first bytes left the pipe's descriptor open for as
    long as the error was kept."""
    before = len(os.listdir("/proc/self/fd"))
    errors = []
    for _ in range(5):
        with pytest.raises(OSError, match="exit 3") as caught:
            open_tar_stream("pipe:exit 3")
        errors.append(caught.value)  # kept, as a retry log would
    assert len(os.listdir("/proc/self/fd")) == before


class _Chunks(torch.utils.data.IterableDataset):
    """The bytes of a command's output, a chunk at a time."""

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def __iter__(self):
        with open_tar_stream(self.spec, decompress=False) as fh:
            while chunk := fh.read(4096):
                yield chunk


def test_a_worker_stuck_in_a_stalled_command_leaves_no_command_behind(shard):
    """Before: the loader ended such a worker with SIGTERM and its command ran on, two more each epoch."""
    marker = "sleep 33.75"
    for _ in DataLoader(_Chunks(f"pipe:head -c 5000 {shard}; {marker}; cat {shard}"), batch_size=None,
                        num_workers=1):
        break  # the worker is blocked reading the stalled command now
    assert gone(marker, 10)


def _die_holding(counts: Counters) -> None:
    counts._arr.get_lock().acquire()
    os._exit(9)


def test_a_lock_left_held_does_not_block_the_counters(monkeypatch):
    """Before: a worker killed inside Counters.add held the lock for ever; stats and every later add
    blocked (the next epoch's first batch never came)."""
    monkeypatch.setattr(counters_module, "LOCK_WAIT_S", 0.2)
    counts = Counters()
    holder = multiprocessing.get_context("fork").Process(target=_die_holding, args=(counts,))
    holder.start()
    holder.join()  # it took the lock and was killed holding it
    assert counts.as_dict()["yielded"] == 0
    with pytest.warns(UserWarning, match="locked for 0.2 s"):
        counts.add("yielded")
    t0 = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning, and one wait, per process
        for _ in range(5):
            counts.add("yielded")
    assert time.monotonic() - t0 < 0.1 and counts.as_dict()["yielded"] == 6
