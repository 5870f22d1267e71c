"""benchmarks/translator_quality.py runs end to end on tiny shards and prints its side-by-side table."""
from __future__ import annotations

from benchload import load_benchmark
from shardgen import write_shards


def test_translator_quality_benchmark_prints_both_arms(tmp_path, capsys):
    write_shards(tmp_path / "shards", n=24, shard_size=8, size=48, lesion_every=3, box=(10, 12, 26, 30))
    bench = load_benchmark("translator_quality")
    bench.main(["--shards", str(tmp_path / "shards"), "--out", str(tmp_path / "out"), "--train-split", "all",
                "--heldout-split", "all", "--steps", "2", "--score-every", "2", "--arms", "old", "new"])
    out = capsys.readouterr().out
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines()
            if line.startswith("| ") and "KID" not in line]
    assert [(r[0], r[1]) for r in rows] == [("old", "last"), ("new", "last"), ("new", "best")]
    assert rows[0][-1] == "1.000" and rows[0][3] == "0.0001" and all(float(r[6]) > 0 for r in rows)
    assert (tmp_path / "out" / "samples_old.png").exists() and (tmp_path / "out" / "samples_new.png").exists()
