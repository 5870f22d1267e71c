"""Shards from ``http://`` and ``pipe:`` URLs (webdataset's opener) and ``XRayShards(transform=...)``."""
from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path

import pytest
import torch
from shardgen import write_shards

from streamaug import ShardError, XRayShards, collate_xray


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("url_shards")
    write_shards(folder, n=12, shard_size=4, manifest=False)
    return folder


@pytest.fixture(scope="module")
def http_root(shard_dir):
    """A real HTTP server on the loopback interface serving ``shard_dir``; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(shard_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


def _keys_images(ds) -> dict[str, torch.Tensor]:
    return {s["key"]: s["image"] for s in ds}


def _local(shard_dir: Path) -> dict[str, torch.Tensor]:
    return _keys_images(XRayShards(sorted(str(p) for p in shard_dir.glob("*.tar")), shuffle=False))


def test_http_shards_match_local_files(shard_dir, http_root):
    ds = XRayShards(f"{http_root}/t-{{000000..000002}}.tar", shuffle=False)
    assert len(ds.shards) == 3 and all(s.startswith("http://") for s in ds.shards)
    got, want = _keys_images(ds), _local(shard_dir)
    assert sorted(got) == sorted(want) and len(got) == 12
    for key in want:
        assert torch.equal(got[key], want[key])
    assert ds.stats["yielded"] == 12 and ds.stats["bad_shards"] == 0


def test_pipe_shards_match_local_files(shard_dir):
    ds = XRayShards(f"pipe:cat {shard_dir}/t-{{000000..000002}}.tar", shuffle=False)
    got, want = _keys_images(ds), _local(shard_dir)
    assert sorted(got) == sorted(want)
    for key in want:
        assert torch.equal(got[key], want[key])


def test_gzipped_pipe_shard(shard_dir, tmp_path):
    import gzip

    target = tmp_path / "t.tar.gz"
    target.write_bytes(gzip.compress((shard_dir / "t-000000.tar").read_bytes()))
    keys = [s["key"] for s in XRayShards(f"pipe:cat {target}", shuffle=False)]
    assert keys == [f"k{i:06d}" for i in range(4)]


def test_missing_http_shard_names_the_url(http_root):
    url = f"{http_root}/no-such-shard.tar"
    with pytest.raises(ShardError, match="no-such-shard.tar"):
        list(XRayShards(url, shuffle=False))


def test_failing_pipe_names_the_shard():
    with pytest.raises(ShardError, match="pipe:exit 3"):
        list(XRayShards("pipe:exit 3", shuffle=False))


def test_failing_pipe_is_counted_under_skip(shard_dir):
    good = f"pipe:cat {shard_dir}/t-000000.tar"
    ds = XRayShards([good, "pipe:cat /nonexistent/x.tar"], shuffle=False, on_error="skip", resampled=True,
                    epoch_length=8)
    keys = [s["key"] for s in ds]
    assert len(keys) == 8 and set(keys) <= {f"k{i:06d}" for i in range(4)}
    assert ds.stats["bad_shards"] >= 1


def _tag_pid(sample: dict) -> dict:
    return {**sample, "pid": os.getpid(), "inverted": 1.0 - sample["image"]}


def _fail_on_k1(sample: dict) -> dict:
    if sample["key"] == "k000001":
        raise RuntimeError("transform refused k000001")
    return sample


def test_transform_runs_inside_the_workers(shard_dir):
    ds = XRayShards(str(shard_dir), shuffle=False, transform=_tag_pid)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_xray)
    pids, n = set(), 0
    for batch in loader:
        pids.update(batch["pid"])
        torch.testing.assert_close(batch["inverted"][0], 1.0 - batch["image"][0])
        n += len(batch["key"])
    assert n == 12 and len(pids) == 2 and os.getpid() not in pids


def test_transform_errors_follow_on_error(shard_dir):
    with pytest.raises(Exception, match="k000001"):
        list(XRayShards(str(shard_dir), shuffle=False, transform=_fail_on_k1))
    ds = XRayShards(str(shard_dir), shuffle=False, transform=_fail_on_k1, on_error="skip", equalize="none")
    keys = [s["key"] for s in ds]
    assert "k000001" not in keys and len(keys) == 11 and ds.stats["skipped_samples"] == 1


def test_decode_and_sites_work_as_webdataset_map_stages(tmp_path):
    """The README's recipe: streamaug's decode and site stages inside a user's own WebDataset pipeline."""
    import json

    import webdataset as wds

    from streamaug.data.decode import decode_sample
    from streamaug.sites import LesionBoxBank, SiteProposer

    write_shards(tmp_path, n=8, shard_size=4)
    bank = LesionBoxBank.from_records([{"key": "L", "boxes": [[2, 3, 9, 10]], "width": 16, "height": 16}])
    urls = [str(p) for p in sorted(tmp_path.glob("*.tar"))]
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).map(decode_sample).map(
        SiteProposer(bank, n=1, min_intensity=0.0))
    ours = {s["key"]: s for s in XRayShards(str(tmp_path), shuffle=False, sites=SiteProposer(bank, n=1, min_intensity=0.0))}
    theirs = list(ds)
    assert sorted(s["key"] for s in theirs) == sorted(ours)
    for s in theirs:
        assert torch.equal(s["image"], ours[s["key"]]["image"]) and torch.equal(s["sites"], ours[s["key"]]["sites"])
        assert s["meta"]["index"] == json.loads(json.dumps(ours[s["key"]]["meta"]["index"]))
