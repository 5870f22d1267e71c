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


def _write(folder: Path, arm: str, seed: int, y, s, keys, key: dict | None = None) -> None:
    path = folder / "runs" / "lower_limb" / arm / f"seed{seed}" / "scores.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"y_test": list(y), "s_test": list(s), "keys_test": keys, **({"key": key} if key else {})}))


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
               "--n-boot", "200", "--by", "image"])
    delta, lo, hi = paired_bootstrap_seeds(np.array(y), [ref[s] for s in range(4)], [arm[s] for s in range(4)], 200, 0)
    assert capsys.readouterr().out.strip() == (f"lower_limb oversample_swap - oversample: {delta:+.3f} "
                                               f"[{lo:+.3f}, {hi:+.3f}]{' *' if lo > 0 else ''} over 4 seeds 0-3, by image")
    assert lo > 0  # the arm's scores separate the labels better at every seed

    # --seeds keeps a subset (a seed half): the bootstrap of seeds 2-3 alone
    pool.main([str(tmp_path / "a"), str(tmp_path / "b"), "--region", "lower_limb", "--arms", "oversample_swap",
               "--n-boot", "200", "--seeds", "2", "3", "9", "--by", "image"])
    delta, lo, hi = paired_bootstrap_seeds(np.array(y), [ref[2], ref[3]], [arm[2], arm[3]], 200, 0)
    assert capsys.readouterr().out.strip() == (f"lower_limb oversample_swap - oversample: {delta:+.3f} "
                                               f"[{lo:+.3f}, {hi:+.3f}]{' *' if lo > 0 else ''} over 2 seeds 2-3, by image")

    _write(tmp_path / "b", "oversample", 0, y, ref[0], keys)  # seed 0 now in both folders
    with pytest.raises(SystemExit, match="seed 0 .* two folders"):
        pool.main([str(tmp_path / "a"), str(tmp_path / "b"), "--region", "lower_limb", "--arms", "oversample_swap",
                   "--by", "image"])
    with pytest.raises(SystemExit, match="different test sets"):
        _write(tmp_path / "c", "oversample", 7, y, ref[0], keys)
        _write(tmp_path / "c", "oversample_swap", 7, y, arm[0], keys[::-1])
        pool.main([str(tmp_path / "c"), "--region", "lower_limb", "--arms", "oversample_swap", "--by", "image"])


def test_labels_settings_and_patients_are_checked(tmp_path, capsys):
    """Same keys with other labels, or seeds of one arm trained with other settings, are refused; by
    default the test set is resampled by the patients of the test shards the runs name."""
    from shardgen import write_shards

    shards = tmp_path / "shards"
    write_shards(shards, n=40, shard_size=20, lesion_every=2)  # labels alternate: k000000 tumour, ...
    y, keys = [1 - i % 2 for i in range(40)], [f"k{i:06d}" for i in range(40)]
    rng = np.random.default_rng(1)
    key = {"config": {"epochs": 6, "out": "x", "seed": 0, "filter_classifier": "/a/seed0/best.pt"},
           "test": [str(shards), None]}
    for seed in range(3):
        cfg = {**key, "config": {**key["config"], "seed": seed, "filter_classifier": f"/a/seed{seed}/best.pt"}}
        _write(tmp_path / "e", "oversample", seed, y, rng.random(40).tolist(), keys, cfg)
        _write(tmp_path / "e", "oversample_swap", seed, y, (rng.random(40) + np.array(y)).tolist(), keys, cfg)
    pool = _pool_seeds()
    with pytest.raises(SystemExit, match="no group column: pass --by image"):  # the generated shards have none
        pool.main([str(tmp_path / "e"), "--region", "lower_limb", "--arms", "oversample_swap", "--n-boot", "100"])
    pool.main([str(tmp_path / "e"), "--region", "lower_limb", "--arms", "oversample_swap", "--n-boot", "100",
               "--by", "image"])
    assert capsys.readouterr().out.strip().endswith("over 3 seeds 0-2, by image")
    _write(tmp_path / "e", "oversample_swap", 1, y, rng.random(40).tolist(), keys,
           {**key, "config": {**key["config"], "epochs": 12}})
    with pytest.raises(SystemExit, match=r"seed 1 was trained with other settings than seed 0 \(\['epochs'\]\)"):
        pool.main([str(tmp_path / "e"), "--region", "lower_limb", "--arms", "oversample_swap", "--by", "image"])
    _write(tmp_path / "e", "oversample_swap", 1, [1 - v for v in y], rng.random(40).tolist(), keys, key)
    with pytest.raises(SystemExit, match="keys or labels differ"):
        pool.main([str(tmp_path / "e"), "--region", "lower_limb", "--arms", "oversample_swap", "--by", "image"])


def _grouped_shard(path: Path, keys: list[str], y: list[int], per_patient: int) -> None:
    """One tar shard whose JSON gives each image its patient (``group``), ``per_patient`` images each."""
    import io
    import tarfile

    from shardgen import png_bytes, tiny_image

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i, (k, label) in enumerate(zip(keys, y)):
            meta = {"label": "tumor" if label else "normal", "region": "lower_limb", "group": f"p{i // per_patient}"}
            for ext, data in (("png", png_bytes(tiny_image(i, 16))), ("json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"{k}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_patients_are_resampled_and_a_significant_loss_is_starred(tmp_path, capsys):
    """By default the bootstrap resamples the test shards' patients, not images; an interval wholly
    below zero (the arm is worse) is as significant as one wholly above."""
    y = [i % 2 for i in range(40)]
    keys = [f"k{i:06d}" for i in range(40)]
    _grouped_shard(tmp_path / "shards" / "test-000000.tar", keys, y, per_patient=4)
    key = {"config": {"epochs": 6}, "test": [str(tmp_path / "shards" / "test-000000.tar"), None]}
    rng = np.random.default_rng(3)
    ref, arm = {}, {}
    for seed in range(3):  # the arm scores noise, the reference separates the labels: a clear loss
        ref[seed] = (rng.random(40) + np.array(y)).tolist()
        arm[seed] = rng.random(40).tolist()
        _write(tmp_path / "e", "oversample", seed, y, ref[seed], keys, key)
        _write(tmp_path / "e", "oversample_swap", seed, y, arm[seed], keys, key)
    pool = _pool_seeds()
    pool.main([str(tmp_path / "e"), "--region", "lower_limb", "--arms", "oversample_swap", "--n-boot", "200"])
    groups = [f"p{i // 4}" for i in range(40)]
    delta, lo, hi = paired_bootstrap_seeds(np.array(y), [ref[s] for s in range(3)], [arm[s] for s in range(3)], 200, 0,
                                           groups=groups)
    by_image = paired_bootstrap_seeds(np.array(y), [ref[s] for s in range(3)], [arm[s] for s in range(3)], 200, 0)
    assert (lo, hi) != tuple(by_image[1:]) and hi < 0
    assert capsys.readouterr().out.strip() == (f"lower_limb oversample_swap - oversample: {delta:+.3f} "
                                               f"[{lo:+.3f}, {hi:+.3f}] * over 3 seeds 0-2, by patient")
