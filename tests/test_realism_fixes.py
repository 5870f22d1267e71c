"""Realism report, audited leaks: a lesion swap drawing its own patient's lesion, a checkpoint trained on
the held-out real side, a site bank holding the real side's boxes, and zooms at two scales in the grid."""
from __future__ import annotations

import json
import logging

import pytest
import torch

import streamaug.eval.realism as realism
from streamaug.cli import realism as cli
from streamaug.data.select import positive_keys
from streamaug.eval.realism_grid import zoom_boxes

FAST = ["--image-size", "32", "--epochs", "1", "--batch-size", "8", "--n-boot", "50", "--threads", "1"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Phantom positives in pseudo-patient groups of 1-3 images (about 36 in the train split)."""
    from shardgen import packed_phantom

    return packed_phantom(tmp_path_factory.mktemp("fixes"), n_normal=40, n_lesion=60, size=64)


def _run(shards, out, spec, *extra):
    assert cli.main(["--real", shards, "--synthesizer", spec, "--out", str(out), *FAST, *extra]) == 0
    return json.loads((out / "realism.json").read_text())


def _spy_synthesize(monkeypatch):
    """Record each synthesis call's sources and made samples."""
    calls = []
    original = realism.synthesize

    def spy(synth, sources, n, **kw):
        made, stats = original(synth, sources, n, **kw)
        calls.append((sources, made))
        return made, stats

    monkeypatch.setattr(realism, "synthesize", spy)
    return calls


# -- 1. a lesion swap draws its lesion from another patient -------------------------------------------
def test_a_lesion_swap_never_pastes_a_lesion_of_the_sources_patient(shards, tmp_path, monkeypatch):
    """Before: CopyPaste(onto="lesions") without avoid: a donor got its own lesion, or one of another
    image of its patient, back (a "synthetic" positive that is essentially real)."""
    calls = _spy_synthesize(monkeypatch)
    report = _run(shards, tmp_path, "swap")
    swaps = 0
    for sources, made in calls:
        group = {str(s["key"]): s["meta"]["group"] for s in sources}
        assert len(set(group.values())) < len(group)  # some patient has two donors here: the check can fail
        for s in made:
            source, lesion = s["provenance"]["source_key"], s["provenance"]["lesion_key"]
            assert lesion != source and group[lesion] != group[source], (source, lesion)
            swaps += 1
    assert swaps >= 8 and report["synthesis"]["held_out"]["avoid"] == "group (else image_id)"


def test_patient_of_falls_back_to_the_image():
    assert cli.PatientOf()({"group": 3, "image_id": "a"}) == "group:3"
    assert cli.PatientOf()({"image_id": "a"}) == "image:a" and cli.PatientOf()({}) is None


# -- 2. a checkpoint trained on the positives held out as the real side --------------------------------
def _translator(path, run):
    from streamaug.models.checkpoint import save_translator
    from streamaug.models.registry import IdentityConfig, IdentityTranslator

    return str(save_translator(path, IdentityTranslator(IdentityConfig(8)), config=IdentityConfig(8), patch_size=8,
                               s=2.0, region="lower_limb", manifest_sha256="0" * 64, step=1,
                               extra=None if run is None else {"run": run}))


def test_a_checkpoint_trained_on_the_held_out_positives_is_warned_about(shards, tmp_path, caplog):
    """Before: nothing told that the real side could be the translator's own training positives."""
    path = _translator(tmp_path / "t.pt", {"shards": [shards], "split": "train", "region": None, "positives": None})
    with caplog.at_level(logging.WARNING, logger="streamaug.cli.realism"):
        report = _run(shards, tmp_path / "out", path)
    said = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert path in said and "was trained on" in said and "--positives" in said and "another --split" in said
    overlap = report["synthesizer_training_overlap"]
    assert overlap["overlap"] is True and overlap["shared"] == report["counts"]["held_out"]["real"]


def test_a_checkpoint_trained_on_other_positives_or_without_a_run_config(shards, tmp_path, caplog):
    other = sorted(positive_keys(shards, "val", None))
    assert other and not set(other) & positive_keys(shards, "train", None)
    clean = _translator(tmp_path / "clean.pt", {"shards": [shards], "split": "val", "positives": other})
    assert cli.training_positives(clean)[0] == frozenset(other)
    with caplog.at_level(logging.WARNING, logger="streamaug.cli.realism"):
        report = _run(shards, tmp_path / "clean", clean)
    assert not [r for r in caplog.records if r.name == "streamaug.cli.realism"]
    assert report["synthesizer_training_overlap"] == {"overlap": False, "shared": 0}
    bare = _translator(tmp_path / "bare.pt", None)
    with caplog.at_level(logging.WARNING, logger="streamaug.cli.realism"):
        report = _run(shards, tmp_path / "bare", bare)
    assert "cannot tell whether" in caplog.text and "no run config" in caplog.text
    assert report["synthesizer_training_overlap"] == {"overlap": "unknown", "shared": None}
    assert _run(shards, tmp_path / "cp", "copy-paste")["synthesizer_training_overlap"]["overlap"] is False


def test_training_positives_of_the_run_config(shards, tmp_path):
    lower = _translator(tmp_path / "a.pt", {"shards": [shards], "split": "train", "region": "lower_limb"})
    keys, where = cli.training_positives(lower)
    assert keys == positive_keys(shards, "train", "lower_limb") and keys and "--region lower_limb" in where
    gone = _translator(tmp_path / "b.pt", {"shards": [str(tmp_path / "nowhere")], "split": "train"})
    keys, where = cli.training_positives(gone)
    assert keys is None and "cannot be read here" in where


# -- 3. the site bank holds the synthesis side's boxes only -------------------------------------------
def test_normals_sites_never_come_from_real_side_lesion_boxes(shards, tmp_path, monkeypatch):
    """Before: the bank was every train-split lesion box of the region, the real side's included."""
    from streamaug.sites import SiteProposer

    banks = []
    original = SiteProposer.propose

    def spy(self, image, label, boxes, meta, key):
        if int(label) == 0:
            banks.append(set(self.bank.keys))
        return original(self, image, label, boxes, meta, key)

    monkeypatch.setattr(SiteProposer, "propose", spy)
    report = _run(shards, tmp_path, "copy-paste")
    real = {k for part in report["keys"].values() for k in part["real"]}
    donor = {k for part in report["keys"].values() for k in part["donor"]}
    assert banks and all(not bank & real for bank in banks)
    assert all(bank and bank <= donor for bank in banks)  # split train: the bank is the donor sides
    assert report["site_bank"] == {"records": len(banks[0]), "real_side_dropped": len(real)}


# -- 4. the grid zooms real and synthetic lesions alike -----------------------------------------------
def test_a_site_zooms_like_its_lesion():
    lesion = torch.tensor([[20.0, 30.0, 32.0, 38.0]])  # 12 x 8: larger side 12
    site = torch.tensor([[14.0, 22.0, 38.0, 46.0]])  # the square of side 2 x 12 around it
    want = [[14.0, 22.0, 38.0, 46.0]]  # twice the lesion's side
    assert zoom_boxes([lesion], 64, 64).tolist() == want == zoom_boxes([site], 64, 64, margin=2.0).tolist()
    assert zoom_boxes([torch.tensor([[0.0, 0, 4, 2], [8, 8, 14, 14]])], 64, 64).tolist() == [[3.0, 3.0, 19.0, 19.0]]
    with pytest.raises(ValueError, match="margin"):
        zoom_boxes([lesion], 64, 64, margin=0)


def test_the_grid_shows_a_swapped_lesion_at_its_sources_zoom(shards, tmp_path, monkeypatch):
    """Before: a synthetic zoom was twice the site, itself twice the lesion: half the real zoom."""
    import streamaug.synth.ops as ops

    zooms = []
    original = ops.crop_sites

    def spy(images, boxes, source, size, *args, **kw):
        zooms.append(boxes.clone())
        return original(images, boxes, source, size, *args, **kw)

    calls = _spy_synthesize(monkeypatch)
    monkeypatch.setattr(ops, "crop_sites", spy)
    _run(shards, tmp_path, "swap", "--image-size", "64", "--held-out", "0.7", "--grid-samples", "20")
    made = calls[-1][1]  # the held-out part's swaps, in grid order
    lesion = {str(s["key"]): s["boxes"] for s in calls[-1][0]}
    synthetic_zooms = zooms[-1]
    differ = 0
    for s, got in zip(made, synthetic_zooms):  # the zoom its source's own lesion gets as a real positive
        box = torch.as_tensor(lesion[s["provenance"]["source_key"]]).reshape(-1, 4)
        if len(box) > 1:  # the swap's site may be around another of its lesions
            continue
        want = zoom_boxes([box], 64, 64)[0]
        assert torch.allclose(got, want, atol=1.0), (got, want)
        differ += bool((box[:, 2:] - box[:, :2]).max() > 8)  # above the smallest zoom: the old one was twice it
    assert differ >= 2


def test_the_headline_numbers_come_from_the_held_out_part(shards, tmp_path, monkeypatch):
    """The discriminator's interval, the feature classifier's AUC and Fréchet/KID must be measured on
    the held-out images (by patient), not on what the discriminator trained on; no test said so."""
    boot, dist = [], []
    bootstrap, frechet = realism.cluster_bootstrap_auc, realism.frechet_distance
    monkeypatch.setattr(realism, "cluster_bootstrap_auc",
                        lambda y, s, g, *a, **k: boot.append((len(y), g is not None)) or bootstrap(y, s, g, *a, **k))
    monkeypatch.setattr(realism, "frechet_distance", lambda a, b: dist.append((len(a), len(b))) or frechet(a, b))
    counts = _run(shards, tmp_path, "copy-paste", "--held-out", "0.3")["counts"]
    held, feature = counts["held_out"], counts["feature_classifier_held_out"]
    assert boot == [(sum(held.values()), True), (sum(feature.values()), True)]
    assert dist == [(held["real"], held["synthetic"])]
