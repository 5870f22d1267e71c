"""XRayShards resume with torchdata's StatefulDataLoader: a cut anywhere in an epoch, before some
worker has yielded, and at an epoch's end followed by the next epoch."""
from __future__ import annotations

import pytest
from shardgen import write_shards

from streamaug import XRayShards, collate_xray


def _loader(folder, epoch: int, num_workers: int):
    from torchdata.stateful_dataloader import StatefulDataLoader

    ds = XRayShards(folder, seed=5, buffer_size=4)
    ds.set_epoch(epoch)
    return ds, StatefulDataLoader(ds, batch_size=3, num_workers=num_workers, collate_fn=collate_xray)


@pytest.mark.parametrize("num_workers, cut", [(0, 1), (0, 5), (2, 1), (2, 5)])
def test_resume_with_stateful_dataloader_is_exact(tmp_path, num_workers, cut):
    """``cut=1`` with two workers: the second worker has not yielded when the state is taken. Its state
    said epoch 0 (set_epoch did not reach it), so the resumed run replayed epoch 0's plan there."""
    write_shards(tmp_path, n=40, shard_size=5)
    full = [k for b in _loader(tmp_path, 2, num_workers)[1] for k in b["key"]]
    _, loader = _loader(tmp_path, 2, num_workers)
    it = iter(loader)
    head = [k for _ in range(cut) for k in next(it)["key"]]
    state = loader.state_dict()
    del it, loader
    _, resumed = _loader(tmp_path, 2, num_workers)
    resumed.load_state_dict(state)
    tail = [k for b in resumed for k in b["key"]]
    assert head + tail == full
    assert sorted(full) == [f"k{i:06d}" for i in range(40)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_finished_epochs_state_resumed_into_the_next_epoch_starts_it_afresh(tmp_path, num_workers):
    """The loop of the module docstring after a restart: the loader applies the saved state lazily, at
    iter(), after set_epoch(3). With no workers the finished epoch 2 was resumed instead: 0 samples."""
    write_shards(tmp_path, n=40, shard_size=5)
    epoch3 = [k for b in _loader(tmp_path, 3, num_workers)[1] for k in b["key"]]
    _, loader = _loader(tmp_path, 2, num_workers)
    assert len([k for b in loader for k in b["key"]]) == 40
    state = loader.state_dict()
    ds, resumed = _loader(tmp_path, 2, num_workers)
    resumed.load_state_dict(state)
    ds.set_epoch(3)
    assert [k for b in resumed for k in b["key"]] == epoch3


def test_state_dict_before_iterating_is_the_selected_epochs_start(tmp_path):
    write_shards(tmp_path, n=10, shard_size=5)
    ds = XRayShards(tmp_path, seed=1)
    ds.set_epoch(2)
    assert {k: v for k, v in ds.state_dict().items() if k != "stats"} == {"epoch": 2, "consumed": 0, "yielded": 0}
    ds.load_state_dict({"epoch": 2, "consumed": 4, "yielded": 4})
    ds.set_epoch(2)  # the same epoch keeps the pending resume
    assert len(list(ds)) == 6


def test_set_epoch_to_another_epoch_drops_a_pending_mid_epoch_resume(tmp_path):
    """A state saved part-way through epoch 2, loaded, then set_epoch(3): epoch 3 is read whole, from its
    start, not as the rest of epoch 2."""
    write_shards(tmp_path, n=20, shard_size=5)
    ds = XRayShards(tmp_path, seed=1, buffer_size=4)
    ds.set_epoch(2)
    it = iter(ds)
    head = [next(it)["key"] for _ in range(7)]
    state = ds.state_dict()
    del it
    assert (state["epoch"], state["yielded"]) == (2, 7) and len(set(head)) == 7
    fresh = XRayShards(tmp_path, seed=1, buffer_size=4)
    fresh.set_epoch(3)
    epoch3 = [s["key"] for s in fresh]
    resumed = XRayShards(tmp_path, seed=1, buffer_size=4)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)
    assert [s["key"] for s in resumed] == epoch3 and len(epoch3) == 20
