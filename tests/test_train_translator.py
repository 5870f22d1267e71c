"""python -m streamaug.train translator: a short run, exact resume (log, scores, best.pt and the
on-the-fly augmentation replayed), best.pt chosen by the held-out score, s per region in the
checkpoint, refusal of a changed config or of a checkpoint without trainer state."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from shardgen import write_shards

from streamaug import load_translator
from streamaug.models.checkpoint import CheckpointError
from streamaug.train.__main__ import main as train_main
from streamaug.train.translator import TranslatorRun, chosen_checkpoint, train_translator


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, n=24, shard_size=8, size=48, lesion_every=3, box=(10, 12, 26, 30))
    return str(folder)


def run_cfg(shards, out, steps, **kw):
    return TranslatorRun(**{**dict(shards=[shards], out=str(out), preset="tiny", steps=steps, s=1.5, n=2, batch_size=4,
                                   sample_every=2, ckpt_every=2, seed=3), **kw})


def test_cli_trains_and_writes_everything(shards, tmp_path):
    train_main(["translator", "--shards", shards, "--out", str(tmp_path), "--steps", "3", "--s", "1.5",
                "--n", "2", "--batch-size", "4", "--sample-every", "2", "--ckpt-every", "2", "--split", "all",
                "--lr", "0.0005"])
    model = load_translator(tmp_path / "translator.pt")
    assert model.patch_size == 32 and model.meta["step"] == 3 and model.meta["s"] == 1.5
    assert model.meta["config"]["lr"] == 5e-4 and model.meta["config"]["ngf"] == 8  # --lr over the tiny preset
    out = model.translate(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 1, 32, 32) and float(out.min()) >= 0 and float(out.max()) <= 1
    losses = [json.loads(line) for line in (tmp_path / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses] == [1, 2, 3] and all(r["gen"] == r["gen"] for r in losses)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_000002.png", "step_000003.png"]
    info = json.loads((tmp_path / "run.json").read_text())["data"]
    # 8 lesion images, one box each; ceil(10 %) of the lesion groups (1 image) held out; 4 crops per box
    assert info["lesion_images"] == 7 and info["heldout_lesion_images"] == 1 and info["lesion_patches"] == 7 * 4
    assert info["normal_patches"] > 0 and info["heldout_normal_images"] == 2 and info["s"] == {"lower_limb": 1.5}
    saved = model.meta["extra"]["run"]  # the resolved config, every field, travels with the weights
    assert set(saved) == {f.name for f in dataclasses.fields(TranslatorRun)}
    assert saved["steps"] == 3 and saved["s"] == 1.5 and saved["min_intensity"] == 0.15 and saved["shards"] == [shards]


def _same_weights(a, b):
    wa, wb = torch.load(a, weights_only=True)["weights"], torch.load(b, weights_only=True)["weights"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# the new randomness (crops, flips/rot90/jitter, DiffAugment) and the scores must replay on resume too
RECIPES = {"original": dict(crops_per_box=1, balance_sets=True, augment="hflip", holdout=0.0, score_every=0),
           "augmented": dict(crops_per_box=3, augment="all", jitter=0.2, diffaug=["color", "translation", "cutout"],
                             holdout=0.2, score_every=2)}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_resume_continues_identically(shards, tmp_path, recipe):
    kw = RECIPES[recipe]
    straight = train_translator(run_cfg(shards, tmp_path / "a", 6, **kw), progress=False)
    train_translator(run_cfg(shards, tmp_path / "b", 2, **kw), progress=False)
    with open(tmp_path / "b" / "losses.jsonl", "a") as log:  # logged by a run killed after its step-2 checkpoint
        log.write('{"step": 3, "gen": 9.0}\n{"step": 4, "gen": 9.0}\n{"step": 5, "ge')
    resumed = train_translator(run_cfg(shards, tmp_path / "b", 6, **kw), resume=True, progress=False)
    assert _same_weights(straight, resumed)
    la = (tmp_path / "a" / "losses.jsonl").read_text()
    lb = (tmp_path / "b" / "losses.jsonl").read_text()
    assert la == lb
    scored = [json.loads(line) for line in la.splitlines() if "kid" in line]
    assert [r["step"] for r in scored] == ([2, 4, 6] if kw["score_every"] else [])
    if scored:
        assert _same_weights(tmp_path / "a" / "best.pt", tmp_path / "b" / "best.pt")
        assert torch.load(resumed, weights_only=True)["extra"]["scores"] == \
            torch.load(straight, weights_only=True)["extra"]["scores"]
    else:
        assert not (tmp_path / "a" / "best.pt").exists()


def test_best_checkpoint_is_the_lowest_held_out_score(shards, tmp_path):
    last = train_translator(run_cfg(shards, tmp_path, 6, score_every=2, holdout=0.2), progress=False)
    log = [json.loads(line) for line in (tmp_path / "losses.jsonl").read_text().splitlines()]
    history = [{"step": r["step"], "kid": r["kid"], "kid_ratio": r["kid_ratio"]} for r in log if "kid" in r]
    extra = torch.load(last, weights_only=True)["extra"]
    assert extra["scores"] == history and len(history) == 3  # the score history: in the log and the checkpoint
    winner = min(history, key=lambda r: r["kid"])
    best = load_translator(tmp_path / "best.pt")
    assert best.meta["step"] == winner["step"] and best.meta["extra"]["best"] == winner
    assert torch.load(tmp_path / "best.pt", weights_only=True)["trainer_state"] is None  # for inference
    assert best.meta["extra"]["run"] == extra["run"]  # the config travels with best.pt too
    assert chosen_checkpoint(tmp_path) == tmp_path / "best.pt"  # what the experiment and the demo use
    (tmp_path / "best.pt").unlink()
    assert chosen_checkpoint(tmp_path) == last  # an unscored run: its last step


def test_s_per_region_lands_in_the_checkpoint(shards, tmp_path):
    train_main(["translator", "--shards", shards, "--out", str(tmp_path / "a"), "--steps", "1", "--split", "all",
                "--s", "lower_limb=2", "upper_limb=1", "--n", "2", "--score-every", "0"])
    model = load_translator(tmp_path / "a" / "translator.pt")
    assert model.meta["s"] == 2.0 and model.meta["extra"]["data"]["s"] == {"lower_limb": 2.0}
    assert model.meta["extra"]["run"]["s"] == {"lower_limb": 2.0, "upper_limb": 1.0}
    ckpt = train_translator(run_cfg(shards, tmp_path / "b", 1, region="lower_limb", score_every=0,
                                    s={"upper_limb": 2, "*": 1.25}), progress=False)
    meta = load_translator(ckpt).meta
    assert (meta["s"], meta["region"], meta["extra"]["data"]["s"]) == (1.25, "lower_limb", {"lower_limb": 1.25})
    with pytest.raises(ValueError, match="no s for region 'lower_limb'"):  # refused before reading any data
        train_translator(run_cfg(shards, tmp_path / "c", 1, region="lower_limb", s=["upper_limb=2"]), progress=False)
    with pytest.raises(ValueError, match="not a number"):
        TranslatorRun(s=["lower_limb=big"])


def test_resume_with_changed_config_is_refused(shards, tmp_path):
    train_translator(run_cfg(shards, tmp_path, 2), progress=False)
    for change in (dict(s=2.0), dict(crops_per_box=2), dict(diffaug=["cutout"])):
        changed = dataclasses.replace(run_cfg(shards, tmp_path, 4), **change)
        with pytest.raises(CheckpointError, match="different config"):
            train_translator(changed, resume=True, progress=False)


def test_resume_from_a_checkpoint_without_trainer_state_is_refused(shards, tmp_path):
    ckpt = train_translator(run_cfg(shards, tmp_path, 2), progress=False)
    payload = torch.load(ckpt, weights_only=True)
    payload["trainer_state"] = None  # as save_translator writes it for inference
    torch.save(payload, ckpt)
    with pytest.raises(CheckpointError, match=r"translator\.pt: no trainer state .*start a new run"):
        train_translator(run_cfg(shards, tmp_path, 4), resume=True, progress=False)
    del payload["trainer_state"]  # a file without the key at all (it is optional to read_checkpoint)
    torch.save(payload, ckpt)
    with pytest.raises(CheckpointError, match=r"translator\.pt: no trainer state .*start a new run"):
        train_translator(run_cfg(shards, tmp_path, 4), resume=True, progress=False)


def test_resume_on_other_data_is_refused(tmp_path):
    """The same folder re-packed with other pixels (its manifest's sha256 change): resuming would mix two
    datasets in one model."""
    data = tmp_path / "data"
    write_shards(data, n=24, shard_size=8, size=48, lesion_every=3, box=(10, 12, 26, 30), sha256=True)
    train_translator(run_cfg(str(data), tmp_path / "out", 2), progress=False)
    write_shards(data, n=24, shard_size=8, size=48, lesion_every=3, box=(10, 12, 26, 30), sha256=True,
                 lesion_value=200)
    with pytest.raises(CheckpointError, match=r"translator\.pt: trained on other data.*new --out"):
        train_translator(run_cfg(str(data), tmp_path / "out", 4), resume=True, progress=False)
