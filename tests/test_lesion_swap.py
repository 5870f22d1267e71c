"""Lesion swap (``CopyPaste(onto="lesions")``): another real lesion pasted over a positive's own lesion
box; the sites around the boxes; the stream reads positives; a Mix must agree on its sites."""
from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest
import torch
from shardgen import write_shards
from test_copy_paste import PLAIN, lesion

from streamaug import LesionStream, XRayShards
from streamaug.synth import CopyPaste, Inpaint, LesionBoxSites, LesionCrops, Mix, SynthesisStage, source_sites

BOX = (10, 12, 26, 30)  # 16 x 18 px: with margin 2 the site is the 36 px square around its centre (18, 21)


def test_lesion_box_sites_widen_by_the_margin_around_the_centre_and_clip():
    sample = {"image": torch.zeros(1, 48, 40), "boxes": torch.tensor([list(BOX), [30., 2., 38., 6.]])}
    assert LesionBoxSites(2.0)(sample)["sites"].tolist() == [[0, 3, 36, 39], [26, 0, 40, 12]]
    assert LesionBoxSites()(sample)["sites"].tolist() == [list(BOX), [30, 2, 38, 6]]
    with pytest.raises(ValueError, match="margin"):
        LesionBoxSites(0.5)


def test_swap_covers_the_own_lesion_with_another_and_changes_only_the_site():
    donor = lesion("L7", (20, 20, 36, 36))  # bright (0.9) 16 px lesion
    swap = CopyPaste(crops=LesionCrops.from_samples([donor], size=32), onto="lesions", **PLAIN)
    assert swap.source_label == 1 and source_sites(swap) == LesionBoxSites(2.0, clip=False)
    positive = lesion("P1", (22, 18, 38, 34))
    positive["image"][:, 18:34, 22:38] = 0.05  # its own lesion: dark
    site = LesionBoxSites(2.0)(dict(positive))["sites"]
    stage = SynthesisStage(synthesizer=swap, seed=0)
    assert stage.bone is None  # a positive's lesion site is never dropped as dark
    out = stage.synthesize(positive["image"][None], site, torch.tensor([0]))
    diff = (out.images[0] - positive["image"]).abs()[0]
    x0, y0, x1, y1 = site[0].tolist()
    inside = torch.zeros_like(diff, dtype=torch.bool)
    inside[y0:y1, x0:x1] = True
    assert float(diff[~inside].max()) == 0.0
    assert float(out.images[0, 0, 24:28, 28:32].min()) > 0.85  # the donor's lesion where the own one was
    assert stage.provenance(out, 0, "P1")["lesion_key"] == "L7"
    assert swap.describe()["onto"] == "lesions"
    with pytest.raises(ValueError, match="onto"):
        CopyPaste(crops=LesionCrops.from_samples([donor], size=8), onto="bones")


def test_a_site_filter_may_score_a_swap_but_a_mix_must_agree_on_the_sites():
    crops = LesionCrops.from_samples([lesion("L7", (20, 20, 36, 36))], size=8)
    ranked = SynthesisStage(synthesizer=CopyPaste(crops=crops, onto="lesions"), filter=SimpleNamespace(on="site"))
    assert ranked.source_label == 1 and ranked.filter.on == "site"  # a swap changes its site: no refusal
    with pytest.raises(ValueError, match="different labels"):
        SynthesisStage(synthesizer=Mix([CopyPaste(crops=crops), CopyPaste(crops=crops, onto="lesions")]))
    from streamaug.models.pix2pix import Pix2Pix, pix2pix_preset

    inpaint = Inpaint(Pix2Pix(pix2pix_preset("tiny", image_size=32, depth=4)))
    with pytest.raises(ValueError, match="different sites"):
        source_sites(Mix([CopyPaste(crops=crops, onto="lesions"), inpaint]))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """48 px images, one positive in three, each with box BOX and its own noise."""
    folder = tmp_path_factory.mktemp("swap")
    write_shards(folder, n=30, shard_size=6, size=48, lesion_every=3, box=BOX)
    return folder


def test_lesion_stream_swaps_lesions_between_real_positives(shards):
    sources = {s["key"]: s for s in XRayShards(shards, shuffle=False, equalize="none")}
    stream = LesionStream(shards, synthesizer=CopyPaste(shards, onto="lesions", size=16), synthetic_fraction=0.4,
                          device_batch=6, epoch_length=30, seed=1)
    samples = list(stream)
    made = [s for s in samples if s["synthetic"]]
    assert len(made) == stream.stats["emitted"]["synthetic"] > 5
    site = [0, 3, 36, 39]
    for s in made:
        p = s["provenance"]
        source = sources[p["source_key"]]
        assert source["label"] == 1 and sources[p["lesion_key"]]["label"] == 1 and s["label"] == 1
        assert p["box"] == site and s["boxes"].tolist() == [site]
        outside = torch.ones(48, 48, dtype=torch.bool)
        outside[3:39, 0:36] = False
        assert torch.equal(s["image"][0][outside], source["image"][0][outside])
    assert any(s["provenance"]["lesion_key"] != s["provenance"]["source_key"] for s in made)
    assert {s["label"] for s in samples if not s["synthetic"]} == {0, 1}


def _kind(key, bone, group):
    sample = lesion(key, (20, 20, 36, 36))
    sample["meta"] = {"bone": bone, "group": group}
    return sample


def test_match_and_avoid_draw_lesions_of_the_sites_kind_from_another_patient():
    crops = LesionCrops.from_samples([_kind("A1", "humerus", 1), _kind("A2", "humerus", 2), _kind("H3", "hand", 3),
                                      _kind("A4", "humerus", 1)], size=8)
    assert crops.metas[2] == {"bone": "hand", "group": 3}
    swap = CopyPaste(crops=crops, onto="lesions", match="bone", avoid="group")
    boxes = torch.tensor([[16, 16, 40, 40]] * 60)  # every lesion's size matches
    source = torch.arange(60) % 4
    meta = [{"bone": "humerus", "group": 1}, {"bone": "hand", "group": 3}, {"bone": "femur", "group": 9}, None]
    params = swap.generate_parameters(None, boxes, source, torch.Generator().manual_seed(0), meta)
    drawn = {i: {crops.keys[j] for j in params["lesion"][source == i].tolist()} for i in range(4)}
    assert drawn[0] == {"A2"}  # a humerus of another patient: not A1 / A4 (its own patient), not the hand
    assert drawn[1] == {"A1", "A2", "A4"}  # the only hand is its own patient's: any other patient's lesion
    assert drawn[2] == drawn[3] == {"A1", "A2", "H3", "A4"}  # no femur lesion, no meta: all are allowed
    assert swap.describe()["match"] == "bone" and swap.describe()["avoid"] == "group"
    with pytest.raises(ValueError, match="meta"):
        swap.generate_parameters(None, boxes, source, torch.Generator().manual_seed(0))
    plain = CopyPaste(crops=crops, onto="lesions")  # without match / avoid the meta changes no draw
    one, two = (plain.generate_parameters(None, boxes, source, torch.Generator().manual_seed(0), m) for m in (None, meta))
    assert all(torch.equal(one[name], two[name]) for name in one)
    assert pickle.loads(pickle.dumps(swap)).generate_parameters(
        None, boxes, source, torch.Generator().manual_seed(0), meta)["lesion"].tolist() == params["lesion"].tolist()
