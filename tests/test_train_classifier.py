"""python -m streamaug.train classifier: training, resume, rare positives, the lesion stream, DDP."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from streamaug.cli.pack import pack
from streamaug.models.checkpoint import CheckpointError, load_classifier, save_translator
from streamaug.phantom import write_phantom_dataset
from streamaug.models.unit import UNIT, unit_preset
from streamaug.train.classifier import train_classifier
from streamaug.train.classifier_data import RunConfig, count_selected


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(root / "raw", n_normal=48, n_lesion=24, size=(64, 64), seed=2)
    pack(root / "raw", root / "raw" / "metadata.csv", root / "shards", shard_size=8, progress=False)
    return str(root / "shards")


def cfg_for(shards, out, **kw):
    base = dict(train_shards=[shards], val_shards=[shards], train_split="train", val_split="val", out=str(out),
                image_size=32, epochs=2, batch_size=8, seed=1)
    return RunConfig(**{**base, **kw})


def test_trains_logs_and_keeps_the_best(shards, tmp_path):
    best = train_classifier(cfg_for(shards, tmp_path), progress=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1]
    loaded = load_classifier(best)
    assert loaded.extra["input_size"] == 32
    cfg = cfg_for(shards, tmp_path)
    assert loaded.extra["run"] == dataclasses.asdict(cfg)  # the resolved config travels with the weights
    assert load_classifier(tmp_path / "last.pt").extra["run"] == dataclasses.asdict(cfg)
    assert loaded.extra["val_auc"] == max(r["val_auc"] for r in log)
    assert loaded.model(torch.rand(2, 1, 32, 32)).shape == (2,)


def test_eval_cli_scores_a_checkpoint_on_shards(shards, tmp_path):
    from sklearn.metrics import roc_auc_score

    from streamaug.eval import load_scores
    from streamaug.eval.__main__ import main as eval_main

    best = train_classifier(cfg_for(shards, tmp_path / "run", epochs=1), progress=False)
    eval_main(["score", str(best), "--shards", shards, "--split", "test", "--val-split", "val",
               "--out", str(tmp_path / "report.json"), "--scores", str(tmp_path / "test.csv"), "--n-boot", "200"])
    report = json.loads((tmp_path / "report.json").read_text())
    y, s, keys = load_scores(tmp_path / "test.csv")
    assert report["n"] == len(keys) > 0 and report["auc"] == pytest.approx(roc_auc_score(y, s))
    assert report["auc_ci95"][0] <= report["auc"] <= report["auc_ci95"][1]
    assert set(report["operating_point"]) >= {"threshold", "sensitivity", "specificity"}


def test_resume_reproduces_the_uninterrupted_run(shards, tmp_path):
    train_classifier(cfg_for(shards, tmp_path / "a", epochs=2), progress=False)
    train_classifier(cfg_for(shards, tmp_path / "b", epochs=1), progress=False)
    with open(tmp_path / "b" / "log.jsonl", "a") as log:  # logged past last.pt by a killed run
        log.write('{"epoch": 1, "val_auc": 0.0}\n')
    train_classifier(cfg_for(shards, tmp_path / "b", epochs=2), resume=True, progress=False)
    epochs = [json.loads(x)["epoch"] for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]
    a = load_classifier(tmp_path / "a" / "last.pt").model.state_dict()
    b = load_classifier(tmp_path / "b" / "last.pt").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match=r"last\.pt: --resume with a different config \(lr: saved 0\.0001, given 0\.001\)"):
        train_classifier(cfg_for(shards, tmp_path / "b", epochs=3, lr=1e-3), resume=True, progress=False)


def test_resume_from_a_best_pt_is_refused_with_the_fix(shards, tmp_path):
    train_classifier(cfg_for(shards, tmp_path, epochs=1), progress=False)
    shutil.copy(tmp_path / "best.pt", tmp_path / "last.pt")  # weights only, no optimizer state
    with pytest.raises(CheckpointError, match=r"last\.pt: no trainer state .*--resume needs the last\.pt") as err:
        train_classifier(cfg_for(shards, tmp_path, epochs=2), resume=True, progress=False)
    assert "start a new run" in str(err.value)
    (tmp_path / "last.pt").unlink()
    with pytest.raises(CheckpointError, match="has only best.pt"):
        train_classifier(cfg_for(shards, tmp_path, epochs=2), resume=True, progress=False)
    assert [json.loads(x)["epoch"] for x in (tmp_path / "log.jsonl").read_text().splitlines()] == [0]


def test_positive_ratio_makes_positives_rare(shards):
    full = count_selected(cfg_for(shards, "unused"))
    rare = count_selected(cfg_for(shards, "unused", positive_ratio=0.1))
    assert rare["normals"] == full["normals"] and full["positives"] > rare["positives"]
    assert rare["positives"] == round(0.1 * rare["normals"])


def test_lesion_stream_arm_trains_on_synthetic_positives(shards, tmp_path):
    base = train_classifier(cfg_for(shards, tmp_path / "base", epochs=1), progress=False)
    config = unit_preset("tiny")
    translator = save_translator(tmp_path / "translator.pt", UNIT(config), config=config,
                                 patch_size=config.patch_size, s=1.0, region="any", manifest_sha256="0" * 64, step=0)
    cfg = cfg_for(shards, tmp_path / "aug", epochs=1, stream="lesion", translator=str(translator),
                  filter_classifier=str(base), filter_threshold=0.0, synthetic_fraction=0.5, positive_ratio=0.1)
    train_classifier(cfg, progress=False)
    (record,) = [json.loads(line) for line in (tmp_path / "aug" / "log.jsonl").read_text().splitlines()]
    assert record["synthetic"] > 0 and record["acceptance"]["accepted"] >= record["synthetic"]


def test_ddp_two_cpu_ranks_on_the_lesion_stream_with_resume(shards, tmp_path):
    config = unit_preset("tiny")
    translator = save_translator(tmp_path / "translator.pt", UNIT(config), config=config,
                                 patch_size=config.patch_size, s=1.0, region="any", manifest_sha256="0" * 64, step=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "ddp"

    def run(epochs, *extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
               "-m", "streamaug.train", "classifier", "--train-shards", shards, "--train-split", "train",
               "--val-shards", shards, "--val-split", "val", "--out", str(out), "--epochs", str(epochs),
               "--image-size", "32", "--batch-size", "4", "--stream", "lesion", "--translator", str(translator),
               "--synthetic-fraction", "0.5", *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]

    run(1)
    run(2, "--resume")
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1]  # rank 0 alone logs; the resumed run went on at epoch 1
    assert all(r["synthetic"] > 0 for r in log)  # each rank ran its own synthesis stage
    assert load_classifier(out / "last.pt").extra["epoch"] == 1


def test_cli_reports_a_checkpoint_error_without_a_traceback(tmp_path, capsys):
    from streamaug.models import DRN, DRNConfig, save_classifier
    from streamaug.train.__main__ import main as train_main

    save_classifier(tmp_path / "best.pt", DRN(DRNConfig.preset("tiny")))
    with pytest.raises(SystemExit) as exit_:
        train_main(["classifier", "--train-shards", "unused", "--val-shards", "unused", "--out", str(tmp_path),
                    "--resume"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path}: --resume needs last.pt" in err and "Traceback" not in err
