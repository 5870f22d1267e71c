"""XRayShards: reading, rank/worker split, seeding, resume, bad data."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import textwrap
from collections import Counter
from functools import partial

import pytest
import torch
from shardgen import png_bytes, set_size_field, tiny_image, write_shards
from torch.utils.data import DataLoader

from streamaug import XRayShards, collate_xray
from streamaug.data.plan import plan_epoch
from streamaug.data.shardlist import ShardError
from streamaug.data.stream import SampleError


def keys_of(iterable):
    return [s["key"] for s in iterable]


def loader_keys(ds, num_workers, batch_size=3):
    dl = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_xray)
    return [k for batch in dl for k in batch["key"]]


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


def _corrupt_shard(path, good=3):
    with tarfile.open(path, "w") as tar:
        for i in range(good + 1):
            data = png_bytes(tiny_image(i)) if i != 1 else b"not a png at all"
            info = tarfile.TarInfo(f"b{i:06d}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_bad_sample_raises_naming_shard_and_key_or_is_skipped(tmp_path):
    _corrupt_shard(tmp_path / "bad-000000.tar")
    with pytest.raises(SampleError, match=r"b000001.*bad-000000\.tar"):
        list(XRayShards(tmp_path / "bad-000000.tar", shuffle=False))
    ds = XRayShards(tmp_path / "bad-000000.tar", shuffle=False, on_error="skip", equalize="none")
    assert keys_of(ds) == ["b000000", "b000002", "b000003"]
    assert ds.stats["skipped_samples"] == 1 and ds.stats["yielded"] == 3


def test_skipped_samples_counted_across_workers(tmp_path):
    for s in range(2):
        _corrupt_shard(tmp_path / f"bad-{s:06d}.tar")
    ds = XRayShards(tmp_path, on_error="skip", equalize="none")
    keys = loader_keys(ds, num_workers=2)
    assert len(keys) == 6
    assert ds.stats["skipped_samples"] == 2 and ds.stats["yielded"] == 6


def test_truncated_shard_raises_or_is_cut_never_hangs(tmp_path):
    (path,) = write_shards(tmp_path, n=8, shard_size=8, manifest=False, size=64)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match="truncated"):
        XRayShards(path)  # counting the shard reads its headers
    (tmp_path / "manifest.json").write_text(
        '{"splits": {"all": {"shards": [{"name": "t-000000.tar", "count": 8}]}}}')
    with pytest.raises(ShardError, match=r"t-000000\.tar is truncated"):
        list(XRayShards(path, shuffle=False))
    ds = XRayShards(path, shuffle=False, on_error="skip", equalize="none")
    got = keys_of(ds)
    assert 0 < len(got) < 8 and ds.stats["bad_shards"] == 1
    assert ds.stats["lost_samples"] == 8 - len(got)


class Hang(BaseException):
    """Not an Exception (TimeoutError is an OSError, which a stream's error policy may swallow)."""


def within(seconds, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, or :class:`Hang` after ``seconds`` (a hang fails the test instead of the run)."""
    import signal

    def expire(*_):
        raise Hang(f"no result in {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(*args, **kwargs)
    except Hang:
        pytest.fail(f"no result in {seconds} s: a hang")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_skip_lists_damaged_shards_instead_of_raising(tmp_path):
    """Without a manifest a shard is counted by a scan; with on_error='skip' a damaged one is counted
    up to the damage and reported, not raised at construction."""
    paths = write_shards(tmp_path, n=12, shard_size=4, manifest=False, size=64)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])  # cut inside a sample
    paths[2].write_bytes(b"this is not a tar" * 100)  # nothing readable: in no reader's plan
    with pytest.raises(ShardError, match=r"t-000001\.tar.*on_error='skip'"):
        XRayShards(tmp_path)
    ds = XRayShards(tmp_path, shuffle=False, on_error="skip", equalize="none")
    assert 0 < ds.counts[1] < 4 and ds.counts[2] == 0
    keys = keys_of(ds)
    assert keys[:4] == [f"k{i:06d}" for i in range(4)] and len(keys) == 4 + ds.counts[1]
    assert ds.stats["bad_shards"] == 2  # the unreadable shard too
    assert len(loader_keys(XRayShards(tmp_path, on_error="skip"), num_workers=2)) == 4 + ds.counts[1]
    with pytest.warns(UserWarning) as caught:
        list(XRayShards(tmp_path, on_error="warn"))
    assert {"t-000001.tar", "t-000002.tar"} <= {w.message.args[0].split("/")[-1].split(" ")[0] for w in caught}


def test_padding_never_spins_when_nothing_decodes(tmp_path):
    """Before: a reader none of whose samples decoded re-read its shards forever under pad."""
    with tarfile.open(tmp_path / "bad-000000.tar", "w") as tar:
        for i in range(3):
            info = tarfile.TarInfo(f"b{i:06d}.png")
            info.size = 5
            tar.addfile(info, io.BytesIO(b"nopng"))
    ds = XRayShards(tmp_path, on_error="skip", batch_size=1)  # batch_size: pad to the quota even on one rank
    with pytest.raises(ShardError, match=r"bad-000000\.tar.*no usable sample.*equalize='none'"):
        within(20, list, ds)
    assert ds.stats["skipped_samples"] == 3  # counted once, not once per pass
    assert within(20, list, XRayShards(tmp_path, on_error="skip", equalize="none")) == []
    single = XRayShards(tmp_path, on_error="skip")  # one rank, no batch_size: nothing to pad, nothing re-read
    assert within(20, list, single) == [] and single.stats["skipped_samples"] == 3


def _members(path):
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def _rewrite(path, members):
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))


#: samples read before the damage (a sample is only yielded once the next one's header reads)
READ_BEFORE = {"cut at a member boundary": 3, "zeroed header": 3, "member dropped": 9, "key comes back": 9,
               "member twice": 4}


@pytest.mark.parametrize("damage", sorted(READ_BEFORE))
def test_shards_that_lose_samples_quietly_are_bad_shards(tmp_path, damage):
    """Before: each of these ended the shard early (or merged samples) with bad_shards 0; padding then
    refilled the quota and the loss showed only as 'padded'."""
    (path,) = write_shards(tmp_path, n=10, shard_size=10, size=32)
    data, members = path.read_bytes(), _members(path)
    at = members[8][0].offset  # the header of k000004.png
    if damage == "cut at a member boundary":
        path.write_bytes(data[:at])
    elif damage == "zeroed header":
        path.write_bytes(data[:at] + bytes(512) + data[at + 512:])
    elif damage == "member dropped":
        _rewrite(path, members[:8] + members[10:])  # k000004 lost: a clean archive, one sample short
    elif damage == "key comes back":
        _rewrite(path, members + [members[1]])
    else:
        _rewrite(path, members[:9] + [members[8]] + members[9:])
    with pytest.raises(ShardError, match=r"t-000000\.tar"):
        within(20, list, XRayShards(path, shuffle=False))
    for batch_size in (None, 10):  # one rank: nothing re-read; with batch_size, padded to the quota
        ds = XRayShards(path, shuffle=False, on_error="skip", batch_size=batch_size)
        got = within(20, keys_of, ds)
        st = ds.stats
        assert len(got) == (10 if batch_size else READ_BEFORE[damage]) and st["bad_shards"] == 1
        natural = st["yielded"] - st["padded"]
        assert natural == READ_BEFORE[damage] and got[:3] == [f"k{i:06d}" for i in range(3)]
        assert natural + st["lost_samples"] == 10 and st["skipped_samples"] == 0


@pytest.mark.parametrize("field", [b"\x80" + (1 << 40).to_bytes(11, "big"), b"\xff" + bytes(10) + b"\x01",
                                   b"%011o\0" % (8 << 30)], ids=["1 TiB", "negative", "8 GiB"])
@pytest.mark.parametrize("manifest", [True, False])
def test_bogus_sizes_name_the_shard_or_are_skipped(tmp_path, field, manifest):
    """Before: MemoryError, ValueError or an 8 GiB read buffer, not naming the shard and not skipped;
    without a manifest a negative size made counting re-read one header forever."""
    (path,) = write_shards(tmp_path, n=6, shard_size=6, manifest=manifest)
    path.write_bytes(set_size_field(path.read_bytes(), b"k000003.png", field))
    with pytest.raises(ShardError, match=r"t-000000\.tar"):
        within(20, lambda: list(XRayShards(path, shuffle=False)))
    ds = within(20, XRayShards, path, shuffle=False, on_error="skip", equalize="none")
    assert keys_of(within(20, list, ds)) == ["k000000", "k000001"]  # k000002 ends where the damage begins
    assert ds.stats["bad_shards"] == 1 and ds.stats["lost_samples"] == (4 if manifest else 0)


def _change_one_label(path):
    data = path.read_bytes()
    at = data.index(b'"label": "normal"')
    path.write_bytes(data[:at] + b'"label": "tumor!"' + data[at + 17:])  # same length: tar still valid


@pytest.mark.parametrize("verify", [True, "buffer"])
def test_verify_finds_a_changed_shard_before_yielding_from_it(tmp_path, verify):
    paths = write_shards(tmp_path, n=8, shard_size=4, sha256=True)
    _change_one_label(paths[0])
    assert sum(s["label"] for s in XRayShards(tmp_path, shuffle=False, verify=False)) == 3  # was 2: unnoticed
    with pytest.raises(ShardError, match=r"t-000000\.tar .*sha256"):
        list(XRayShards(tmp_path, shuffle=False, verify=verify))
    ds = XRayShards(tmp_path, shuffle=False, verify=verify, on_error="skip", equalize="none")
    assert keys_of(ds) == [f"k{i:06d}" for i in range(4, 8)]
    assert ds.stats["bad_shards"] == 1 and ds.stats["lost_samples"] == 4
    intact = XRayShards(tmp_path / paths[1].name, shuffle=False, verify=verify)
    assert keys_of(intact) == [f"k{i:06d}" for i in range(4, 8)] and intact.stats["bad_shards"] == 0
    with pytest.raises(ValueError, match="verify"):
        XRayShards(tmp_path, verify="yes")


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
    assert not set(out[0]) & set(out[1]) or len(out[0]) * 2 > 22


def test_verified_shards_are_hashed_once_until_they_change(tmp_path, monkeypatch):
    """A resampled stream draws a shard many times: its bytes are hashed once per process while the
    file is unchanged, and again (and refused) once it changes."""
    from streamaug.data import shardlist

    paths = write_shards(tmp_path, n=8, shard_size=4, sha256=True)
    monkeypatch.setattr(shardlist, "_VERIFIED", set())
    hashed = []
    real = shardlist.shard_sha256
    monkeypatch.setattr(shardlist, "shard_sha256", lambda shard: hashed.append(shard) or real(shard))
    ds = XRayShards(tmp_path, resampled=True, epoch_length=40, verify=True)
    assert len(list(ds)) == 40 and sorted(set(hashed)) == sorted(str(p) for p in paths) and len(hashed) == 2
    _change_one_label(paths[0])
    with pytest.raises(ShardError, match=r"t-000000\.tar .*sha256"):
        list(XRayShards(paths[0], shuffle=False, verify=True))
