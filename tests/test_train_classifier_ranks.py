"""python -m streamaug.train classifier: what it validates on and across ranks. Two DDP CPU ranks
(the lesion stream with resume; every rank validating rank 0's model, resumed exactly), images with
an unknown label left out, the validation AUC from logits."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nested import same
from shardgen import packed_phantom

from streamaug.models.checkpoint import load_classifier, save_translator
from streamaug.models.unit import UNIT, unit_preset
from streamaug.train.classifier import train_classifier
from streamaug.train.classifier_data import RunConfig, count_selected


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return packed_phantom(tmp_path_factory.mktemp("phantom"))


def cfg_for(data, out, **kw):
    return RunConfig(train_shards=[data], val_shards=[data], train_split="train", val_split="val", out=str(out),
                     image_size=32, epochs=2, batch_size=8, seed=1, **kw)

def test_ddp_two_cpu_ranks_on_the_lesion_stream_with_resume(shards, tmp_path):
    config = unit_preset("tiny")
    translator = save_translator(tmp_path / "translator.pt", UNIT(config), config=config,
                                 patch_size=config.patch_size, s=1.0, region="any", manifest_sha256="0" * 64, step=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(out, epochs, *extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
               "-m", "streamaug.train", "classifier", "--train-shards", shards, "--train-split", "train",
               "--val-shards", shards, "--val-split", "val", "--out", str(out), "--epochs", str(epochs),
               "--image-size", "32", "--batch-size", "4", "--stream", "lesion", "--translator", str(translator),
               "--synthetic-fraction", "0.5", *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (out / "log.jsonl").read_text().splitlines()]

    straight = run(tmp_path / "straight", 2)
    run(tmp_path / "ddp", 1)
    resumed = run(tmp_path / "ddp", 2, "--resume")
    assert [r["epoch"] for r in resumed] == [0, 1]  # rank 0 alone logs; the resumed run went on at epoch 1
    assert all(r["synthetic"] > 0 for r in resumed)  # each rank ran its own synthesis stage
    # every rank's stream and random states came back: the same samples, losses and AUCs as one run
    assert resumed == straight
    a, b = (load_classifier(tmp_path / out / "last.pt") for out in ("straight", "ddp"))
    assert b.extra["epoch"] == 1 and len(a.extra["stream"]) == 2 and same(b.extra["stream"], a.extra["stream"])
    assert all(torch.equal(a.model.state_dict()[k], v) for k, v in b.model.state_dict().items())


_RANK_AUC_DRIVER = """
import os, sys
import sklearn.metrics
from streamaug.train.__main__ import main

score = sklearn.metrics.roc_auc_score
def spoken(y, s, **kw):  # each rank writes the validation AUC it computed into its own file
    auc = score(y, s, **kw)
    with open(os.environ["AUC_LOG"] + os.environ["RANK"], "a") as f:
        print(repr(auc), file=f)
    return auc
sklearn.metrics.roc_auc_score = spoken
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_ddp_ranks_validate_one_model_and_resume_exactly(shards, tmp_path):
    """Two CPU ranks: after training each rank's BatchNorm statistics differ, so each would validate
    another model, step its learning rate on another AUC and drift; every rank validates rank 0's.
    A resumed run gives each rank its own random states back (``--augment flip`` draws from them)."""
    driver = tmp_path / "driver.py"
    driver.write_text(_RANK_AUC_DRIVER)

    def run(out, epochs, *extra):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "AUC_LOG": f"{out}-auc-rank"}  # not one pipe: lines could mix
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
               str(driver), "classifier", "--train-shards", shards, "--train-split", "train", "--val-shards", shards,
               "--val-split", "val", "--out", str(out), "--epochs", str(epochs), "--image-size", "32",
               "--batch-size", "4", "--augment", "flip", "--patience", "0", *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        said = {rank: Path(f"{out}-auc-rank{rank}").read_text().split() for rank in ("0", "1")}
        for path in tmp_path.glob(f"{out.name}-auc-rank*"):
            path.unlink()  # a resumed run writes its own
        return {rank: [float(v) for v in values] for rank, values in said.items()}

    aucs = run(tmp_path / "straight", 3)
    assert len(aucs["0"]) == 3 and aucs["0"] == aucs["1"]
    run(tmp_path / "resumed", 1)
    resumed = run(tmp_path / "resumed", 3, "--resume")
    assert resumed["0"] == resumed["1"] == aucs["0"][1:]
    last = load_classifier(tmp_path / "resumed" / "last.pt")
    assert len(last.extra["aug_rng"]) == 2 and not torch.equal(*last.extra["aug_rng"])  # one state per rank
    a = load_classifier(tmp_path / "straight" / "last.pt").model.state_dict()
    b = last.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_images_with_an_unknown_label_are_left_out_of_training_and_validation(tmp_path, caplog):
    """A label the packer reads as unknown (-1) was a BCE target of -1 in training and a third class
    that made every validation AUC NaN; such images are now left out, and the run says how many."""
    import csv

    from streamaug.cli.pack import pack
    from streamaug.phantom import write_phantom_dataset
    from streamaug.train.classifier_data import build_train_stream

    raw = tmp_path / "raw"
    write_phantom_dataset(raw, n_normal=48, n_lesion=24, size=(64, 64), seed=2)
    with open(raw / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    relabelled = {"train": 6, "val": 3}
    for row in rows:
        if row["label"] == "normal" and relabelled.get(row["split"], 0) > 0:
            relabelled[row["split"]] -= 1
            row["label"] = "unknown"
    with open(raw / "unknown.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    pack(raw, raw / "unknown.csv", tmp_path / "shards", shard_size=8, progress=False)
    cfg = cfg_for(str(tmp_path / "shards"), tmp_path / "run")
    counts = count_selected(cfg)
    assert counts["unknown"] == 6
    batches, _ = build_train_stream(cfg, n_real=counts, world=1, device=torch.device("cpu"))
    labels = torch.cat([b["label"] for b in batches(0)])
    assert set(labels.tolist()) == {0, 1} and len(labels) == counts["positives"] + counts["normals"]
    with caplog.at_level("WARNING", logger="streamaug.train.classifier"):
        train_classifier(cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(0 <= r["val_auc"] <= 1 for r in log) and load_classifier(tmp_path / "run" / "best.pt").extra["val_auc"]
    said = caplog.text
    assert "6 training images have an unknown label" in said and "3 validation images have an unknown label" in said


def test_validation_auc_ranks_logits_a_float32_sigmoid_would_tie():
    from streamaug.train.classifier import validation_auc

    class Fixed(torch.nn.Module):  # logits by the image's first pixel
        def forward(self, x):
            return x[:, 0, 0, 0]

    x = torch.zeros(4, 1, 2, 2)
    x[:, 0, 0, 0] = torch.tensor([18.0, 25.0, 30.0, -5.0])  # a confident normal (18) below two positives
    batch = {"image": x, "label": torch.tensor([0, 1, 1, 0]), "key": ["a", "b", "c", "d"]}
    assert validation_auc(Fixed(), [batch], torch.device("cpu")) == 1.0  # probabilities: 0.75 (three ties at 1.0)
    one_class = validation_auc(Fixed(), [{**batch, "label": torch.tensor([1, 1, 1, 1])}], torch.device("cpu"))
    assert one_class != one_class  # NaN: undefined without both classes
