"""LesionStream: the label make-up of real samples at any acceptance rate, ranked filtering, exact resume."""
from __future__ import annotations

import pytest
import torch
from nested import same
from shardgen import write_shards

from streamaug import LesionStream, PseudoLabel
from streamaug.data.select import KeySet
from streamaug.models.registry import IdentityConfig, IdentityTranslator
from streamaug.sites import LesionBoxBank, SiteProposer
from streamaug.synth import CopyPaste, LesionCrops, Mix, Translate

BANK = LesionBoxBank.from_records([{"key": "L", "region": "lower_limb", "view": "frontal", "width": 32,
                                    "height": 32, "boxes": [[8, 8, 20, 20]], "label": "tumor"}])


class RateFilter:
    """A stub filter that accepts each candidate with probability ``rate`` (its own generator, with state)."""

    def __init__(self, rate: float, seed: int = 0):
        self.rate, self.generator = rate, torch.Generator().manual_seed(seed)

    def __call__(self, images):
        scores = torch.rand(len(images), generator=self.generator)
        return scores < self.rate, scores

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])


class Brightness(torch.nn.Module):
    """An untrained-looking classifier: logit = mean brightness (scores near 0.6, below any t = 0.9)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return self.w * x.flatten(1).mean(1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """60 samples, one positive in five (source share 0.2 exactly per shard of five)."""
    folder = tmp_path_factory.mktemp("lesion_stream")
    write_shards(folder, n=60, shard_size=5, size=32, lesion_every=5)
    return folder


def _stream(shards, **kw):
    kw.setdefault("translator", IdentityTranslator(IdentityConfig(patch_size=8)))
    return LesionStream(shards, sites=SiteProposer(BANK, n=4, min_intensity=0.0), min_intensity=None,
                        device_batch=8, **kw)


@pytest.mark.parametrize("rate", [0.01, 0.1, 1.0])
def test_real_label_make_up_matches_the_source_at_any_acceptance(shards, rate):
    """Before: at low acceptance the real samples were mostly positives (sources were normals taken out
    of the real stream), at 100 % they lacked positives; now the real stream is the source's."""
    stream = _stream(shards, filter=RateFilter(rate), synthetic_fraction=0.1, epoch_length=200, seed=1)
    samples = list(stream)
    real = [s for s in samples if not s["synthetic"]]
    share = sum(s["label"] == 1 for s in real) / len(real)
    assert abs(share - 0.2) < 0.05
    stats = stream.stats
    assert stats["real_positive_share"] == share
    e = stats["emitted"]
    assert e["synthetic"] == len(samples) - len(real) and e["real_positive"] + e["real_normal"] == len(real)
    assert abs(stats["synthetic_share"] - 0.1) < 0.05
    # one candidate pair per normal: about 2 / (1 - (1 - rate)^2) candidates per accepted sample
    assert stats["candidates_per_accepted"] == pytest.approx(2 / (1 - (1 - rate) ** 2), rel=0.5)


def test_ranked_filter_in_the_stream_needs_few_candidates(shards):
    strict = PseudoLabel(Brightness(), threshold=0.9)
    with pytest.raises(Exception, match="accepted no candidate"):
        list(_stream(shards, filter=strict, synthetic_fraction=0.5, epoch_length=10, max_empty_batches=3))
    ranked = PseudoLabel(Brightness(), threshold=None)
    stream = _stream(shards, filter=ranked, synthetic_fraction=0.5, epoch_length=60, seed=2)
    samples = list(stream)
    assert sum(s["synthetic"] for s in samples) == stream.stats["emitted"]["synthetic"] > 15
    assert stream.stats["candidates_per_accepted"] <= 3
    st = stream.stats  # accepted candidates left over at the end of the epoch are not emitted
    assert st["accepted"] >= st["emitted"]["synthetic"]
    assert st["candidates_per_used"] == st["generated"] / st["emitted"]["synthetic"] >= st["candidates_per_accepted"]
    assert all(s["provenance"]["score"] < 0.9 for s in samples if s["synthetic"])


def _mixed(shards, **kw):
    crops = LesionCrops.from_shards(shards, margin=2.0, size=16)
    synth = Mix([(Translate(IdentityTranslator(IdentityConfig(patch_size=8))), 1.0),
                 (CopyPaste(crops=crops, center=False), 1.0)])
    return _stream(shards, translator=None, synthesizer=synth, filter=RateFilter(0.5, seed=3), positives=shards,
                   positive_fraction=0.1, synthetic_fraction=0.3, seed=7, **kw)


def test_positives_come_in_at_their_fraction_without_a_real_pass(shards):
    """``positives=`` with ``positive_fraction=0.1`` (coin-flip mode); the folder also holds normals.
    Before: no test checked that they came, and the folder's normals came too, counted as positives."""
    stream = _mixed(shards, epoch_length=200)
    samples = list(stream)
    e = stream.stats["emitted"]
    assert len(samples) == sum(e.values()) == 200
    assert 8 <= e["positives"] <= 35  # Binomial(200, 0.1): mean 20, sd 4.2
    real_label_1 = sum(1 for s in samples if not s["synthetic"] and int(s["label"]) == 1)
    assert real_label_1 == e["real_positive"] + e["positives"]  # what positives= gives is positive


@pytest.mark.parametrize("k", [0, 5, 23, 30])  # 30: in the second synthesis round (it starts at sample 27)
def test_resume_after_k_samples_gives_the_samples_of_an_uninterrupted_run(shards, k):
    uninterrupted = _mixed(shards, epoch_length=40)
    full = list(uninterrupted)
    first = _mixed(shards, epoch_length=40)
    it = iter(first)
    head = [next(it) for _ in range(k)]
    state = first.state_dict()
    resumed = _mixed(shards, epoch_length=40)
    resumed.load_state_dict(state)
    tail = list(resumed)
    assert len(head) + len(tail) == 40
    for a, b in zip(full, head + tail):
        assert a["key"] == b["key"] and a["label"] == b["label"] and a["synthetic"] == b["synthetic"]
        assert torch.equal(a["image"], b["image"])
        assert a["provenance"] == b["provenance"]
    assert resumed.stats["emitted"] == uninterrupted.stats["emitted"]
    assert {s["provenance"]["synthesizer"] for s in full if s["synthetic"]} == {"translate", "copy_paste"}


def test_counts_carry_on_through_a_resume_into_the_next_epoch(shards):
    """What the classifier trainer does: a state saved at an epoch's end, then set_epoch(next). Before,
    the emitted counts carried on but the stage's (generated, accepted) and the filter's restarted at
    0, so candidates_per_used after such a resume was a fraction of the truth."""
    straight = _mixed(shards, epoch_length=40)
    samples = list(straight)
    first = _mixed(shards, epoch_length=40)
    list(first)
    resumed = _mixed(shards, epoch_length=40)
    resumed.load_state_dict(first.state_dict())
    for stream in (straight, resumed):
        stream.set_epoch(1)
    again = [list(stream) for stream in (straight, resumed)]
    assert [s["key"] for s in again[0]] == [s["key"] for s in again[1]] and len(again[0]) == len(samples)
    a, b = straight.stats, resumed.stats
    assert a["generated"] > first.stats["generated"] > 0  # two epochs' candidates
    for key in ("emitted", "generated", "accepted", "candidates_per_used"):
        assert a[key] == b[key], key
    assert same(straight.stage.filter.state_dict(), resumed.stage.filter.state_dict())


def test_resume_at_an_epoch_end_moves_on_to_the_next_epoch(shards):
    stream = _stream(shards, synthetic_fraction=0.3, epoch_length=12, seed=4)
    list(stream)
    state = stream.state_dict()
    again = _stream(shards, synthetic_fraction=0.3, epoch_length=12, seed=4)
    again.load_state_dict(state)
    assert list(again) == []  # that epoch is done
    again.set_epoch(1)
    stream.set_epoch(1)
    assert [s["key"] for s in again] == [s["key"] for s in stream]


def test_lesions_cut_at_another_size_than_the_stream_are_refused(shards):
    crops = LesionCrops.from_shards(shards, size=8)
    with pytest.raises(ValueError, match="resize"):
        _stream(shards, translator=None, synthesizer=CopyPaste(crops=crops, resize=64), resize=32)


@pytest.mark.parametrize("rate", [0.1, 1.0])
def test_real_pass_shows_every_real_sample_once_per_epoch_with_exact_synthetic_counts(shards, rate):
    """Before: real samples came from a resampled stream, so the real positives an epoch trained on varied
    (some twice, some never); with real_pass every epoch holds each of them exactly once."""
    stream = _stream(shards, filter=RateFilter(rate), synthetic_fraction=0.25, real_pass=True, seed=5)
    epochs = []
    for epoch in range(2):
        stream.set_epoch(epoch)
        epochs.append(list(stream))
    for samples in epochs:
        real = [s["key"] for s in samples if not s["synthetic"]]
        assert sorted(real) == sorted(set(real)) and len(real) == 60  # each real sample once
        assert sum(s["label"] == 1 for s in samples if not s["synthetic"]) == 12
        synthetic = sum(s["synthetic"] for s in samples)
        assert synthetic in (20, 21)  # floor(60 * 0.25 / 0.75 + u)
        # spread evenly: never two synthetic samples in a row (one is due every third real sample)
        flags = [s["synthetic"] for s in samples]
        assert not any(a and b for a, b in zip(flags, flags[1:]))
    assert [s["key"] for s in epochs[0]] != [s["key"] for s in epochs[1]]  # reshuffled per epoch
    with pytest.raises(ValueError, match="real_pass"):
        _stream(shards, real_pass=True, epoch_length=10)


@pytest.mark.parametrize("k", [0, 17, 81])
def test_real_pass_resumes_exactly(shards, k):
    full = list(_mixed(shards, real_pass=True))
    assert len(full) == 100  # 60 real / (1 - 0.3 - 0.1)
    first = _mixed(shards, real_pass=True)
    it = iter(first)
    head = [next(it) for _ in range(k)]
    resumed = _mixed(shards, real_pass=True)
    resumed.load_state_dict(first.state_dict())
    tail = list(resumed)
    assert [(s["key"], s["synthetic"]) for s in head + tail] == [(s["key"], s["synthetic"]) for s in full]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(full, head + tail))


def test_source_select_limits_the_synthesis_sources_not_the_real_samples(shards):
    allowed = {f"k{i:06d}" for i in (1, 2, 3, 4)}
    stream = _stream(shards, synthetic_fraction=0.25, real_pass=True, seed=3, source_select=KeySet(allowed))
    samples = list(stream)
    synthetic = [s for s in samples if s["synthetic"]]
    assert len(synthetic) in (20, 21)
    assert {s["provenance"]["source_key"] for s in synthetic} <= allowed
    assert len({s["key"] for s in samples if not s["synthetic"]}) == 60  # every real sample still shown


def test_stopping_the_iteration_frees_the_inner_loaders_workers_and_keeps_the_position(shards):
    """Before: the workers of the inner loaders lived on after the consumer stopped (until the next
    iter()), holding memory a benchmark then counted against the next arm."""
    import multiprocessing
    import time

    stream = _stream(shards, synthetic_fraction=0.25, num_workers=1, seed=3)
    before = len(multiprocessing.active_children())
    it = iter(stream)
    head = [next(it)["key"] for _ in range(10)]
    assert len(multiprocessing.active_children()) >= before + 2  # real and sources loaders, one worker each
    state = stream.state_dict()
    it.close()
    deadline = time.monotonic() + 10
    while len(multiprocessing.active_children()) > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(multiprocessing.active_children()) == before
    assert same(stream.state_dict(), state)  # the position survives the shut-down
    again = _stream(shards, synthetic_fraction=0.25, num_workers=1, seed=3)
    again.load_state_dict(state)
    fresh = _stream(shards, synthetic_fraction=0.25, num_workers=1, seed=3)
    straight = iter(fresh)
    assert [next(straight)["key"] for _ in range(10)] == head
    assert [s["key"] for s, _ in zip(again, range(5))] == [next(straight)["key"] for _ in range(5)]
