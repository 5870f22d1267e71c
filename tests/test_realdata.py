"""The whole path on real BTXRD radiographs (skipped when ../shared/data is absent)."""
from __future__ import annotations

import csv

import pytest
import torch

from streamaug import LesionStream, XRayShards, load_translator
from streamaug.cli.pack import pack
from streamaug.train.translator import TranslatorRun, train_translator


@pytest.fixture(scope="module")
def btxrd_subset(shared_data, tmp_path_factory):
    """The first 60 tumour and 120 normal rows of the lower limb, packed into shards."""
    root = shared_data / "btxrd"
    with open(root / "metadata.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["region"] == "lower_limb"]
    keep = [r for r in rows if r["label"] == "tumor"][:60] + [r for r in rows if r["label"] == "normal"][:120]
    out = tmp_path_factory.mktemp("btxrd")
    with open(out / "subset.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)
    manifest = pack(root, out / "subset.csv", out / "shards", shard_size=32, progress=False)
    assert manifest["count"] == len(keep)
    return out / "shards"


def test_stream_with_sites_on_real_images(btxrd_subset):
    samples = list(XRayShards(btxrd_subset, split="train", sites=True, shuffle=False, equalize="none"))
    assert all(s["image"].shape == (1, 256, 256) for s in samples)
    normals = [s for s in samples if s["label"] == 0]
    with_sites = [s for s in normals if len(s["sites"])]
    assert len(with_sites) > 0.5 * len(normals)
    for s in with_sites:
        x0, y0, x1, y1 = s["sites"].T
        assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 256).all() and (y1 <= 256).all()
        for a, b, c, d in s["sites"].tolist():
            assert float(s["image"][0, b:d, a:c].mean()) >= 0.15  # no-bone crops were dropped


def test_translator_and_lesion_stream_on_real_images(btxrd_subset, tmp_path):
    ckpt = train_translator(TranslatorRun(shards=[str(btxrd_subset)], out=str(tmp_path), preset="tiny", steps=4,
                                          split="train", region="lower_limb", batch_size=4, sample_every=4,
                                          ckpt_every=4), progress=False)
    translator = load_translator(ckpt)
    assert translator.meta["region"] == "lower_limb" and translator.meta["step"] == 4
    stream = LesionStream(btxrd_subset, split="train", translator=ckpt, synthetic_fraction=0.5,
                          epoch_length=24, device_batch=8)
    samples = list(stream)
    syn = [s for s in samples if s["synthetic"]]
    assert len(samples) == 24 and syn
    for s in syn:
        x0, y0, x1, y1 = s["provenance"]["box"]
        assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256
        assert s["provenance"]["translator"] == translator.id


def test_copy_paste_and_inpaint_streams_on_real_images(btxrd_subset, tmp_path):
    """The other two synthesizers in the stream on real radiographs, each epoch one exact pass over the
    real samples: copy-paste names its lesion; the inpainter keeps each source's lesion box bit-exactly."""
    from streamaug.synth import CopyPaste, Inpaint
    from streamaug.train.inpainter import InpainterRun, train_inpainter

    real = {s["key"]: s for s in XRayShards(btxrd_subset, split="train", shuffle=False, equalize="none",
                                            resize=128)}
    paste = LesionStream(btxrd_subset, split="train", resize=128, device_batch=8, real_pass=True,
                         synthesizer=CopyPaste(str(btxrd_subset), split="train", resize=128),
                         synthetic_fraction=0.2)
    samples = list(paste)
    assert sorted(s["key"] for s in samples if not s["synthetic"]) == sorted(real)  # every real sample once
    made = [s for s in samples if s["synthetic"]]
    assert made and all(s["provenance"]["lesion_key"] in real for s in made)

    ckpt = train_inpainter(InpainterRun(shards=[str(btxrd_subset)], out=str(tmp_path), preset="tiny", steps=3,
                                        split="train", normals=True, batch_size=4, sample_every=3, ckpt_every=3),
                           progress=False)
    inpaint = LesionStream(btxrd_subset, split="train", resize=128, device_batch=8, real_pass=True,
                           synthesizer=Inpaint(ckpt), synthetic_fraction=0.2)
    made = [s for s in inpaint if s["synthetic"]]
    assert made
    for s in made:
        source = real[s["provenance"]["source_key"]]
        assert source["label"] == 1
        x0, y0, x1, y1 = (int(v) for v in s["provenance"]["box"])
        assert torch.equal(s["image"][:, y0:y1, x0:x1], source["image"][:, y0:y1, x0:x1])


def test_lesion_swap_on_real_images(btxrd_subset):
    """CopyPaste(onto="lesions") on real radiographs: each synthetic positive is a real positive whose
    widened lesion box (and nothing else) now holds another real lesion; every real sample still once."""
    from streamaug.synth import CopyPaste, LesionBoxSites

    real = {s["key"]: s for s in XRayShards(btxrd_subset, split="train", shuffle=False, equalize="none",
                                            resize=128)}
    swap = LesionStream(btxrd_subset, split="train", resize=128, device_batch=8, real_pass=True,
                        synthesizer=CopyPaste(str(btxrd_subset), split="train", resize=128, onto="lesions"),
                        synthetic_fraction=0.2)
    samples = list(swap)
    assert sorted(s["key"] for s in samples if not s["synthetic"]) == sorted(real)
    made = [s for s in samples if s["synthetic"]]
    assert len(made) >= 0.2 * len(samples) - 1
    for s in made:
        p = s["provenance"]
        source = real[p["source_key"]]
        assert source["label"] == 1 and real[p["lesion_key"]]["label"] == 1
        assert p["box"] in LesionBoxSites(2.0, clip=False)(dict(source))["sites"].tolist()  # may reach past the border
        x0, y0, x1, y1 = (max(v, 0) for v in p["box"])
        assert s["boxes"].tolist() == [[x0, y0, min(x1, 128), min(y1, 128)]]
        outside = torch.ones(128, 128, dtype=torch.bool)
        outside[y0:y1, x0:x1] = False
        assert torch.equal(s["image"][0][outside], source["image"][0][outside])
        assert not torch.equal(s["image"], source["image"])
    assert sum(s["provenance"]["lesion_key"] != s["provenance"]["source_key"] for s in made) > 0.8 * len(made)


def test_patch_scorer_learns_real_lesions_and_ranks_copy_paste_sites(btxrd_subset, tmp_path):
    """A patch scorer trained on real lesion crops vs normal sites tells held-out ones apart, and as a
    site filter ranks the copy-paste candidates of the stream (more scored than accepted)."""
    import json

    from streamaug import PseudoLabel
    from streamaug.synth import CopyPaste
    from streamaug.train.scorer import ScorerRun, train_scorer

    ckpt = train_scorer(ScorerRun(shards=[str(btxrd_subset)], out=str(tmp_path), split="train", region="lower_limb",
                                  resize=128, patch_size=32, steps=200, eval_every=25, holdout=0.3, seed=0),
                        progress=False)
    chosen = json.loads((tmp_path / "run.json").read_text())["chosen"]
    assert chosen["heldout_auc"] > 0.65, chosen
    filt = PseudoLabel(ckpt, threshold=None)
    stream = LesionStream(btxrd_subset, split="train", resize=128, device_batch=8, real_pass=True,
                          synthesizer=CopyPaste(str(btxrd_subset), split="train", resize=128), filter=filt,
                          synthetic_fraction=0.2)
    made = [s for s in stream if s["synthetic"]]
    assert made and all(0.0 <= s["provenance"]["score"] <= 1.0 for s in made)
    assert filt.on == "site" and stream.stats["candidates_per_accepted"] > 1.2


def test_age_matched_sources_on_real_images(btxrd_subset):
    """Synthesis sources drawn from the normals so that their age follows the positives' (BTXRD's
    ``age`` column, stored as text in the shards' JSON): as many normals in each positive age quintile,
    and a copy-paste stream that makes its synthetic positives from those normals only."""
    import numpy as np

    from streamaug.data.select import KeySelect, matched_normals
    from streamaug.data.shardlist import expand_urls, scan_metadata
    from streamaug.synth import CopyPaste

    matched, info = matched_normals(str(btxrd_subset), "train", KeySelect("lower_limb"), "age", seed=0)
    ages = {k: float(m["age"]) for s in expand_urls(str(btxrd_subset), "train") for k, m in scan_metadata(s)}
    assert info["unmatched_bins"] == 0 and len(info["edges"]) == 4 and 0 < info["sources"] < info["normals"]
    counts = np.bincount(np.searchsorted(info["edges"], [ages[k] for k in matched.keys], side="right"), minlength=5)
    assert counts.tolist() == [info["per_bin"]] * 5
    median = float(np.median([ages[k] for k in matched.keys]))
    assert info["edges"][1] <= median <= info["edges"][2]  # the positives' middle quintile

    stream = LesionStream(btxrd_subset, split="train", resize=128, device_batch=8, real_pass=True,
                          synthesizer=CopyPaste(str(btxrd_subset), split="train", resize=128),
                          synthetic_fraction=0.2, source_select=matched)
    made = [s for s in stream if s["synthetic"]]
    assert made and {s["provenance"]["source_key"] for s in made} <= matched.keys
