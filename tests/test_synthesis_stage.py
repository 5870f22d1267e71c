"""SynthesisStage and LesionStream: locality, provenance, filter semantics, proportions, seeds."""
from __future__ import annotations

import pytest
import torch
from shardgen import write_shards
from torch.utils.data import DataLoader

from streamaug import LesionStream, NoAcceptedCandidates, PseudoLabel, SynthesisStage, XRayShards, collate_xray
from streamaug.sites import LesionBoxBank, SiteProposer
from streamaug.synth.base import Made, Synthesizer


class Darken(torch.nn.Module):
    """A stand-in translator: halves the patch (a visible, known change)."""

    patch_size = 8
    id = "darken-test"

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def translate(self, patches):
        return patches * 0.5


class RandomDarken(Synthesizer):
    """A stand-in synthesizer with randomness: darkens each site by a factor drawn from the stage's generator."""

    name = "random-darken"

    def generate_parameters(self, images, boxes, source, generator=None, meta=None):
        return {"factor": 0.2 + 0.6 * torch.rand(len(boxes), generator=generator)}

    def apply(self, images, boxes, source, params):
        out = images[source].clone()
        for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            out[k, :, y0:y1, x0:x1] *= float(params["factor"][k])
        return Made(out, None, None)


class MeanScore(torch.nn.Module):
    """A stand-in classifier whose logit falls with mean brightness: darker = more 'lesion'."""

    def __init__(self, center):
        super().__init__()
        self.center = center
        self.w = torch.nn.Parameter(torch.tensor(-200.0))

    def forward(self, x):
        return self.w * (x.flatten(1).mean(1) - self.center)


def bright_batch(b=4, size=32):
    g = torch.Generator().manual_seed(0)
    images = 0.5 + 0.4 * torch.rand(b, 1, size, size, generator=g)
    sites = [torch.tensor([[4, 6, 20, 22]]) for _ in range(b)]
    return {"image": images, "label": torch.zeros(b, dtype=torch.long), "sites": sites,
            "key": [f"n{i}" for i in range(b)], "boxes": [torch.zeros(0, 4)] * b}


def test_synthesize_changes_only_the_site():
    batch = bright_batch()
    stage = SynthesisStage(Darken(), blend_n=2.0)
    boxes, source = stage.choose_sites(batch["sites"], [0, 2])
    out = stage.synthesize(batch["image"], boxes, source)
    assert out.images.shape == (2, 1, 32, 32) and out.source.tolist() == [0, 2]
    for j, i in enumerate(out.source.tolist()):
        diff = (out.images[j] - batch["image"][i]).abs()[0]
        inside = torch.zeros_like(diff, dtype=torch.bool)
        inside[6:22, 4:20] = True
        assert float(diff[~inside].max()) == 0.0  # untouched outside, bit-exact
        assert float(diff[14, 12]) > 0.1  # the site centre (alpha ~ 1) is darkened
    assert out.keep.all() and torch.isnan(out.scores).all()
    assert stage.stats["generated"] == 2 and stage.stats["accepted"] == 2


def test_dark_crops_are_dropped_before_translation():
    seen = []

    class Counting(Darken):
        def translate(self, patches):
            seen.append(len(patches))
            return super().translate(patches)

    batch = bright_batch()
    batch["image"][1] = 0.05
    stage = SynthesisStage(Counting(), min_intensity=0.15)
    boxes, source = stage.choose_sites(batch["sites"], [0, 1])
    out = stage.synthesize(batch["image"], boxes, source)
    assert out.source.tolist() == [0] and stage.stats["dark_crops"] == 1
    assert seen == [1]  # the dark crop never reached the translator


@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
def test_pseudo_label_threshold_semantics(threshold):
    images = torch.linspace(0.2, 0.8, 7).view(7, 1, 1, 1).expand(7, 1, 8, 8).contiguous()
    f = PseudoLabel(MeanScore(center=0.5), threshold=threshold)
    keep, scores = f(images)
    assert torch.equal(keep, scores >= threshold)  # score >= t is kept, including equality
    assert bool(scores[0] > scores[-1])  # darker -> higher lesion score
    assert f.stats.generated == 7 and f.stats.accepted == int(keep.sum())
    assert f.stats.rate == pytest.approx(int(keep.sum()) / 7)


def test_apply_replaces_accepted_normals_and_records_provenance():
    batch = bright_batch(b=8)
    stage = SynthesisStage(Darken(), fraction=0.25, seed=1)
    out = stage.apply(batch)
    assert out["image"].shape == batch["image"].shape
    syn = out["synthetic"].nonzero().flatten().tolist()
    assert len(syn) == 2 and all(out["label"][i] == 1 for i in syn)
    for i in syn:
        prov = out["provenance"][i]
        assert prov["source_key"] == f"n{i}" and prov["box"] == [4, 6, 20, 22] and out["key"][i] == f"n{i}-syn"
        assert prov["translator"] == "darken-test" and prov["blend_n"] == 2.0 and prov["synthesizer"] == "translate"
        assert out["boxes"][i].tolist() == [[4.0, 6.0, 20.0, 22.0]]
    for i in set(range(8)) - set(syn):
        assert torch.equal(out["image"][i], batch["image"][i]) and out["label"][i] == 0


def test_wrap_on_a_plain_dataloader(tmp_path):
    write_shards(tmp_path, n=24, shard_size=6, size=32, lesion_every=3)
    bank = LesionBoxBank.from_records([{"key": "L", "region": "lower_limb", "view": "frontal", "width": 32,
                                        "height": 32, "boxes": [[8, 8, 20, 20]], "label": "tumor"}])
    ds = XRayShards(tmp_path, sites=SiteProposer(bank, s=1.0, n=1, min_intensity=0.0))
    loader = DataLoader(ds, batch_size=6, num_workers=2, collate_fn=collate_xray)
    stage = SynthesisStage(Darken(), fraction=0.5, min_intensity=None)
    batches = list(stage.wrap(loader))
    assert sum(len(b["image"]) for b in batches) == 24
    n_syn = sum(int(b["synthetic"].sum()) for b in batches)
    assert n_syn == 12  # 3 of 6 per batch; each batch has 4 normals with sites
    assert all(b["label"][b["synthetic"]].eq(1).all() for b in batches)


def _stream(tmp_path, **kw):
    write_shards(tmp_path, n=40, shard_size=5, size=32, lesion_every=5)
    bank = LesionBoxBank.from_records([{"key": "L", "region": "lower_limb", "view": "frontal", "width": 32,
                                        "height": 32, "boxes": [[8, 8, 20, 20]], "label": "tumor"}])
    return LesionStream(tmp_path, translator=Darken(), sites=SiteProposer(bank, n=1, min_intensity=0.0),
                        min_intensity=None, device_batch=8, **kw)


def test_lesion_stream_proportions_and_provenance(tmp_path):
    stream = _stream(tmp_path, synthetic_fraction=0.3, epoch_length=400, seed=3)
    samples = list(stream)
    syn = [s for s in samples if s["synthetic"]]
    assert len(samples) == 400
    assert abs(len(syn) / 400 - 0.3) < 0.07
    assert stream.stats["emitted"]["synthetic"] == len(syn)
    for s in syn[:10]:
        assert s["label"] == 1 and s["provenance"]["source_key"] + "-syn" == s["key"]
        x0, y0, x1, y1 = s["provenance"]["box"]
        assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32


def test_lesion_stream_is_deterministic_with_a_seed(tmp_path):
    a = [(s["key"], float(s["image"].sum())) for s in _stream(tmp_path / "a", epoch_length=60, seed=5)]
    b = [(s["key"], float(s["image"].sum())) for s in _stream(tmp_path / "b", epoch_length=60, seed=5)]
    c = [(s["key"], float(s["image"].sum())) for s in _stream(tmp_path / "c", epoch_length=60, seed=6)]
    assert a == b and a != c


def test_lesion_stream_epochs_differ_and_replay(tmp_path):
    stream = _stream(tmp_path, epoch_length=30, seed=2)
    first = [s["key"] for s in stream]
    stream.set_epoch(1)
    second = [s["key"] for s in stream]
    stream.set_epoch(0)
    assert second != first and [s["key"] for s in stream] == first


def test_filter_that_accepts_nothing_raises_instead_of_hanging(tmp_path):
    stream = _stream(tmp_path, synthetic_fraction=1.0, epoch_length=5, max_empty_batches=3,
                     filter=PseudoLabel(MeanScore(center=-5.0), threshold=0.99))
    with pytest.raises(NoAcceptedCandidates, match="accepted no candidate"):
        list(stream)


# ----------------------------------------------------------------------------- one synthesizer interface


def test_translate_with_the_identity_translator_reproduces_the_old_stage():
    """crop -> translate -> clamp -> paste_blend, as the stage did before synthesizers: bit-equal."""
    from streamaug.models.registry import IdentityConfig, IdentityTranslator
    from streamaug.synth import Translate, crop_sites, paste_blend

    batch = bright_batch(b=5)
    boxes = torch.tensor([[4, 6, 20, 22], [0, 0, 12, 9], [10, 3, 31, 30]])
    source = torch.tensor([0, 3, 4])
    old = paste_blend(batch["image"][source], crop_sites(batch["image"], boxes, source, 8).clamp(0, 1), boxes,
                      torch.arange(3), 3.0)
    translator = IdentityTranslator(IdentityConfig(patch_size=8))
    for stage in (SynthesisStage(translator, blend_n=3.0, min_intensity=None),
                  SynthesisStage(synthesizer=Translate(translator, blend_n=3.0), min_intensity=None)):
        out = stage.synthesize(batch["image"], boxes, source)
        assert torch.equal(out.images, old) and out.keep.all()
        assert stage.provenance(out, 0, "n0")["translator"] == "IdentityTranslator"


def test_no_extra_candidates_without_a_filter_and_the_fraction_is_of_the_batch():
    stage = SynthesisStage(Darken(), fraction=0.25, oversample=2.0, min_intensity=None)
    out = stage.apply(bright_batch(b=8))
    assert int(out["synthetic"].sum()) == 2  # a share of the whole batch: 0.25 * 8
    assert stage.stats["generated"] == 2 and stage.stats["candidates_per_accepted"] == 1.0
    assert stage.stats["achieved_fraction"] == 0.25 and stage.stats["asked_fraction"] == 0.25


def test_apply_carries_rounding_and_reports_a_shortfall():
    stage = SynthesisStage(Darken(), fraction=0.3, min_intensity=None)
    got = [int(stage.apply(bright_batch(b=5))["synthetic"].sum()) for _ in range(10)]
    assert sum(got) == 15 and set(got) <= {1, 2}  # 0.3 * 5 = 1.5 per batch, carried: exact over 10
    few = bright_batch(b=8)
    few["label"][:7] = 1  # one normal: 2 were asked, 1 is possible
    stage = SynthesisStage(Darken(), fraction=0.25, min_intensity=None)
    stage.apply(few)
    assert stage.stats["achieved_fraction"] == 1 / 8 and stage.stats["asked_fraction"] == 0.25


# ----------------------------------------------------------------------------- a filter that ranks


def varied_batch(b=32, size=32, seed=0):
    """Normals of different brightness, four sites each: candidates score differently."""
    g = torch.Generator().manual_seed(seed)
    images = (0.3 + 0.6 * torch.rand(b, 1, 1, 1, generator=g)) * torch.ones(b, 1, size, size)
    sites = [torch.tensor([[2, 2, 14, 14], [16, 2, 30, 16], [2, 16, 18, 30], [12, 12, 28, 28]])] * b
    return {"image": images, "label": torch.zeros(b, dtype=torch.long), "sites": sites,
            "key": [f"n{i}" for i in range(b)], "boxes": [torch.zeros(0, 4)] * b}


def test_ranked_mode_delivers_the_fraction_where_a_threshold_passes_nothing():
    strict = MeanScore(center=0.0)  # every candidate scores below 0.9
    fixed = SynthesisStage(Darken(), filter=PseudoLabel(strict, threshold=0.9), fraction=0.25, min_intensity=None)
    assert int(fixed.apply(varied_batch())["synthetic"].sum()) == 0
    ranked = PseudoLabel(strict, threshold=None)  # mode "rank", no floor
    stage = SynthesisStage(Darken(), filter=ranked, fraction=0.25, min_intensity=None)
    out = stage.apply(varied_batch())
    syn = out["synthetic"].nonzero().flatten()
    assert len(syn) == 8 and ranked.mode == "rank"
    assert stage.stats["candidates_per_accepted"] == 2.0 <= 3  # oversample 2 at the defaults
    batch = varied_batch(seed=1)
    boxes, source, want = stage.plan(batch, 8)
    res = stage.synthesize(batch["image"], boxes, source, want=want)
    assert len(boxes) == 16 and int(res.keep.sum()) == 8  # the best 8 of 16 candidates
    assert bool(res.scores[res.keep].min() >= res.scores[~res.keep].max())


def test_ranked_mode_keeps_the_best_and_the_threshold_stays_a_floor():
    images = torch.linspace(0.2, 0.8, 8).view(8, 1, 1, 1).expand(8, 1, 8, 8).contiguous()
    f = PseudoLabel(MeanScore(center=0.5), threshold=None)
    keep, scores = f(images, want=3)
    assert keep.tolist() == [True, True, True] + [False] * 5  # the darkest three score highest
    floor = PseudoLabel(MeanScore(center=0.5), threshold=0.5, mode="rank")
    keep, scores = floor(images, want=6)
    assert keep.tolist() == (scores >= 0.5).tolist() and int(keep.sum()) == 4
    keep, _ = f(images, want=3, groups=torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    assert keep.tolist() == [True, False, True, False, True, False, False, False]
    with pytest.raises(ValueError, match="needs a threshold"):
        PseudoLabel(MeanScore(0.5), threshold=None, mode="threshold")


def test_calibrate_sets_the_threshold_from_real_positive_scores():
    f = PseudoLabel(MeanScore(center=0.5), threshold=0.9)
    positives = {"image": torch.linspace(0.3, 0.7, 5).view(5, 1, 1, 1).expand(5, 1, 4, 4),
                 "label": torch.tensor([1, 1, 0, 1, 1])}
    scores = f.positive_scores([positives])
    assert len(scores) == 4
    t = f.calibrate(scores, quantile=0.25)
    assert f.threshold == t == pytest.approx(float(torch.quantile(scores.double(), 0.25)))
    keep, s = f(positives["image"])
    assert torch.equal(keep, s >= t)


# ----------------------------------------------------------------------------- resume of stage.wrap


def test_wrap_resumes_with_a_stateful_loader(tmp_path):
    from torchdata.stateful_dataloader import StatefulDataLoader

    write_shards(tmp_path, n=48, shard_size=6, size=32, lesion_every=3)
    bank = LesionBoxBank.from_records([{"key": "L", "region": "lower_limb", "view": "frontal", "width": 32,
                                        "height": 32, "boxes": [[8, 8, 20, 20]], "label": "tumor"}])

    def wrapped():
        ds = XRayShards(tmp_path, sites=SiteProposer(bank, s=1.0, n=3, min_intensity=0.0), seed=4)
        loader = StatefulDataLoader(ds, batch_size=6, collate_fn=collate_xray)
        rate = PseudoLabel(MeanScore(center=0.6), threshold=None)
        # RandomDarken: the stage's generator decides every image made, so its state must come back
        out = SynthesisStage(synthesizer=RandomDarken(), filter=rate, fraction=0.4, min_intensity=None,
                             seed=9).wrap(loader)
        out.set_epoch(2)
        return out

    def rows(batches):
        return [(b["key"], b["label"].tolist(), b["image"]) for b in batches]

    full = rows(wrapped())
    first = wrapped()
    it = iter(first)
    head = rows([next(it) for _ in range(3)])
    state = first.state_dict()
    again = wrapped()
    again.load_state_dict(state)
    tail = rows(again)
    assert len(full) == 8 and len(tail) == 5
    for (k1, l1, x1), (k2, l2, x2) in zip(full, head + tail):
        assert k1 == k2 and l1 == l2 and torch.equal(x1, x2)
