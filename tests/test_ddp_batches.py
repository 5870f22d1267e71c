"""Equal batches per rank under torchrun: 2 ranks x 2 DataLoader workers, batch size 8, on CPU/gloo."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from shardgen import write_shards

from streamaug.data.plan import plan_epoch

SCRIPT = """
    import datetime, json, sys, torch, torch.distributed as dist
    from torch.utils.data import DataLoader
    from streamaug import XRayShards, collate_xray
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    shards = {shards!r}

    def loader(**kw):
        return DataLoader(XRayShards(shards, seed=4, **kw), batch_size=8, num_workers=2, collate_fn=collate_xray)

    plain = sum(1 for _ in loader())
    keys, steps = [], 0
    for batch in loader(batch_size=8):  # what DDP does: one collective per step, every rank must join it
        step = torch.tensor([len(batch["key"])], dtype=torch.float32)
        dist.all_reduce(step)
        keys += batch["key"]
        steps += 1
    out = [None, None]
    dist.all_gather_object(out, {{"plain": plain, "steps": steps, "keys": keys}})
    if dist.get_rank() == 0:
        print("RESULT" + json.dumps(out))
    dist.destroy_process_group()
"""


def test_plan_in_whole_batches_gives_every_rank_the_same_batches():
    for counts in ([6] * 5 + [1], [5, 5, 5, 5, 4], [256] * 11 + [69], [7, 7, 7, 1], [3] * 9):
        for world, workers, batch in ((2, 2, 8), (2, 3, 4), (3, 2, 5), (1, 2, 8)):
            if len(counts) < world * workers:
                continue
            plans = plan_epoch(counts, world=world, num_workers=workers, seed=4, epoch=0, shuffle=True,
                               batch_size=batch)
            per_rank = {sum(p.quota for p in rank) for rank in plans}
            assert len(per_rank) == 1 and all(p.quota % batch == 0 for rank in plans for p in rank)
            assert all(p.quota >= p.natural for rank in plans for p in rank)
            assert min(per_rank) - max(sum(p.natural for p in r) for r in plans) < world * workers * batch
    with pytest.raises(ValueError, match="equalize='pad'"):
        plan_epoch([5, 5], world=1, num_workers=2, seed=0, epoch=0, shuffle=False, equalize="none", batch_size=4)


def test_torchrun_two_ranks_two_workers_equal_batches(tmp_path):
    """Shards of 6,6,6,6,6,1 split so that, without batch_size, the ranks run 4 and 3 batches of 8:
    equal samples per rank, yet the rank with fewer batches would leave DDP's last step hanging."""
    write_shards(tmp_path / "shards", n=31, shard_size=6)
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(SCRIPT.format(shards=str(tmp_path / "shards"))))
    root = str(Path(__file__).resolve().parents[1])  # this checkout's streamaug, not an installed one
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_port=29523", str(script)], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1].splitlines()[0])
    assert out[0]["plain"] != out[1]["plain"]  # the setting reproduces the problem (4 vs 3 batches)
    assert out[0]["steps"] == out[1]["steps"]  # and batch_size=8 solves it: no rank waits at a step
    assert all(len(r["keys"]) == 8 * r["steps"] for r in out)  # whole batches only
    assert set(out[0]["keys"]) | set(out[1]["keys"]) == {f"k{i:06d}" for i in range(31)}  # nothing lost
