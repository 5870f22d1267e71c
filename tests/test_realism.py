"""Realism report: the distances against closed forms, the discriminator, the command on phantom shards."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch

from streamaug.cli import realism as cli
from streamaug.eval import bootstrap_auc
from streamaug.eval.distances import frechet_distance, gaussian_frechet, kernel_distance
from streamaug.eval.realism import cluster_bootstrap_auc, discriminator_auc, fit_binary, predict


def _with_moments(rng, n, mean, cov):
    """``n`` samples whose sample mean and (``n - 1``) covariance are exactly ``mean`` and ``cov``."""
    x = rng.normal(size=(n, len(mean)))
    x -= x.mean(0)
    x = x @ np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False))).T  # sample covariance: identity
    return x @ np.linalg.cholesky(cov).T + mean


def test_gaussian_frechet_matches_closed_forms():
    # one dimension: (m1 - m2)^2 + (s1 - s2)^2
    assert gaussian_frechet(np.array([1.0]), np.array([[9.0]]), np.array([-1.0]), np.array([[4.0]])) \
        == pytest.approx(4 + 1)
    # diagonal covariances: |m1 - m2|^2 + sum (sqrt a_i - sqrt b_i)^2
    a, b = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 0.25])
    assert gaussian_frechet(np.zeros(3), np.diag(a), np.ones(3), np.diag(b)) == pytest.approx(3 + 1 + 1)
    # identity against a full covariance with eigenvalues l: sum (1 - sqrt l)^2
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    lam = np.array([0.25, 1.0, 9.0])
    assert gaussian_frechet(np.zeros(3), np.eye(3), np.zeros(3), q @ np.diag(lam) @ q.T) \
        == pytest.approx(0.25 + 0 + 4)
    # two covariances that do not commute: the textbook formula with scipy's matrix square root
    rng = np.random.default_rng(1)
    m1, m2 = rng.normal(size=(2, 4))
    c1, c2 = (x @ x.T + 0.1 * np.eye(4) for x in rng.normal(size=(2, 4, 4)))
    want = np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
    assert gaussian_frechet(m1, c1, m2, c2) == pytest.approx(want, rel=1e-8)
    assert gaussian_frechet(m2, c2, m1, c1) == pytest.approx(want, rel=1e-8)
    assert gaussian_frechet(m1, c1, m1, c1) == pytest.approx(0, abs=1e-9)


def test_frechet_distance_is_that_of_the_sample_moments():
    rng = np.random.default_rng(2)
    a = _with_moments(rng, 50, np.array([0.0, 0.0]), np.diag([1.0, 4.0]))
    b = _with_moments(rng, 70, np.array([3.0, 4.0]), np.diag([9.0, 4.0]))
    assert frechet_distance(a, b) == pytest.approx(25 + (1 - 3) ** 2 + 0, rel=1e-9)
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(a[:1], b)


def test_kernel_distance_by_hand():
    a, b = np.array([[0.0], [1.0]]), np.array([[2.0], [0.0], [1.0]])
    k = lambda x, y: (x * y + 1.0) ** 3  # noqa: E731 - D = 1, so gamma = 1
    kaa = 2 * k(0, 1) / 2
    kbb = 2 * (k(2, 0) + k(2, 1) + k(0, 1)) / 6
    kab = sum(k(x, y) for x in (0, 1) for y in (2, 0, 1)) / 6
    assert kernel_distance(a, b) == pytest.approx(kaa + kbb - 2 * kab)
    assert kernel_distance(a, b, degree=1, gamma=2.0, coef0=0.0) == pytest.approx(
        (2 * 0) / 2 + 2 * 2 * (0 + 2 + 0) / 6 - 2 * 2 * (0 + 0 + 0 + 2 + 0 + 1) / 6)


def test_kernel_distance_is_unbiased_near_zero_and_grows_with_a_shift():
    rng = np.random.default_rng(3)
    same = [kernel_distance(rng.normal(size=(200, 4)), rng.normal(size=(200, 4))) for _ in range(20)]
    shifted = [kernel_distance(rng.normal(size=(200, 4)), rng.normal(size=(200, 4)) + 0.5) for _ in range(5)]
    assert abs(np.mean(same)) < 0.02 and min(same) < 0 < max(same)  # unbiased: either sign around 0
    assert min(shifted) > 0.5


def test_cluster_bootstrap_resamples_patients_not_images():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(4)
    y = np.r_[np.zeros(30), np.ones(30)].astype(int)
    score = np.round(rng.normal(size=60) + 0.8 * y, 1)  # rounded: ties too
    auc, lo, hi = cluster_bootstrap_auc(y, score, range(60), 500, seed=1)
    assert auc == pytest.approx(roc_auc_score(y, score)) and lo < auc < hi
    # every patient seen four times: the same interval as one image each (same seed), while an
    # image bootstrap of the copies claims one about half as wide
    groups = np.repeat(np.arange(60), 4)
    assert cluster_bootstrap_auc(np.repeat(y, 4), np.repeat(score, 4), groups, 500, seed=1) == \
        pytest.approx((auc, lo, hi))
    _, lo4, hi4 = bootstrap_auc(np.repeat(y, 4), np.repeat(score, 4), 500, 1)
    assert hi4 - lo4 < 0.7 * (hi - lo)


def _squares(n, seed, bright):
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.2 * torch.rand(n, 1, 16, 16, generator=g)
    if bright:
        x[:, :, 4:10, 4:10] = 0.95
    return x


def test_fit_binary_is_seeded_and_leaves_the_global_rng_alone():
    x = torch.cat([_squares(16, 0, False), _squares(16, 1, True)])
    y = torch.cat([torch.zeros(16), torch.ones(16)])
    state = torch.get_rng_state()
    one, two = (predict(fit_binary(x, y, epochs=2, seed=5), x) for _ in range(2))
    assert np.array_equal(one, two) and torch.equal(torch.get_rng_state(), state)


def test_discriminator_auc_tells_a_bright_square_and_not_the_same_noise():
    told = discriminator_auc(_squares(24, 0, False), _squares(24, 1, True), _squares(20, 2, False),
                             _squares(20, 3, True), epochs=6, n_boot=200)
    assert told.auc > 0.9 and told.labels.tolist() == [0] * 20 + [1] * 20
    same = discriminator_auc(_squares(24, 0, False), _squares(24, 1, False), _squares(20, 2, False),
                             _squares(20, 3, False), epochs=6, n_boot=200)
    assert same.ci[0] <= 0.5 <= same.ci[1]


# -- the command on phantom shards --------------------------------------------------------------------
FIELDS = {"synthesizer", "discriminator_auc", "discriminator_auc_ci", "frechet", "kid", "feature_classifier_auc",
          "feature_classifier_auc_ci", "counts", "keys", "features", "discriminator", "synthesis", "grid", "seconds",
          "split", "region", "image_size", "seed", "shards", "settings"}
FAST = ["--image-size", "32", "--epochs", "8", "--batch-size", "8", "--n-boot", "300"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from streamaug.cli.pack import pack
    from streamaug.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("realism")
    data = write_phantom_dataset(root / "phantom", 120, 120, size=(64, 64), seed=0, regions=("lower_limb",),
                                 splits=(1, 0, 0))
    pack(data, data / "metadata.csv", root / "shards", shard_size=64, progress=False)
    return root / "shards"


def _run(shards, out, spec, *extra):
    assert cli.main(["--real", str(shards), "--synthesizer", spec, "--out", str(out), *FAST, *extra]) == 0
    return json.loads((out / "realism.json").read_text())


def test_real_control_sits_at_one_half_with_disjoint_sides(shards, tmp_path):
    report = _run(shards, tmp_path, "real")
    assert set(report) >= FIELDS and (tmp_path / "grid.png").stat().st_size > 0
    lo, hi = report["discriminator_auc_ci"]
    assert lo <= 0.5 <= hi and abs(report["discriminator_auc"] - 0.5) < 0.2
    counts, keys = report["counts"], report["keys"]
    assert counts["held_out"]["real"] == len(keys["held_out"]["real"]) >= 10
    seen = [k for part in keys.values() for side in ("real", "synthetic") for k in part[side]]
    assert len(seen) == len(set(seen))  # no image on two sides or in two parts
    assert all(set(part["synthetic"]) <= set(part["donor"]) for part in keys.values())  # the control's other side
    assert report["frechet"] >= 0 and np.isfinite(report["kid"]) and report["synthesis"] is None


def test_broken_synthesizer_is_told_apart(shards, tmp_path):
    report = _run(shards, tmp_path, "broken")
    assert report["discriminator_auc"] > 0.9 and report["discriminator_auc_ci"][0] > 0.75
    keys = report["keys"]
    sources = {k.removesuffix("-syn") for part in keys.values() for k in part["synthetic"]}
    assert all(k.endswith("-syn") for part in keys.values() for k in part["synthetic"])
    assert not sources & {k for part in keys.values() for k in part["real"]}
    assert report["synthesis"]["held_out"]["synthesizer"] == "noise_square"
    assert report["counts"]["held_out"]["synthetic"] == report["counts"]["held_out"]["real"]
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_copy_paste_report_is_the_same_on_a_rerun(shards, tmp_path):
    one, two = (_run(shards, tmp_path / name, "copy-paste", "--epochs", "1", "--n-boot", "50") for name in "ab")
    assert {**one, "seconds": 0} == {**two, "seconds": 0}  # seeded: the same numbers on the CPU
    assert one["synthesis"]["held_out"]["synthesizer"] == "copy_paste"
    for part in one["keys"].values():  # lesions are cut from the donor side only, never from the real side
        assert part["donor"] and not set(part["donor"]) & set(part["real"])


def test_synthesizer_specs_dispatch_on_names_and_checkpoint_kinds(tmp_path, capsys):
    from streamaug.models import get_classifier
    from streamaug.models.checkpoint import save_classifier, save_translator
    from streamaug.models.registry import IdentityConfig, IdentityTranslator
    from streamaug.synth import CopyPaste, Translate

    args = cli.build_parser().parse_args(["--real", "x", "--synthesizer", "real", "--out", "o"])
    assert cli.make_synthesizer("real", args) == (None, 2.0)
    lesion = {"key": "L", "label": 1, "image": torch.rand(1, 32, 32), "boxes": torch.tensor([[8.0, 8, 16, 16]])}
    factory, _ = cli.make_synthesizer("copy-paste", args)
    assert isinstance(factory([lesion]), CopyPaste)
    factory, _ = cli.make_synthesizer("copy-paste-mask", args)
    masked = factory([{**lesion, "mask": (torch.rand(1, 32, 32) > 0.5).float()}])
    assert masked.crops.shape == "mask" and masked.crops.unmasked == 0
    path = save_translator(tmp_path / "t.pt", IdentityTranslator(IdentityConfig(8)), config=IdentityConfig(8),
                           patch_size=8, s=1.5, region="lower_limb", manifest_sha256="0" * 64, step=1)
    factory, s = cli.make_synthesizer(str(path), args)
    assert isinstance(factory([]), Translate) and s == 1.5 and cli.checkpoint_kind(path) == "translator"
    classifier = save_classifier(tmp_path / "c.pt", get_classifier("drn_tiny")())
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for spec, said in ((classifier, "a classifier checkpoint"), (tmp_path / "junk.pt", "not a streamaug checkpoint"),
                       ("copy_paste", "no file")):
        assert cli.main(["--real", "x", "--synthesizer", str(spec), "--out", str(tmp_path / "o")]) == 2
        assert said in capsys.readouterr().err


def test_an_inpainter_checkpoint_makes_its_positives_from_the_donor_side(shards, tmp_path):
    """Before: an inpainter checkpoint was refused (the report made synthetic positives from normals only)."""
    from streamaug.models.checkpoint import save_inpainter
    from streamaug.models.pix2pix import Pix2Pix, pix2pix_preset

    path = save_inpainter(tmp_path / "inpainter.pt", Pix2Pix(pix2pix_preset("tiny", image_size=32, depth=4)),
                          data_sha256="0" * 64, step=0)
    report = _run(shards, tmp_path / "out", str(path), "--epochs", "1", "--n-boot", "50")
    assert report["synthesis"]["held_out"]["synthesizer"] == "inpaint"
    for part in report["keys"].values():  # each synthetic positive is a donor-side positive, re-surrounded
        made = [k.removesuffix("-syn") for k in part["synthetic"]]
        assert made and set(made) <= set(part["donor"]) and not set(made) & set(part["real"])
    held = report["counts"]["held_out"]  # one per donor: the donor side may be a few smaller than the real side
    assert 0 < held["real"] - 3 <= held["synthetic"] <= held["real"]


def test_a_lesion_swap_makes_its_positives_from_the_donor_side(shards, tmp_path):
    report = _run(shards, tmp_path / "out", "swap", "--epochs", "1", "--n-boot", "50")
    assert report["synthesis"]["held_out"]["synthesizer"] == "copy_paste"
    assert report["synthesis"]["held_out"]["onto"] == "lesions"
    for part in report["keys"].values():  # a donor-side positive with another donor-side lesion over its own
        made = [k.removesuffix("-syn") for k in part["synthetic"]]
        assert made and set(made) <= set(part["donor"]) and not set(made) & set(part["real"])


# -- bad input: one line and exit code 2, before any work ---------------------------------------------
@pytest.fixture(scope="module")
def few(tmp_path_factory):
    """A pack with a handful of positives (about 2 in its train split)."""
    from shardgen import packed_phantom

    return packed_phantom(tmp_path_factory.mktemp("few"), n_normal=12, n_lesion=3, size=32, shard_size=8)


@pytest.mark.parametrize("args, said", [
    (["--real", "/nonexistent"], "--real /nonexistent: no such folder or file; give a folder packed by"),
    (["--split", "nosuch"], "split 'nosuch' not in .*manifest.json; it has \\['test', 'train', 'val'\\]"),
    (["--region", "nosuch"], "--region 'nosuch' has no image in --split 'train' of .* \\(regions: "),
    (["--held-out", "1"], "--held-out must lie between 0 and 1"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--out", "FILE"], "--out .*FILE is a file, not a folder"),
])
def test_cli_refuses_bad_options_with_one_line(few, tmp_path, capsys, args, said):
    """Before: --real /nonexistent, --split nosuch and --region nosuch raised tracebacks (only the
    synthesizer's setup was inside the try); --held-out 1 and --out a file failed after reading."""
    import re

    (tmp_path / "FILE").write_text("")
    args = [str(tmp_path / "FILE") if a == "FILE" else a for a in args]
    argv = ["--real", few, "--synthesizer", "real", "--out", str(tmp_path / "out"), *FAST, *args]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and re.search(said, err), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec", ["real", "copy-paste"])
def test_too_few_positives_are_named_before_the_synthesizer_runs(few, tmp_path, capsys, spec):
    """Before: copy-paste said "no lesion box found: CopyPaste needs label-1 samples with boxes"
    (make_synthesizer(donor[part]) ran before the count check), as a traceback."""
    assert cli.main(["--real", few, "--synthesizer", spec, "--out", str(tmp_path), *FAST]) == 2
    err = capsys.readouterr().err
    assert "donor-side positives" in err and "need 2 of each" in err and "read in split 'train'" in err
    assert "no lesion box" not in err and not (tmp_path / "realism.json").exists()
