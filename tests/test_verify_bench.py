"""Smoke test of ``benchmarks/verify.py`` on a few tiny phantom shards (no speed assertions)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_verify_benchmark_prints_the_three_loaders_side_by_side():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "benchmarks/verify.py", "--phantom", "8", "--size", "32", "--shard-size", "4",
                          "--rounds", "1"], capture_output=True, text=True, check=True, cwd=root, env=env,
                         timeout=300).stdout
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines()
            if line.startswith("| ") and "samples/s" not in line]
    assert [r[0] for r in rows] == ["off (False)", "first (True)", "buffer ('buffer')"]
    assert rows[0][2] == "1.000" and all(float(v) > 0 for r in rows for v in r[1:])
    assert out.startswith("2 shards, 8 samples")
