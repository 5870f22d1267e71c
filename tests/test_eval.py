"""Evaluation: bootstrap AUC, paired bootstrap, operating point, ROC plot, scoring a loader, CLI."""
from __future__ import annotations

import argparse
import re
import time

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from streamaug.eval import (
    bootstrap_auc,
    bootstrap_indices,
    is_significant,
    load_scores,
    operating_point,
    paired_bootstrap,
    paired_bootstrap_seeds,
    plot_roc,
    resampled_auc,
    save_scores,
    score_loader,
    sens_spec_at,
)
from streamaug.eval.__main__ import main as eval_main


def _data(n: int, seed: int = 0, noise: float = 1.0, prevalence: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    return y, y + rng.normal(0, noise, n)


# ---------------------------------------------------------------- bootstrap AUC


@pytest.mark.parametrize("rounding", [None, 1])
def test_resampled_auc_matches_sklearn_per_sample(rounding, monkeypatch) -> None:
    y, s = _data(120, seed=3)
    if rounding is not None:
        s = np.round(s, rounding)  # many ties
    idx = bootstrap_indices(y, 60, seed=1)
    want = np.array([roc_auc_score(y[r], s[r]) for r in idx])
    np.testing.assert_allclose(resampled_auc(y, s, idx), want, rtol=0, atol=1e-12)
    import streamaug.eval.bootstrap as boot

    monkeypatch.setattr(boot, "CHUNK_ELEMS", 500)  # several chunks
    np.testing.assert_allclose(resampled_auc(y, s, idx), want, rtol=0, atol=1e-12)
    w = np.stack([np.bincount(r, minlength=y.size) for r in idx])  # the same samples as case weights
    np.testing.assert_allclose(boot.weighted_auc(y, s, w), want, rtol=0, atol=1e-12)


def test_bootstrap_auc_point_estimate_and_ci() -> None:
    y, s = _data(300)
    auc, lo, hi = bootstrap_auc(y, s, n_boot=1000, seed=0)
    assert auc == roc_auc_score(y, s)
    assert lo < auc < hi and lo >= 0.0 and hi <= 1.0
    assert bootstrap_auc(y, s, n_boot=1000, seed=0) == (auc, lo, hi)  # deterministic
    assert bootstrap_auc(y, s, n_boot=1000, seed=1)[1:] != (lo, hi)


def test_ci_narrows_with_more_data() -> None:
    widths = []
    for n in (100, 400, 1600):
        _, lo, hi = bootstrap_auc(*_data(n, seed=n), n_boot=1000)
        widths.append(hi - lo)
    assert widths[0] > 1.5 * widths[1] > 2.25 * widths[2], widths  # ~1/sqrt(n)


def test_one_class_resamples_are_redrawn() -> None:
    y = np.zeros(30, int)
    y[7] = 1  # one positive: ~36% of plain resamples would hold no positive
    s = np.linspace(0, 1, 30)
    idx = bootstrap_indices(y, 500, seed=0)
    assert idx.shape == (500, 30)
    assert (y[idx].sum(1) > 0).all()
    boots = resampled_auc(y, s, idx)
    assert np.isfinite(boots).all()
    auc, lo, hi = bootstrap_auc(y, s, n_boot=500)
    assert np.isfinite([auc, lo, hi]).all()


def test_stratified_keeps_class_counts() -> None:
    y, s = _data(200)
    idx = bootstrap_indices(y, 100, seed=0, stratified=True)
    assert (y[idx].sum(1) == y.sum()).all()
    auc, lo, hi = bootstrap_auc(y, s, 500, stratified=True)
    assert lo < auc < hi


@pytest.mark.parametrize(
    ("y", "s", "match"),
    [([0, 1, -1], [0.1, 0.2, 0.3], "0/1"), ([1, 1, 1], [0.1, 0.2, 0.3], "both classes"),
     ([0, 1], [0.1], "entries"), ([0, 1], [0.1, np.nan], "finite")],
)
def test_input_validation(y, s, match) -> None:
    with pytest.raises(ValueError, match=match):
        bootstrap_auc(y, s)


def test_bootstrap_is_fast() -> None:
    y, s = _data(500)
    bootstrap_auc(y, s, n_boot=50)  # warm-up
    t0 = time.process_time()
    bootstrap_auc(y, s, n_boot=2000)
    paired_bootstrap(y, s, s + 1.0, n_boot=2000)
    assert time.process_time() - t0 < 2.0  # ~0.1 s on 2 cores


# ---------------------------------------------------------------- paired bootstrap


def test_clearly_better_model_is_significant() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.4).astype(int)
    weak, strong = y + rng.normal(0, 2.0, 400), y + rng.normal(0, 0.5, 400)
    res = paired_bootstrap(y, weak, strong)
    assert res[0] == pytest.approx(roc_auc_score(y, strong) - roc_auc_score(y, weak))
    assert 0 < res[1] < res[0] < res[2]
    assert is_significant(res)
    flipped = paired_bootstrap(y, strong, weak)  # delta = AUC(b) - AUC(a)
    assert flipped[0] == pytest.approx(-res[0]) and flipped[2] < 0 and is_significant(flipped)


def test_equal_quality_models_are_not_significant() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(400) < 0.4).astype(int)
    a, b = y + rng.normal(0, 1.0, 400), y + rng.normal(0, 1.0, 400)
    res = paired_bootstrap(y, a, b)
    assert res[1] < 0 < res[2] and not is_significant(res)


def test_identical_scores_give_zero_delta() -> None:
    y, s = _data(200)
    assert paired_bootstrap(y, s, s.copy()) == (0.0, 0.0, 0.0)
    assert not is_significant((0.0, 0.0, 0.0))


def test_paired_uses_the_same_samples_for_both_models() -> None:
    # b equals a except one positive scored higher: AUC(b) >= AUC(a) on *every* shared
    # resample, so the paired CI cannot reach below 0 (independent resamples would).
    y, a = _data(300, seed=5)
    b = a.copy()
    b[np.flatnonzero(y == 1)[np.argmin(a[y == 1])]] = a.max() + 1
    delta, lo, hi = paired_bootstrap(y, a, b)
    assert delta > 0 and lo >= 0.0 and hi > 0


def test_seed_averaged_paired_bootstrap_with_one_seed_is_the_paired_bootstrap() -> None:
    y, a = _data(300, seed=6)
    b = a + np.random.default_rng(7).normal(0, 0.5, a.size)
    assert paired_bootstrap_seeds(y, [a], [b], n_boot=500, seed=3) == pytest.approx(
        paired_bootstrap(y, a, b, n_boot=500, seed=3))


def test_seed_averaged_paired_bootstrap_ignores_calibration_and_can_fail() -> None:
    rng = np.random.default_rng(8)
    y = (rng.random(400) < 0.3).astype(int)
    base = [y + rng.normal(0, 1.0, 400) for _ in range(3)]
    same = [y + rng.normal(0, 1.0, 400) for _ in range(3)]  # as good, but each seed on its own scale
    shifted = [s + 3.0 * k for k, s in enumerate(same)]
    res = paired_bootstrap_seeds(y, base, shifted)
    assert res[1] < 0 < res[2] and not is_significant(res)
    pooled = paired_bootstrap(np.tile(y, 3), np.concatenate(base), np.concatenate(shifted))
    assert pooled[2] < 0  # pooling mixes the scales: a spurious, significant loss
    strong = [y + rng.normal(0, 0.4, 400) for _ in range(3)]
    better = paired_bootstrap_seeds(y, base, strong)
    assert better[0] == pytest.approx(np.mean([roc_auc_score(y, b) - roc_auc_score(y, a)
                                               for a, b in zip(base, strong)]))
    assert 0 < better[1] < better[0] < better[2]
    with pytest.raises(ValueError, match="same, non-zero number of seeds"):
        paired_bootstrap_seeds(y, base, strong[:2])


# ---------------------------------------------------------------- operating point


def test_operating_point_hand_made() -> None:
    # negatives 0.1 0.2 0.3 0.4 0.65; positives 0.5 0.7 0.8 0.9
    # t=0.7: TPR .75, FPR 0 -> 0.0625; t=0.65: .75/.2 -> 0.1025; t=0.5: 1/.2 -> 0.04 (best)
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.65, 0.5, 0.7, 0.8, 0.9])
    op = operating_point(y, s)
    assert op == pytest.approx({"threshold": 0.5, "sensitivity": 1.0, "specificity": 0.8})
    assert sens_spec_at(y, s, op["threshold"]) == pytest.approx((1.0, 0.8))
    assert sens_spec_at(y, s, 0.7) == pytest.approx((0.75, 1.0))


def test_operating_point_minimises_distance_to_corner() -> None:
    y, s = _data(150, seed=7, noise=0.8)
    op = operating_point(y, s)
    best = min((1 - se) ** 2 + (1 - sp) ** 2 for se, sp in (sens_spec_at(y, s, t) for t in np.unique(s)))
    got = (1 - op["sensitivity"]) ** 2 + (1 - op["specificity"]) ** 2
    assert got == pytest.approx(best)
    assert sens_spec_at(y, s, op["threshold"]) == pytest.approx((op["sensitivity"], op["specificity"]))


# ---------------------------------------------------------------- plot, loader, files, CLI


def test_plot_roc_writes_png(tmp_path) -> None:
    y, s = _data(200)
    curves = {"baseline": (y, s), "augmented": (y, s + np.random.default_rng(0).normal(0, 0.3, 200))}
    path = plot_roc(tmp_path / "plots" / "roc.png", curves, "test", n_boot=200, thresholds={"baseline": 0.5})
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


class _Mean(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled() and not self.training
        return x.mean(dim=(1, 2, 3)) * 10 - 5


def test_score_loader_collects_labels_scores_keys() -> None:
    g = torch.Generator().manual_seed(0)
    batches = [
        {"image": torch.rand(b, 1, 16, 16, generator=g), "label": torch.randint(0, 2, (b,), generator=g),
         "key": [f"img{i}_{j}" for j in range(b)]}
        for i, b in enumerate((4, 4, 3))
    ]
    model = _Mean().train()
    y, scores, keys = score_loader(model, batches, "cpu")
    assert model.training  # mode restored
    assert y.dtype == np.int64 and y.shape == scores.shape == (11,) and len(keys) == 11
    x = torch.cat([b["image"] for b in batches])
    np.testing.assert_allclose(scores, torch.sigmoid(x.mean((1, 2, 3)) * 10 - 5).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(y, torch.cat([b["label"] for b in batches]).numpy())
    assert keys[4] == "img1_0"
    _, logits, _ = score_loader(model, batches, "cpu", logits=True)
    np.testing.assert_allclose(logits, (x.mean((1, 2, 3)) * 10 - 5).numpy(), rtol=1e-5, atol=1e-6)


def test_score_loader_with_drn() -> None:
    from streamaug.models import get_classifier

    model = get_classifier("drn_tiny")()
    batch = {"image": torch.rand(3, 1, 32, 32), "label": torch.tensor([0, 1, -1]), "key": ["a", "b", "c"]}
    y, scores, keys = score_loader(model, [batch])
    assert list(y) == [0, 1, -1] and keys == ["a", "b", "c"]
    assert ((scores >= 0) & (scores <= 1)).all()


def test_scores_round_trip_and_cli(tmp_path, capsys) -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.4).astype(int)
    keys = [f"k{i}" for i in range(300)]
    weak, strong = y + rng.normal(0, 2.0, 300), y + rng.normal(0, 0.4, 300)
    save_scores(tmp_path / "base.csv", y, weak, keys)
    order = rng.permutation(300)  # a second file in another order must be aligned by key
    save_scores(tmp_path / "aug.csv", y[order], strong[order], [keys[i] for i in order])
    y2, s2, k2 = load_scores(tmp_path / "base.csv")
    assert k2 == keys and (y2 == y).all() and np.array_equal(s2, weak)
    assert eval_main(["compare", str(tmp_path / "base.csv"), str(tmp_path / "aug.csv"), "--val",
                      str(tmp_path / "base.csv"), str(tmp_path / "aug.csv"), "--roc", str(tmp_path / "roc.png"),
                      "--n-boot", "300"]) == 0
    out = capsys.readouterr().out
    aug_line = next(line for line in out.splitlines() if line.startswith("aug"))
    assert "*" in aug_line  # significant improvement over the baseline
    assert f"{roc_auc_score(y, strong):.3f}" in aug_line
    assert (tmp_path / "roc.png").exists()
    save_scores(tmp_path / "other.csv", 1 - y, strong, keys)  # the same keys, other labels
    save_scores(tmp_path / "more.csv", np.r_[y, 1], np.r_[strong, 0.5], keys + ["extra"])
    assert eval_main(["compare", str(tmp_path / "base.csv"), str(tmp_path / "other.csv")]) == 2
    assert re.search(r"^error: .*other\.csv: 300 cases have other labels", capsys.readouterr().err)
    assert eval_main(["compare", str(tmp_path / "base.csv"), str(tmp_path / "more.csv")]) == 2
    assert re.search(r"more\.csv: not the baseline file's test set: .* 1 are extra", capsys.readouterr().err)


def test_compare_resamples_the_patients_of_the_baseline_file(tmp_path, capsys) -> None:
    """Two images per patient with one score effect per patient: resampled by image the interval is
    too narrow; with a group column ``compare`` resamples patients (as ``score`` and the experiment)."""
    from streamaug.eval.score_files import load_score_groups

    rng = np.random.default_rng(3)
    patients = np.repeat(np.arange(150), 2)
    y = np.repeat((rng.random(150) < 0.4).astype(int), 2)
    s = y + np.repeat(rng.normal(0, 1.0, 150), 2) + rng.normal(0, 0.3, 300)
    keys = [f"k{i}" for i in range(300)]
    save_scores(tmp_path / "img" / "test.csv", y, s, keys)
    save_scores(tmp_path / "pat" / "test.csv", y, s, keys, groups=[f"P{p}" for p in patients])
    assert load_score_groups(tmp_path / "img" / "test.csv") is None
    assert load_score_groups(tmp_path / "pat" / "test.csv")[:3] == ["P0", "P0", "P1"]
    widths = {}
    for name in ("img", "pat"):
        assert eval_main(["compare", str(tmp_path / name / "test.csv"), "--n-boot", "500"]) == 0
        out = capsys.readouterr().out
        lo, hi = map(float, re.search(r"\((\d\.\d+)-(\d\.\d+)\)", out).groups())
        widths[name] = hi - lo
        assert ("of 150 patients, resampled by patient" in out) == (name == "pat")
    assert widths["pat"] > 1.2 * widths["img"]
    expected = bootstrap_auc(y, s, 500, 0, groups=[f"P{p}" for p in patients])
    assert widths["pat"] == pytest.approx(round(expected[2], 3) - round(expected[1], 3), abs=1e-9)


def test_every_eval_option_has_help() -> None:
    from streamaug.eval.__main__ import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {"score", "compare"}
    for name, parser in sub.choices.items():
        no_help = [a.dest for a in parser._actions if a.dest != "help" and not (a.help and a.help.strip())]
        assert not no_help, f"{name}: options without help {no_help}"


def test_score_checkpoint_is_one_function_importable_everywhere() -> None:
    import streamaug.eval
    import streamaug.eval.__main__ as cli
    from streamaug.eval.scoring import score_checkpoint

    assert cli.score_checkpoint is score_checkpoint is streamaug.eval.score_checkpoint
    assert streamaug.eval.score_loader is score_loader


def _seed_quality_null(rng, k: int, n: int = 240):
    """Two recipes of equal mean quality whose trained models vary from seed to seed."""
    y = (np.arange(n) % 2).astype(int)
    arm = [[y * rng.normal(1.0, 0.35) + rng.normal(0, 1.0, n) for _ in range(k)] for _ in range(2)]
    return y, arm[0], arm[1]


@pytest.mark.parametrize("k", [3, 10])
def test_seed_averaged_interval_holds_the_spread_between_seeds(k) -> None:
    """Before: only the test cases were resampled, so with equal recipes whose models vary from seed to
    seed the difference was 'significant' in about 40 % of experiments instead of 5 %."""
    rng = np.random.default_rng(11)
    hits = sum(is_significant(paired_bootstrap_seeds(*_seed_quality_null(rng, k), n_boot=200, seed=i))
               for i in range(150))
    assert hits / 150 <= 0.10
    # and directly: the half-width is at least the seeds' own t-interval (150 draws cannot resolve
    # 5 % from 15 % at k = 3)
    from scipy import stats as scipy_stats

    y, a, b = _seed_quality_null(rng, k)
    per_seed = [roc_auc_score(y, sb) - roc_auc_score(y, sa) for sa, sb in zip(a, b)]
    _, lo, hi = paired_bootstrap_seeds(y, a, b, n_boot=200, seed=0)
    assert (hi - lo) / 2 >= scipy_stats.t.ppf(0.975, k - 1) * np.std(per_seed, ddof=1) / np.sqrt(k)


def test_group_bootstrap_weighs_whole_groups_and_widens_clustered_intervals() -> None:
    from streamaug.eval.stats import bootstrap_weights

    rng = np.random.default_rng(12)
    groups = np.repeat(np.arange(100), 4)  # four images per patient, one label per patient
    y = np.repeat(rng.random(100) < 0.5, 4).astype(int)
    patient = np.repeat(rng.normal(0, 1.0, 100), 4)  # a patient effect shared by the images
    score = y * 0.8 + patient + rng.normal(0, 0.3, 400)
    w = bootstrap_weights(y, 300, 0, groups=groups)
    assert (w.reshape(300, 100, 4) == w.reshape(300, 100, 4)[:, :, :1]).all() and (w.sum(1) == 400).all()
    _, lo_i, hi_i = bootstrap_auc(y, score, 1000, 0)
    _, lo_g, hi_g = bootstrap_auc(y, score, 1000, 0, groups=groups)
    assert hi_g - lo_g > 1.4 * (hi_i - lo_i)  # images of one patient are not independent cases


def test_pooled_interval_does_not_shrink_with_copies_of_one_model() -> None:
    from streamaug.eval.stats import pooled_bootstrap

    y, a = _data(300, seed=13)
    _, lo1, hi1 = bootstrap_auc(y, a, 1000, 0)
    auc, lo, hi = pooled_bootstrap(y, [a] * 10, n_boot=1000)
    assert auc == pytest.approx(roc_auc_score(y, a)) and hi - lo > 0.8 * (hi1 - lo1)
    _, lo_t, hi_t = bootstrap_auc(np.tile(y, 10), np.tile(a, 10), 1000, 0)  # what the pooled CI was before
    assert hi_t - lo_t < 0.5 * (hi1 - lo1)
    delta, dlo, dhi = pooled_bootstrap(y, [a] * 3, [a] * 3, n_boot=200)
    assert delta == 0 and dlo == dhi == 0
