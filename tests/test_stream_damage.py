"""Damaged shards: a bad sample, a truncated or rewritten archive, bogus sizes, a changed shard.

Each is raised naming the shard, or skipped with ``on_error="skip"`` and counted in ``stats``
(``skipped_samples``, ``bad_shards``, ``lost_samples``); none hangs.
"""
from __future__ import annotations

import io
import tarfile

import pytest
from shardgen import keys_of, loader_keys, png_bytes, set_size_field, tiny_image, write_shards

from streamaug import XRayShards
from streamaug.data.shardlist import ShardError
from streamaug.data.stream import SampleError


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
