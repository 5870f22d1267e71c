"""``benchmarks/pool_seeds.py``: one paired bootstrap over the seeds of several experiment folders."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from streamaug.eval.stats import paired_bootstrap_seeds

ROOT = Path(__file__).resolve().parents[1]


def _pool_seeds():
    spec = importlib.util.spec_from_file_location("pool_seeds", ROOT / "benchmarks" / "pool_seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(folder: Path, arm: str, seed: int, y, s, keys) -> None:
    path = folder / "runs" / "lower_limb" / arm / f"seed{seed}" / "scores.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"y_test": list(y), "s_test": list(s), "keys_test": keys}))


def test_seeds_of_two_folders_are_pooled_into_one_paired_bootstrap(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = [0] * 20 + [1] * 20
    keys = [f"k{i}" for i in range(40)]
    ref, arm = {}, {}
    for seed in range(4):  # seeds 0-1 in one folder, 2-3 in the other
        folder = tmp_path / ("a" if seed < 2 else "b")
        ref[seed] = (rng.random(40) + 0.3 * np.array(y)).tolist()
        arm[seed] = (rng.random(40) + 0.8 * np.array(y)).tolist()
        _write(folder, "oversample", seed, y, ref[seed], keys)
        _write(folder, "oversample_swap", seed, y, arm[seed], keys)
    pool = _pool_seeds()
    pool.main([str(tmp_path / "a"), str(tmp_path / "b"), "--region", "lower_limb", "--arms", "oversample_swap",
               "--n-boot", "200"])
    delta, lo, hi = paired_bootstrap_seeds(np.array(y), [ref[s] for s in range(4)], [arm[s] for s in range(4)], 200, 0)
    assert capsys.readouterr().out.strip() == (f"lower_limb oversample_swap - oversample: {delta:+.3f} "
                                               f"[{lo:+.3f}, {hi:+.3f}]{' *' if lo > 0 else ''} over 4 seeds 0-3")
    assert lo > 0  # the arm's scores separate the labels better at every seed

    # --seeds keeps a subset (a seed half): the bootstrap of seeds 2-3 alone
    pool.main([str(tmp_path / "a"), str(tmp_path / "b"), "--region", "lower_limb", "--arms", "oversample_swap",
               "--n-boot", "200", "--seeds", "2", "3", "9"])
    delta, lo, hi = paired_bootstrap_seeds(np.array(y), [ref[2], ref[3]], [arm[2], arm[3]], 200, 0)
    assert capsys.readouterr().out.strip() == (f"lower_limb oversample_swap - oversample: {delta:+.3f} "
                                               f"[{lo:+.3f}, {hi:+.3f}]{' *' if lo > 0 else ''} over 2 seeds 2-3")

    _write(tmp_path / "b", "oversample", 0, y, ref[0], keys)  # seed 0 now in both folders
    with pytest.raises(SystemExit, match="seed 0 .* two folders"):
        pool.main([str(tmp_path / "a"), str(tmp_path / "b"), "--region", "lower_limb", "--arms", "oversample_swap"])
    with pytest.raises(SystemExit, match="different test sets"):
        _write(tmp_path / "c", "oversample", 7, y, ref[0], keys)
        _write(tmp_path / "c", "oversample_swap", 7, y, arm[0], keys[::-1])
        pool.main([str(tmp_path / "c"), "--region", "lower_limb", "--arms", "oversample_swap"])
