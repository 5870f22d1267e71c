"""python -m streamaug.train translator: a short run, exact resume (log trimmed to the checkpoint),
refusal of a changed config or of a checkpoint without trainer state."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from shardgen import write_shards
from streamaug import load_translator
from streamaug.models.checkpoint import CheckpointError
from streamaug.train.__main__ import main as train_main
from streamaug.train.translator import TranslatorRun, train_translator


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, n=24, shard_size=8, size=48, lesion_every=3, box=(10, 12, 26, 30))
    return str(folder)


def run_cfg(shards, out, steps):
    return TranslatorRun(shards=[shards], out=str(out), preset="tiny", steps=steps, s=1.5, n=2,
                         batch_size=4, sample_every=2, ckpt_every=2, seed=3)


def test_cli_trains_and_writes_everything(shards, tmp_path):
    train_main(["translator", "--shards", shards, "--out", str(tmp_path), "--steps", "3", "--s", "1.5",
                "--n", "2", "--batch-size", "4", "--sample-every", "2", "--ckpt-every", "2", "--split", "all"])
    model = load_translator(tmp_path / "translator.pt")
    assert model.patch_size == 32 and model.meta["step"] == 3 and model.meta["s"] == 1.5
    out = model.translate(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 1, 32, 32) and 0 <= float(out.min()) and float(out.max()) <= 1
    losses = [json.loads(line) for line in (tmp_path / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses] == [1, 2, 3] and all(r["gen"] == r["gen"] for r in losses)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_000002.png", "step_000003.png"]
    info = json.loads((tmp_path / "run.json").read_text())["data"]
    assert info["patches_per_domain"] > 0 and info["lesion_images"] == 8
    saved = model.meta["extra"]["run"]  # the resolved config, every field, travels with the weights
    assert set(saved) == {f.name for f in dataclasses.fields(TranslatorRun)}
    assert saved["steps"] == 3 and saved["s"] == 1.5 and saved["min_intensity"] == 0.15 and saved["shards"] == [shards]


def test_resume_continues_identically(shards, tmp_path):
    straight = train_translator(run_cfg(shards, tmp_path / "a", 4), progress=False)
    train_translator(run_cfg(shards, tmp_path / "b", 2), progress=False)
    with open(tmp_path / "b" / "losses.jsonl", "a") as log:  # logged by a run killed after its step-2 checkpoint
        log.write('{"step": 3, "gen": 9.0}\n{"step": 4, "gen": 9.0}\n{"step": 5, "ge')
    resumed = train_translator(run_cfg(shards, tmp_path / "b", 4), resume=True, progress=False)
    wa = torch.load(straight, weights_only=True)["weights"]
    wb = torch.load(resumed, weights_only=True)["weights"]
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    la = (tmp_path / "a" / "losses.jsonl").read_text()
    lb = (tmp_path / "b" / "losses.jsonl").read_text()
    assert la == lb


def test_resume_with_changed_config_is_refused(shards, tmp_path):
    train_translator(run_cfg(shards, tmp_path, 2), progress=False)
    changed = dataclasses.replace(run_cfg(shards, tmp_path, 4), s=2.0)
    with pytest.raises(CheckpointError, match="different config"):
        train_translator(changed, resume=True, progress=False)


def test_resume_from_a_checkpoint_without_trainer_state_is_refused(shards, tmp_path):
    ckpt = train_translator(run_cfg(shards, tmp_path, 2), progress=False)
    payload = torch.load(ckpt, weights_only=True)
    payload["trainer_state"] = None  # as save_translator writes it for inference
    torch.save(payload, ckpt)
    with pytest.raises(CheckpointError, match=r"translator\.pt: no trainer state .*start a new run"):
        train_translator(run_cfg(shards, tmp_path, 4), resume=True, progress=False)
