"""XRayShards: reading, rank/worker split, seeding, resize, collate (damaged shards: test_stream_damage.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from functools import partial

import pytest
import torch
from shardgen import keys_of, loader_keys, write_shards
from torch.utils.data import DataLoader

from streamaug import XRayShards, collate_xray
from streamaug.data.plan import plan_epoch
from streamaug.data.shardlist import ShardError


def test_reads_every_sample_once_with_fields(tmp_path):
    write_shards(tmp_path, n=10, shard_size=4)
    samples = list(XRayShards(tmp_path, shuffle=False))
    assert keys_of(samples) == [f"k{i:06d}" for i in range(10)]
    s0, s1 = samples[0], samples[1]
    assert s0["image"].shape == (1, 16, 16) and s0["image"].dtype == torch.float32
    assert abs(float(s0["image"][0, 0, 0]) - 0 / 255) < 1e-6 and abs(float(s1["image"][0, 0, 0]) - 1 / 255) < 1e-6
    assert s0["label"] == 1 and s1["label"] == 0
    assert s0["boxes"].tolist() == [[2, 3, 9, 10]] and s1["boxes"].shape == (0, 4)
    assert s0["meta"]["region"] == "lower_limb" and s0["meta"]["shard"].endswith("t-000000.tar")


def test_resize_scales_boxes(tmp_path):
    write_shards(tmp_path, n=4, shard_size=4)
    s = next(iter(XRayShards(tmp_path, shuffle=False, resize=32)))
    assert s["image"].shape == (1, 32, 32)
    assert s["boxes"].tolist() == [[4, 6, 18, 20]]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_workers_split_without_loss_or_duplicates(tmp_path, num_workers):
    write_shards(tmp_path, n=23, shard_size=5)
    keys = loader_keys(XRayShards(tmp_path, seed=3), num_workers)
    assert sorted(keys) == [f"k{i:06d}" for i in range(23)]


def test_ranks_get_equal_counts_and_cover_everything(tmp_path, monkeypatch):
    write_shards(tmp_path, n=23, shard_size=5)  # shards of 5,5,5,5,3 over 2 ranks
    per_rank = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        ds = XRayShards(tmp_path, seed=1)
        per_rank.append(loader_keys(ds, num_workers=2))
        assert ds.samples_per_rank() == len(per_rank[-1])
        unequal = XRayShards(tmp_path, seed=1, equalize="none")  # each rank its own count (was rank 0's)
        assert unequal.samples_per_rank(num_workers=2) == len(loader_keys(unequal, num_workers=2))
    assert len(per_rank[0]) == len(per_rank[1])
    union = Counter(per_rank[0] + per_rank[1])
    assert set(union) == {f"k{i:06d}" for i in range(23)}  # nothing lost
    repeats = sum(union.values()) - 23
    assert repeats == len(per_rank[0]) * 2 - 23 <= 5  # only padding repeats, at most one shard's worth


def test_plan_balances_and_pads():
    plans = plan_epoch([5, 5, 5, 5, 3], world=2, num_workers=2, seed=0, epoch=0, shuffle=True)
    quotas = [sum(p.quota for p in rank) for rank in plans]
    naturals = [sum(p.natural for p in rank) for rank in plans]
    assert quotas[0] == quotas[1] == max(naturals)
    assert sorted(i for rank in plans for p in rank for i in p.shards) == [0, 1, 2, 3, 4]


def test_too_few_shards_raises_clearly(tmp_path):
    write_shards(tmp_path, n=6, shard_size=6)
    with pytest.raises(ShardError, match="smaller --shard-size"):
        loader_keys(XRayShards(tmp_path), num_workers=2)


def test_shuffle_is_seeded_by_seed_and_epoch(tmp_path):
    write_shards(tmp_path, n=30, shard_size=6)
    ds = XRayShards(tmp_path, seed=7, buffer_size=8)
    first = keys_of(ds)
    assert keys_of(ds) == first  # same epoch replays
    ds.set_epoch(1)
    second = keys_of(ds)
    assert second != first and sorted(second) == sorted(first)
    assert keys_of(XRayShards(tmp_path, seed=8, buffer_size=8)) != first


def test_resume_at_the_end_of_an_epoch_yields_nothing_and_loses_nothing(tmp_path):
    write_shards(tmp_path, n=10, shard_size=5)
    ds = XRayShards(tmp_path, seed=2)
    assert len(keys_of(ds)) == 10
    state = ds.state_dict()
    again = XRayShards(tmp_path, seed=2)
    again.load_state_dict(state)
    assert keys_of(again) == [] and again.stats["lost_samples"] == 0 and again.stats["yielded"] == 0



def test_resize_updates_the_reader_meta():
    from streamaug.data.decode import resize_sample

    sample = {"image": torch.rand(1, 40, 20), "boxes": torch.zeros(0, 4),
              "meta": {"reader": {"size": (40, 20), "pixel_spacing": (0.1, 0.2)}}}
    reader = resize_sample(sample, (20, 40))["meta"]["reader"]
    assert reader["size"] == (20, 40) and reader["resized_from"] == (40, 20)
    assert reader["pixel_spacing"] == pytest.approx((0.2, 0.1))  # mm per pixel: coarser rows, finer columns


def test_a_resized_mask_stays_on_its_box_and_image():
    """Before: the mask was resized by "nearest" (each block's top-left pixel) while the image is
    centre-aligned: the mask sat half an output pixel right of and below its box."""
    from streamaug.data.decode import resize_sample

    image, mask = torch.zeros(1, 64, 64), torch.zeros(1, 64, 64)
    image[:, 17:31, 13:27] = 1  # a box not on the 4-pixel grid of the 64 -> 16 resize
    mask[:, 17:31, 13:27] = 1
    out = resize_sample({"image": image, "mask": mask, "boxes": torch.tensor([[13.0, 17.0, 27.0, 31.0]])}, (16, 16))
    cols = torch.arange(16, dtype=torch.float32) + 0.5  # pixel centres
    centre = lambda m: float((m.sum(1)[0] * cols).sum() / m.sum())  # noqa: E731 - x centroid
    box_x = float(out["boxes"][0, [0, 2]].mean())
    assert centre(out["mask"]) == pytest.approx(box_x) == pytest.approx(centre(out["image"]))


def test_resize_updates_size_in_streamed_meta(tmp_path):
    write_shards(tmp_path, n=4, shard_size=4)
    s = next(iter(XRayShards(tmp_path, shuffle=False, resize=32)))
    assert s["meta"]["reader"]["size"] == (32, 32) and s["meta"]["reader"]["pixel_spacing"] is None


def test_shard_json_is_scanned_once(tmp_path, monkeypatch):
    from streamaug.data import select as select_module
    from streamaug.data import shardlist

    write_shards(tmp_path, n=12, shard_size=4, manifest=False)
    calls = Counter()
    real = shardlist._scan
    monkeypatch.setattr(shardlist, "_scan", lambda shard, metadata: calls.update([(shard, metadata)]) or
                        real(shard, metadata))
    shardlist._scan_cached.cache_clear()
    select, _ = select_module.rare_positive_select(str(tmp_path), None, "lower_limb", 0.5, seed=0)  # the counts
    select, counts = select_module.rare_positive_select(str(tmp_path), None, "lower_limb", 0.5, seed=0)  # the select
    ds = XRayShards(tmp_path, shuffle=False, select=select)
    assert sum(ds.counts) == len(keys_of(ds)) == counts["positives"] + counts["normals"]
    assert set(calls.values()) == {1} and len(calls) == 3  # each shard's JSON once, no header-only scan


def test_resampled_is_unbounded_and_epoch_length_is_exact(tmp_path):
    write_shards(tmp_path, n=6, shard_size=3)
    it = iter(XRayShards(tmp_path, resampled=True))
    assert len([next(it) for _ in range(50)]) == 50
    assert len(loader_keys(XRayShards(tmp_path, resampled=True, epoch_length=11), num_workers=2)) == 11


def test_collate_stacks_images_and_lists_the_rest(tmp_path):
    write_shards(tmp_path, n=4, shard_size=4)
    batch = collate_xray(list(XRayShards(tmp_path, shuffle=False)))
    assert batch["image"].shape == (4, 1, 16, 16) and batch["label"].tolist() == [1, 0, 0, 0]
    assert len(batch["boxes"]) == 4 and batch["boxes"][0].shape == (1, 4) and batch["boxes"][1].shape == (0, 4)


def _sample_with_mask(i):
    return {"key": f"k{i}", "image": torch.full((1, 8, 8), i / 4), "mask": torch.ones(1, 8, 8), "label": 0}


def _stacked_in_shared_memory(samples, shared):
    batch = collate_xray(samples, shared=shared)
    return batch["image"].is_shared(), batch["mask"].is_shared(), torch.equal(batch["image"][1], samples[1]["image"])


@pytest.mark.parametrize("shared", [True, False])
def test_collate_stacks_into_shared_memory_in_workers(shared):
    samples = [_sample_with_mask(i) for i in range(4)]
    assert _stacked_in_shared_memory(samples, shared) == (False, False, True)  # main process: plain stack
    collate = partial(_stacked_in_shared_memory, shared=shared)
    loader = DataLoader(samples, batch_size=4, num_workers=1, collate_fn=collate)
    assert list(loader) == [(shared, shared, True)]


def test_torchrun_two_ranks_gloo(tmp_path):
    write_shards(tmp_path / "shards", n=22, shard_size=3)
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import json, torch, torch.distributed as dist
        from torch.utils.data import DataLoader
        from streamaug import XRayShards, collate_xray
        dist.init_process_group("gloo")
        ds = XRayShards({str(tmp_path / 'shards')!r}, seed=4)
        keys = [k for b in DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_xray) for k in b["key"]]
        out = [None, None]
        dist.all_gather_object(out, keys)
        if dist.get_rank() == 0:
            print("RESULT" + json.dumps(out))
        dist.destroy_process_group()
    """))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout's streamaug, not an installed one
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_port=29517", str(script)], capture_output=True, text=True,
                          timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    out = json.loads(proc.stdout.split("RESULT", 1)[1].splitlines()[0])
    assert len(out[0]) == len(out[1])
    assert set(out[0]) | set(out[1]) == {f"k{i:06d}" for i in range(22)}
    assert not set(out[0]) & set(out[1])  # the ranks split the shards (padding repeats a rank's own samples)


def test_resize_scales_box_x_by_width_and_y_by_height():
    from streamaug.data.decode import resize_sample

    sample = {"image": torch.rand(1, 16, 16), "boxes": torch.tensor([[2.0, 4.0, 6.0, 8.0]])}
    out = resize_sample(sample, (32, 64))  # (H, W): rows x2, columns x4
    assert out["image"].shape == (1, 32, 64)
    assert out["boxes"].tolist() == [[8.0, 8.0, 24.0, 16.0]]
