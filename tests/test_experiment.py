"""benchmarks/btxrd_experiment.py end to end on a tiny phantom BTXRD folder; the threshold grid
search and the pooled paired test of streamaug.eval.experiment."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from streamaug.eval import paired_bootstrap, paired_bootstrap_seeds
from streamaug.eval.experiment import SeedRun, grid_search_threshold, markdown_table, pool_runs, summarize_arm

ROOT = Path(__file__).resolve().parents[1]


def _driver():
    spec = importlib.util.spec_from_file_location("btxrd_experiment", ROOT / "benchmarks" / "btxrd_experiment.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["btxrd_experiment"] = module
    spec.loader.exec_module(module)
    return module


def test_grid_search_picks_the_best_validation_auc():
    val = {0.70: 0.61, 0.85: 0.66, 0.90: 0.64, 0.95: float("nan")}
    calls = []

    def train_at(t):
        calls.append(t)
        return val[t], f"run@{t}"

    best, payload, table = grid_search_threshold(train_at, [0.70, 0.85, 0.90, 0.95])
    assert best == 0.85 and payload == "run@0.85" and calls == [0.70, 0.85, 0.90, 0.95]
    assert [row["threshold"] for row in table] == calls and table[1]["val_auc"] == 0.66
    # ties go to the earlier threshold; all-NaN still returns the first
    assert grid_search_threshold(lambda t: (0.5, t), [0.9, 0.7])[0] == 0.9
    assert grid_search_threshold(lambda t: (float("nan"), t), [0.9, 0.7])[0] == 0.9
    with pytest.raises(ValueError):
        grid_search_threshold(lambda t: (0.5, t), [])


def _runs(rng, seeds, shift):
    runs = []
    for seed in seeds:
        y = np.array([0, 1] * 20)
        keys = [f"k{i}" for i in range(len(y))]
        s = y * shift + rng.normal(size=len(y))
        runs.append(SeedRun(seed, y, s, y, s + 0.01 * seed, keys))
    return runs


def test_pooled_paired_test_concatenates_seeds_in_order():
    rng = np.random.default_rng(0)
    base, aug = _runs(rng, [0, 1, 2], 0.5), _runs(rng, [0, 1, 2], 1.5)
    y, s = pool_runs(aug, base)
    assert len(y) == 120 and np.array_equal(s[40:80], aug[1].s_test)
    row = summarize_arm("aug", aug, base, n_boot=300, region="r", threshold=0.9)
    yb, sb = pool_runs(base)
    expected = paired_bootstrap(yb, sb, s, 300, 0)
    assert row["delta"] == pytest.approx(expected[0]) and row["delta_ci95"] == pytest.approx(list(expected[1:]))
    by_seed = paired_bootstrap_seeds(base[0].y_test, [r.s_test for r in base], [r.s_test for r in aug], 300, 0)
    assert row["delta_seeds"] == pytest.approx(by_seed[0]) and row["delta_seeds_ci95"] == pytest.approx(list(by_seed[1:]))
    assert len(row["auc_per_seed"]) == 3 and row["auc_sd"] > 0 and row["n_test"] == 120
    assert 0 <= row["sensitivity"] <= 1 and 0 <= row["specificity"] <= 1
    assert "aug" in markdown_table([summarize_arm("baseline", base, None, n_boot=300), row])
    # a run whose test order differs from the baseline's cannot be paired
    shuffled = _runs(rng, [0, 1, 2], 1.0)
    shuffled[2].keys_test = shuffled[2].keys_test[::-1]
    with pytest.raises(ValueError):
        pool_runs(shuffled, base)
    with pytest.raises(ValueError):
        pool_runs(_runs(rng, [0, 1, 5], 1.0), base)
    # the seed-averaged test needs every seed scored on the same test set
    other = _runs(rng, [0, 1, 2], 1.0)
    for r in (other[1], base[1]):
        r.keys_test = r.keys_test[::-1]
    with pytest.raises(ValueError, match="different test sets"):
        summarize_arm("aug", other, base, n_boot=50)


def test_driver_end_to_end_on_phantom(tmp_path):
    from streamaug.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", 80, 60, size=(64, 64), seed=1)
    out = tmp_path / "out"
    driver = _driver()
    argv = ["--data", str(data), "--out", str(out), "--budget", "test", "--seeds", "1", "--no-record-argv"]
    res = driver.run_experiment(driver.parse_args(argv))
    saved = json.loads((out / "results.json").read_text())
    assert saved["positive_ratio"] == 0.1 and saved["seeds"] == [0]
    arms = {(r["region"], r["arm"]) for r in saved["arms"]}
    assert arms == {(region, arm) for region in driver.REGIONS for arm in driver.ARMS}
    for row in saved["arms"]:
        values = [row["auc_mean"], row["auc_pooled"], *row["auc_ci95"], row["sensitivity"], row["specificity"]]
        if row["arm"] != "baseline":
            values += [row["delta"], *row["delta_ci95"], row["delta_seeds"], *row["delta_seeds_ci95"]]
        assert all(math.isfinite(v) for v in values), row
    assert any(r["synthetic"] > 0 for r in saved["arms"] if r["arm"].startswith("lesion"))
    ablation = saved["threshold"]["ablation"]
    assert len(ablation) == 1 and [r["threshold"] for r in next(iter(ablation.values()))["rows"]] == [0.5, 0.9]
    for name in ["results.md", "roc_upper_limb.png", "roc_lower_limb.png"]:
        assert (out / name).stat().st_size > 0
    assert any(p and Path(p).exists() for p in saved["samples_png"].values())
    assert res["wall_seconds"] > 0
    # a second call reuses the pack and every cached run
    again = driver.run_experiment(driver.parse_args(argv))
    assert [r["auc_pooled"] for r in again["arms"]] == [r["auc_pooled"] for r in saved["arms"]]


def test_driver_with_a_separate_test_folder(tmp_path):
    from streamaug.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", 80, 60, size=(64, 64), seed=1)
    test = write_phantom_dataset(tmp_path / "test", 12, 12, size=(64, 64), seed=2, regions=("lower_limb",))
    driver = _driver()
    res = driver.run_experiment(driver.parse_args([
        "--data", str(data), "--test-data", str(test), "--out", str(tmp_path / "out"), "--budget", "test",
        "--seeds", "1", "--regions", "lower_limb", "--no-record-argv"]))
    # every row of the test folder (all of its splits) is scored; no transfer arm with one region
    assert {r["n_test"] for r in res["arms"]} == {24}
    assert [r["arm"] for r in res["arms"]] == ["baseline", "oversample", "classic", "lesion_own"]


def test_a_run_whose_filter_accepts_nothing_is_cached_as_failed(tmp_path, monkeypatch):
    from streamaug import NoAcceptedCandidates

    driver = _driver()
    calls = []

    def refuse(cfg, progress=False):
        calls.append(cfg.filter_threshold)
        raise NoAcceptedCandidates("the synthesis stage accepted no candidate in 50 batches")

    monkeypatch.setattr(driver, "train_classifier", refuse)
    ctx = driver.Context(tmp_path, tmp_path / "shards", "test-spec", "test", dict(driver.BUDGETS["test"]),
                         0.1, 5, 0.25, "cpu")
    for _ in range(2):  # the second call reads the cached failure instead of training again
        assert driver.lesion_arm(ctx, "upper_limb", 0, "lesion_own", tmp_path / "t.pt", "f.pt", [0.9]) is None
    assert calls == [0.9]
    ctx.fraction = 0.5  # another config: tried again
    assert driver.lesion_arm(ctx, "upper_limb", 0, "lesion_own", tmp_path / "t.pt", "f.pt", [0.9]) is None
    assert calls == [0.9, 0.9]


def test_no_checkpoint_is_unpickled_with_code_execution():
    """Checkpoints hold plain types and tensors: every load is weights_only=True (or the library's reader)."""
    offenders = [str(p.relative_to(ROOT)) for folder in ("streamaug", "benchmarks") for p in (ROOT / folder).rglob("*.py")
                 if "weights_only=False" in p.read_text()]
    assert not offenders, offenders
