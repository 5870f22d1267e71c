"""python -m streamaug.train scorer and the site filter: the scorer learns a visible lesion, keeps its
best held-out step, says ``on: site`` in its checkpoint; the stage hands a site filter the blended sites."""
from __future__ import annotations

import json

import pytest
import torch
from shardgen import write_shards

from streamaug import PseudoLabel, SynthesisStage
from streamaug.models.registry import IdentityTranslator
from streamaug.synth import Translate
from streamaug.synth.ops import crop_sites
from streamaug.train.__main__ import main as train_main
from streamaug.train.classifier_data import RunConfig, build_filter
from streamaug.train.scorer import ScorerRun


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    """A scorer trained on shards whose lesion boxes are dark squares in grey noise."""
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, n=48, shard_size=16, size=48, lesion_every=3, box=(14, 14, 30, 30), lesion_value=20)
    out = tmp_path_factory.mktemp("scorer")
    train_main(["scorer", "--shards", str(folder), "--out", str(out), *_SCORER_ARGS, "--steps", "40"])
    return out, out / "scorer.pt"


_SCORER_ARGS = ["--split", "all", "--eval-every", "10", "--patch-size", "16", "--batch-size", "8", "--s", "1.5", "--n",
                "2", "--holdout", "0.3", "--crops-per-box", "2"]


def test_the_checkpoint_holds_the_chosen_steps_weights(scorer, tmp_path, monkeypatch):
    """scorer.pt must be the chosen step's model, not the last step's: held-out AUCs scripted so that
    step 20 of 40 is best, and the model's weights kept at each evaluation."""
    from streamaug.train import scorer as scorer_module

    out, _ = scorer
    kept = {}
    script = iter([0.5, 0.9, 0.7, 0.6])

    def scripted(model, data):
        kept[len(kept) * 10 + 10] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return next(script)

    monkeypatch.setattr(scorer_module, "heldout_auc", scripted)
    shards = json.loads((out / "run.json").read_text())["run"]["shards"]
    train_main(["scorer", "--shards", *shards, "--out", str(tmp_path / "s"), *_SCORER_ARGS, "--steps", "40"])
    assert json.loads((tmp_path / "s" / "run.json").read_text())["chosen"]["step"] == 20
    saved = torch.load(tmp_path / "s" / "scorer.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in kept[20].items())
    assert not all(torch.equal(saved[k], v) for k, v in kept[40].items())


def test_scorer_learns_the_lesion_and_keeps_its_best_step(scorer):
    out, _ = scorer
    run = json.loads((out / "run.json").read_text())
    aucs = [h["heldout_auc"] for h in run["history"]]
    assert [h["step"] for h in run["history"]] == [10, 20, 30, 40] and None not in aucs
    assert run["chosen"]["heldout_auc"] == max(aucs) and run["chosen"]["heldout_auc"] > 0.9
    assert run["chosen"]["step"] == run["history"][aucs.index(max(aucs))]["step"]  # the first best step
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 40 and log[9]["heldout_auc"] == aucs[0]
    assert (out / "roc.png").stat().st_size > 0
    assert run["data"]["heldout_lesion_patches"] > 0 and run["data"]["lesion_patches"] > 0


def test_the_checkpoint_makes_a_site_filter_that_ranks_dark_squares_first(scorer):
    _, path = scorer
    f = PseudoLabel(path, threshold=None)
    assert (f.on, f.mode, f.input_size) == ("site", "rank", (16, 16))
    noise = torch.rand(6, 1, 16, 16) * 0.7 + 0.25
    lesion = noise.clone()
    lesion[:3, :, 4:12, 4:12] = 20 / 255
    keep, scores = f(torch.cat([noise[3:], lesion[:3]]), want=3)
    assert keep.tolist() == [False] * 3 + [True] * 3 and float(scores[3:].min()) > float(scores[:3].max())
    assert ScorerRun().eval_every == 50  # the CLI's defaults are the dataclass's


def test_the_stage_hands_a_site_filter_the_blended_sites():
    seen = []

    class Darkness(torch.nn.Module):  # logit = how dark the centre is; records what it was given
        def forward(self, x):
            seen.append(x.clone())
            return -x[..., 3:5, 3:5].mean((-3, -2, -1))

    images = torch.full((2, 1, 32, 32), 0.8)
    images[1, :, 20:28, 20:28] = 0.3  # a dark patch in image 1
    f = PseudoLabel(Darkness(), threshold=None, on="site", input_size=8)
    stage = SynthesisStage(IdentityTranslator(), filter=f, min_intensity=None)
    boxes = torch.tensor([[0, 0, 8, 8], [20, 20, 28, 28], [2, 2, 10, 10]])
    result = stage.synthesize(images, boxes, torch.tensor([0, 1, 1]), want=1)
    assert seen[0].shape == (3, 1, 8, 8)
    torch.testing.assert_close(seen[0], crop_sites(result.images, result.boxes, torch.arange(3), 8))
    assert result.keep.tolist() == [False, True, False]


def test_site_filters_refuse_what_they_cannot_do(scorer):
    _, path = scorer
    with pytest.raises(ValueError, match="square input_size"):
        PseudoLabel(torch.nn.Linear(1, 1), threshold=None, on="site")
    with pytest.raises(ValueError, match="on must be one of"):
        PseudoLabel(torch.nn.Linear(1, 1), threshold=None, on="patch")
    with pytest.raises(ValueError, match="site scorer"):
        build_filter(RunConfig(filter_classifier=str(path), filter_quantile=0.5))
    with pytest.raises(ValueError, match="on='site'"):
        PseudoLabel(path, threshold=None).positive_scores([])

    keeps_the_site = Translate(IdentityTranslator())
    keeps_the_site.source_label, keeps_the_site.keeps_site = 1, True  # as the inpainter: the site is kept as it is
    with pytest.raises(ValueError, match="whole-image filter"):
        SynthesisStage(synthesizer=keeps_the_site, filter=PseudoLabel(path, threshold=None))
