"""benchmarks/btxrd_experiment.py end to end on a tiny phantom BTXRD folder (every arm, the filter
ablation, reproducible reruns); the paired tests and the training make-up of streamaug.eval.experiment."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from benchload import load_benchmark

from streamaug.eval import paired_bootstrap, paired_bootstrap_seeds
from streamaug.eval.experiment import SeedRun, markdown_table, pool_runs, summarize_arm, training_makeup
from streamaug.eval.stats import pooled_bootstrap

ROOT = Path(__file__).resolve().parents[1]


def _arms():
    """benchmarks/btxrd_arms.py, the driver's arms, budgets and context (imported as the driver does)."""
    _driver()
    import btxrd_arms

    return btxrd_arms


def _driver():
    return load_benchmark("btxrd_experiment")


def _runs(rng, seeds, shift):
    runs = []
    for seed in seeds:
        y = np.array([0, 1] * 20)
        keys = [f"k{i}" for i in range(len(y))]
        s = y * shift + rng.normal(size=len(y))
        runs.append(SeedRun(seed, y, s, y, s + 0.01 * seed, keys))
    return runs


def test_an_arm_whose_seeds_scored_different_test_orders_is_refused_baseline_included():
    """The pooled AUC reads the first seed's labels beside every seed's scores: a seed scored in
    another order would silently pair scores with other cases' labels."""
    rng = np.random.default_rng(1)
    base = _runs(rng, [0, 1], 1.0)
    turned = dataclasses.replace(base[1], y_test=base[1].y_test[::-1], s_test=base[1].s_test[::-1],
                                 keys_test=base[1].keys_test[::-1])
    with pytest.raises(ValueError, match="different test sets"):
        summarize_arm("baseline", [base[0], turned], None, n_boot=50)


def test_pooled_paired_test_concatenates_seeds_in_order():
    rng = np.random.default_rng(0)
    base, aug = _runs(rng, [0, 1, 2], 0.5), _runs(rng, [0, 1, 2], 1.5)
    y, s = pool_runs(aug, base)
    assert len(y) == 120 and np.array_equal(s[40:80], aug[1].s_test)
    over = _runs(rng, [0, 1, 2], 1.0)
    row = summarize_arm("aug", aug, base, versus={"oversample": over}, n_boot=300, region="r", filter="rank")
    expected = pooled_bootstrap(base[0].y_test, [r.s_test for r in aug], [r.s_test for r in base], 300, 0)
    assert row["delta"] == pytest.approx(expected[0]) and row["delta_ci95"] == pytest.approx(list(expected[1:]))
    yb, sb = pool_runs(base)
    assert row["delta"] == pytest.approx(paired_bootstrap(yb, sb, s, 300, 0)[0])  # the pooled AUCs' difference
    keys = aug[0].keys_test  # patients of two images each: the same point values, intervals from patients
    grouped = summarize_arm("aug", aug, base, n_boot=300, groups={k: i // 2 for i, k in enumerate(keys)})
    assert grouped["delta_seeds"] == pytest.approx(row["delta_seeds"]) and grouped["auc_ci95"] != row["auc_ci95"]
    by_seed = paired_bootstrap_seeds(base[0].y_test, [r.s_test for r in base], [r.s_test for r in aug], 300, 0)
    assert row["delta_seeds"] == pytest.approx(by_seed[0]) and row["delta_seeds_ci95"] == pytest.approx(list(by_seed[1:]))
    vs = paired_bootstrap_seeds(base[0].y_test, [r.s_test for r in over], [r.s_test for r in aug], 300, 0)
    assert row["versus"]["oversample"]["delta_seeds"] == pytest.approx(vs[0])
    assert row["versus"]["oversample"]["delta_seeds_ci95"] == pytest.approx(list(vs[1:]))
    assert len(row["auc_per_seed"]) == 3 and row["auc_sd"] > 0 and row["n_test"] == 40  # one test set, 3 seeds
    assert row["test_positives"] == 20
    assert row["auc_min"] == min(row["auc_per_seed"]) and row["auc_max"] == max(row["auc_per_seed"])
    assert 0 <= row["sensitivity"] <= 1 and 0 <= row["specificity"] <= 1
    table = markdown_table([summarize_arm("baseline", base, None, n_boot=300), row])
    assert "aug" in table and "Δ seed-avg vs oversample" in table and table.count("\n") == 3
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


def test_training_makeup_sums_the_epoch_records():
    history = [{"samples": 100, "emitted": {"real_positive": 30, "real_normal": 50, "synthetic": 20},
                "synthetic": 20, "generated": 44, "accepted": 22},
               {"samples": 90, "emitted": {"real_positive": 20, "real_normal": 50, "synthetic": 20},
                "synthetic": 20, "generated": 40, "accepted": 20}]
    made = training_makeup(history)
    assert made == {"samples": 190, "real_positive": 50, "synthetic": 40, "generated": 84, "accepted": 42, "epochs": 2}
    y = np.array([0, 1] * 10)
    run = SeedRun(0, y, y * 1.0, y, y * 1.0, [str(i) for i in range(20)], **made)
    row = summarize_arm("a", [run], None, n_boot=50)
    assert row["real_positive_share"] == pytest.approx(50 / 190) and row["synthetic_share"] == pytest.approx(40 / 190)
    assert row["positives_per_epoch"] == 45 and row["samples_per_epoch"] == 95
    assert row["candidates_per_accepted"] == 2 and row["candidates_per_used"] == pytest.approx(84 / 40)


def test_driver_end_to_end_on_phantom(tmp_path):
    from streamaug.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", 80, 60, size=(64, 64), seed=1)
    out = tmp_path / "out"
    driver = _driver()
    arms = _arms()
    argv = ["--data", str(data), "--out", str(out), "--budget", "test", "--seeds", "1", "--no-record-argv"]
    res = driver.run_experiment(driver.parse_args(argv))
    saved = json.loads((out / "results.json").read_text())
    assert saved["positive_ratio"] == 0.1 and saved["seeds"] == [0] and saved["complete"]
    rows = {(r["region"], r["arm"]): r for r in saved["arms"]}
    assert set(rows) == {(region, arm) for region in driver.REGIONS for arm in driver.ARMS}
    for row in saved["arms"]:
        values = [row["auc_mean"], row["auc_pooled"], *row["auc_ci95"], row["sensitivity"], row["specificity"],
                  row["real_positive_share"], row["synthetic_share"], row["positives_per_epoch"]]
        if row["arm"] != "baseline":
            values += [row["delta"], *row["delta_ci95"], row["delta_seeds"], *row["delta_seeds_ci95"]]
        if row["arm"] in arms.SYNTHESIS_ARMS:
            values += [row["versus"]["oversample"]["delta_seeds"], row["candidates_per_accepted"]]
        assert all(math.isfinite(v) for v in values), row
    for region in driver.REGIONS:  # what each arm trained on
        base, over = rows[region, "baseline"], rows[region, "oversample"]
        assert base["synthetic_share"] == 0 and over["real_positive_share"] > 2 * base["real_positive_share"]
        assert over["samples_per_epoch"] > base["samples_per_epoch"]
        kept = base["positives_per_epoch"]  # one pass: every kept positive once
        assert over["positives_per_epoch"] == 5 * kept
        for arm in driver.ARMS[3:]:  # the oversampling budget, the added positives (partly) synthetic
            row = rows[region, arm]
            assert row["samples_per_epoch"] == over["samples_per_epoch"], (region, arm)
            assert row["positives_per_epoch"] == over["positives_per_epoch"], (region, arm)
            synthetic = (2 if arm.startswith("oversample_") else 4) * kept
            assert row["synthetic_share"] == pytest.approx(synthetic / row["samples_per_epoch"]), (region, arm)
            assert 1 <= row["candidates_per_accepted"] <= 3, (region, arm)  # rank mode: about 2 per accepted
    ablation = saved["ablation"]
    assert [r["arm"] for r in ablation["rows"]][0] == "lesion_own, rank (the arm)"
    assert len(ablation["rows"]) + len(ablation["no_run"]) == 3
    assert "Filter ablation" in (out / "results.md").read_text()
    for name in ["results.md", "roc_upper_limb.png", "roc_lower_limb.png"]:
        assert (out / name).stat().st_size > 0
    assert any(p and Path(p).exists() for p in saved["samples_png"].values())
    assert res["wall_seconds"] > 0
    # a second call reuses the pack and every cached run; a run trained again gives the same scores
    cached = out / "runs" / "lower_limb" / "oversample_lesion" / "seed0" / "scores.json"
    before = json.loads(cached.read_text())
    cached.unlink()
    again = driver.run_experiment(driver.parse_args(argv))
    assert [r["auc_pooled"] for r in again["arms"]] == [r["auc_pooled"] for r in saved["arms"]]
    after = json.loads(cached.read_text())
    assert after["s_test"] == before["s_test"] and after["seconds"] != before["seconds"]


def test_driver_with_a_separate_test_folder(tmp_path):
    from streamaug.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", 80, 60, size=(64, 64), seed=1)
    test = write_phantom_dataset(tmp_path / "test", 12, 12, size=(64, 64), seed=2, regions=("lower_limb",))
    driver = _driver()
    res = driver.run_experiment(driver.parse_args([
        "--data", str(data), "--test-data", str(test), "--out", str(tmp_path / "out"), "--budget", "test",
        "--seeds", "1", "--regions", "lower_limb", "--no-ablation", "--jobs", "2", "--no-record-argv"]))
    # every row of the test folder (all of its splits) is scored; no transfer arm with one region
    assert {r["n_test"] for r in res["arms"]} == {24}
    assert [r["arm"] for r in res["arms"]] == [a for a in driver.ARMS if a not in driver.TRANSFER_ARMS]
    assert not res["ablation"]


def test_a_given_pack_of_other_data_is_refused_not_overwritten(tmp_path):
    driver = _driver()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "metadata.csv").write_text("image_id,label\n")
    (tmp_path / "pack").mkdir()
    (tmp_path / "pack" / "manifest.json").write_text(json.dumps({"source": {"root": "/elsewhere"}, "splits": {}}))
    with pytest.raises(SystemExit, match="not a pack of"):
        driver.ensure_packed(tmp_path / "data", tmp_path / "pack", reuse_only=True)
    assert json.loads((tmp_path / "pack" / "manifest.json").read_text())["source"]["root"] == "/elsewhere"


def test_a_run_whose_filter_accepts_nothing_is_cached_as_failed(tmp_path, monkeypatch):
    from streamaug import NoAcceptedCandidates

    driver = _driver()
    calls = []

    def refuse(cfg, progress=False):
        calls.append(cfg.filter_quantile)
        raise NoAcceptedCandidates("the synthesis stage accepted no candidate in 50 batches")

    monkeypatch.setattr(driver, "train_classifier", refuse)
    ctx = driver.Context(tmp_path, tmp_path / "shards", "test-spec", "test", dict(driver.BUDGETS["test"]),
                         0.1, 5, "cpu")
    kw = dict(stream="lesion", filter_mode="threshold", filter_quantile=0.5, translator="t.pt",
              filter_classifier="f.pt")
    for _ in range(2):  # the second call reads the cached failure instead of training again
        assert driver.train_arm(ctx, "upper_limb", 0, "lesion_own", tag="q50", **kw) is None
    assert calls == [0.5]
    # another config: tried again
    assert driver.train_arm(ctx, "upper_limb", 0, "lesion_own", tag="q50", **{**kw, "synthetic_fraction": 0.5}) is None
    assert calls == [0.5, 0.5]


def test_no_checkpoint_is_unpickled_with_code_execution():
    """Checkpoints hold plain types and tensors: every load is weights_only=True (or the library's reader)."""
    offenders = [str(p.relative_to(ROOT)) for folder in ("streamaug", "benchmarks") for p in (ROOT / folder).rglob("*.py")
                 if "weights_only=False" in p.read_text()]
    assert not offenders, offenders


def test_driver_runs_the_asked_arms_only_and_reads_another_metadata_csv(tmp_path):
    """The chest set (benchmarks/nih_metadata.py) has its CSV outside the data folder and needs no translator."""
    import csv

    from streamaug.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", 60, 40, size=(64, 64), seed=3, regions=("lower_limb",))
    with open(data / "metadata.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["region"] = "chest"
    other = tmp_path / "chest.csv"
    with open(other, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    driver = _driver()
    out = tmp_path / "out"
    res = driver.run_experiment(driver.parse_args([
        "--data", str(data), "--metadata", str(other), "--out", str(out), "--budget", "test", "--seeds", "1",
        "--regions", "chest", "--arms", "baseline", "copy_paste", "inpaint", "--no-record-argv"]))
    assert [(r["region"], r["arm"]) for r in res["arms"]] == [("chest", "baseline"), ("chest", "copy_paste"),
                                                             ("chest", "inpaint")]
    assert not (out / "translators").exists() and (out / "inpainters" / "chest" / "seed0" / "inpainter.pt").exists()
    with pytest.raises(SystemExit, match="baseline"):
        driver.run_experiment(driver.parse_args(["--data", str(data), "--out", str(out), "--arms", "oversample"]))


def _lower_limb_rows(tmp_path, *arms):
    """The table rows, by arm, of a one-seed ``test``-budget run of ``arms`` on a lower-limb phantom
    (its results go to ``tmp_path / "out"``)."""
    from streamaug.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", 60, 40, size=(64, 64), seed=3, regions=("lower_limb",))
    driver = _driver()
    res = driver.run_experiment(driver.parse_args([
        "--data", str(data), "--out", str(tmp_path / "out"), "--budget", "test", "--seeds", "1",
        "--regions", "lower_limb", "--arms", *arms, "--no-record-argv"]))
    return {r["arm"]: r for r in res["arms"]}


def test_selection_arms_compare_filters_on_the_same_synthesizer(tmp_path):
    """copy_paste with the patch scorer and with no filter, beside copy_paste with the baseline filter."""
    from streamaug.filters.pseudo_label import PseudoLabel

    arms, out = _arms(), tmp_path / "out"
    rows = _lower_limb_rows(tmp_path, "baseline", "oversample", "copy_paste", "copy_paste_scorer",
                            "copy_paste_unfiltered")
    assert list(rows) == ["baseline", "oversample", "copy_paste", "copy_paste_scorer", "copy_paste_unfiltered"]
    scorer = out / "scorers" / "lower_limb" / "seed0" / "scorer.pt"
    assert PseudoLabel(scorer, threshold=None).on == "site" and not (out / "translators").exists()
    assert rows["copy_paste_scorer"]["candidates_per_accepted"] > 1  # ranked: more candidates than kept
    assert rows["copy_paste_unfiltered"]["candidates_per_accepted"] == 1  # no filter: every candidate kept
    for arm in ("copy_paste_scorer", "copy_paste_unfiltered"):
        versus = rows[arm]["versus"]
        assert set(versus) == {"oversample", arms.SAME_SYNTHESIZER}
        assert math.isfinite(versus[arms.SAME_SYNTHESIZER]["delta_seeds"])
        assert rows[arm]["samples_per_epoch"] == rows["oversample"]["samples_per_epoch"]
    key = json.loads((out / "runs" / "lower_limb" / "copy_paste_scorer" / "seed0" / "scores.json").read_text())["key"]
    assert key["config"]["filter_classifier"] == str(scorer) and str(scorer) in key["inputs"]


def test_copy_paste_variants_differ_from_it_in_their_one_setting(tmp_path):
    """Age-matched sources and mask-shaped pastes, each beside copy-paste on every normal, whole crops."""
    arms, out = _arms(), tmp_path / "out"
    rows = _lower_limb_rows(tmp_path, "baseline", "oversample", "oversample_copy_paste", "oversample_copy_paste_age",
                            "oversample_copy_paste_mask")
    scores = out / "runs" / "lower_limb" / "{}" / "seed0" / "scores.json"
    plain = json.loads(Path(str(scores).format("oversample_copy_paste")).read_text())["key"]["config"]
    for arm, label, name, value, default in (("oversample_copy_paste_age", arms.SAME_ARM_UNMATCHED, "match_sources",
                                              "age", None),
                                             ("oversample_copy_paste_mask", arms.SAME_ARM_BOX, "paste_shape", "mask",
                                              "box")):
        versus = rows[arm]["versus"]
        assert set(versus) == {"oversample", label}
        assert math.isfinite(versus[label]["delta_seeds"])
        assert rows[arm]["samples_per_epoch"] == rows["oversample_copy_paste"]["samples_per_epoch"]
        variant = json.loads(Path(str(scores).format(arm)).read_text())["key"]["config"]
        assert (variant[name], plain[name]) == (value, default)
        assert {k: v for k, v in variant.items() if k not in ("out", name)} == \
            {k: v for k, v in plain.items() if k not in ("out", name)}


def test_swap_arms_make_new_positives_from_the_kept_positives(tmp_path):
    arms, out = _arms(), tmp_path / "out"
    variants = ("oversample_swap_upright", "oversample_swap_bone")
    rows = _lower_limb_rows(tmp_path, "baseline", "oversample", "swap", "oversample_swap", *variants)
    assert list(rows) == ["baseline", "oversample", "swap", "oversample_swap", *variants]
    assert set(rows["oversample_swap"]["versus"]) == {"oversample"} and not (out / "translators").exists()
    assert set(rows["oversample_swap_upright"]["versus"]) == {"oversample", arms.SAME_ARM_TURNED}
    assert set(rows["oversample_swap_bone"]["versus"]) == {"oversample", arms.SAME_ARM_ANY_BONE}
    configs = {}
    for arm in ("swap", "oversample_swap", *variants):
        assert rows[arm]["samples_per_epoch"] == rows["oversample"]["samples_per_epoch"]
        config = json.loads((out / "runs" / "lower_limb" / arm / "seed0" / "scores.json").read_text())["key"]["config"]
        assert config["synthesizer"] == "swap" and config["stream"] == "lesion"
        configs[arm] = {k: v for k, v in config.items() if k != "out"}
    def without(arm, *names):
        return {k: v for k, v in configs[arm].items() if k not in names}

    bone = configs["oversample_swap_bone"]
    assert (bone["paste_match"], bone["paste_avoid"]) == ("bone", "group")
    assert (configs["oversample_swap"]["paste_match"], configs["oversample_swap"]["paste_avoid"]) == (None, None)
    match = ("paste_match", "paste_avoid")
    assert without("oversample_swap_bone", *match) == without("oversample_swap", *match)
    assert (configs["oversample_swap_upright"]["paste_rot90"], configs["oversample_swap"]["paste_rot90"]) == (False, True)
    assert without("oversample_swap_upright", "paste_rot90") == without("oversample_swap", "paste_rot90")


def test_sensitivity_and_specificity_use_the_validation_operating_point():
    """The threshold comes from the validation scores (not the test's own ROC), a test score equal to
    it counts as positive, and the pair is (sensitivity, specificity) in that order."""
    from streamaug.eval import operating_point

    y_val, s_val = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.6, 0.7])
    thr = operating_point(y_val, s_val)["threshold"]
    assert thr == 0.6
    y_test = np.array([0, 0, 0, 1, 1, 1, 1])
    s_test = np.array([0.1, 0.65, 0.7, 0.3, 0.6, 0.8, 0.9])  # a positive exactly at the threshold
    pred = s_test >= thr
    sens = pred[y_test == 1].sum() / (y_test == 1).sum()
    spec = (~pred[y_test == 0]).sum() / (y_test == 0).sum()
    assert (sens, spec) == (0.75, 1 / 3)
    own = operating_point(y_test, s_test)  # the test set's own point is another one
    assert (own["sensitivity"], own["specificity"]) != (sens, spec)
    run = SeedRun(0, y_val, s_val, y_test, s_test, [f"k{i}" for i in range(len(y_test))])
    row = summarize_arm("a", [run], None, n_boot=20)
    assert row["sensitivity"] == pytest.approx(sens) and row["specificity"] == pytest.approx(spec)
