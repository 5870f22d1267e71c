"""python -m streamaug.train classifier: training, resume, rare positives, the lesion stream (DDP and validation: test_train_classifier_ranks.py)."""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from shardgen import packed_phantom

from streamaug.models.checkpoint import CheckpointError, load_classifier, save_translator
from streamaug.models.unit import UNIT, unit_preset
from streamaug.train.classifier import train_classifier
from streamaug.train.classifier_data import RunConfig, count_selected


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return packed_phantom(tmp_path_factory.mktemp("phantom"))


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
    # the phantom's pseudo-patients travel into the score file, and the interval resamples them
    from streamaug.eval.score_files import load_score_groups

    groups = load_score_groups(tmp_path / "test.csv")
    assert report["resampled"] == "patients" and report["patients"] == len(set(groups)) < len(keys)
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
    assert record["synthetic"] > 0 and record["accepted"] >= record["synthetic"]
    assert record["emitted"]["synthetic"] == record["synthetic"] and record["generated"] >= record["accepted"]


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


# -- the lesion stream in the trainer: exact resume, oversampling, filter modes, synthesizers, make-up --

@pytest.fixture(scope="module")
def translator_pt(tmp_path_factory):
    config = unit_preset("tiny")
    return str(save_translator(tmp_path_factory.mktemp("unit") / "translator.pt", UNIT(config), config=config,
                               patch_size=config.patch_size, s=1.0, region="any", manifest_sha256="0" * 64, step=0))


@pytest.fixture(scope="module")
def filter_pt(shards, tmp_path_factory):
    return str(train_classifier(cfg_for(shards, tmp_path_factory.mktemp("filter"), epochs=1), progress=False))


def _recording(monkeypatch):
    """Record every training batch (epoch, keys, synthetic flags, labels, image sums) and the streams built."""
    from streamaug.train import classifier as trainer

    seen, streams = [], []
    build = trainer.build_train_stream

    def recorded(cfg, **kw):
        batches, stream = build(cfg, **kw)
        streams.append(stream)

        def wrapped(epoch):
            for batch in batches(epoch):
                seen.append((epoch, list(batch["key"]), batch.get("synthetic", torch.zeros(0)).tolist(),
                             batch["label"].tolist(), batch["image"].sum((1, 2, 3)).tolist()))
                yield batch
        return wrapped, stream

    monkeypatch.setattr(trainer, "build_train_stream", recorded)
    return seen, streams


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_resume_of_a_lesion_stream_run_replays_the_uninterrupted_stream(shards, translator_pt, filter_pt, tmp_path,
                                                                       monkeypatch):
    seen, streams = _recording(monkeypatch)
    kw = dict(stream="lesion", synthesizer="mix", translator=translator_pt, filter_classifier=filter_pt,
              filter_mode="rank", synthetic_fraction=0.4, positive_ratio=0.2, oversample=2)
    train_classifier(cfg_for(shards, tmp_path / "a", epochs=3, **kw), progress=False)
    full = list(seen)
    seen.clear()
    train_classifier(cfg_for(shards, tmp_path / "b", epochs=1, **kw), progress=False)
    saved = load_classifier(tmp_path / "b" / "last.pt").extra["stream"]
    assert len(saved) == 1 and saved[0]["epoch"] == 0 and saved[0]["emitted"]["synthetic"] > 0
    train_classifier(cfg_for(shards, tmp_path / "b", epochs=3, **kw), resume=True, progress=False)
    assert [s[0] for s in seen] == [s[0] for s in full] and seen == full  # same batches, same order, same images
    assert any(any(s[2]) for s in full if s[0] == 2)  # synthetic samples in the resumed epochs too
    assert streams[-1].stats["emitted"] == streams[0].stats["emitted"]  # the counts went on from last.pt
    a = load_classifier(tmp_path / "a" / "last.pt").model.state_dict()
    b = load_classifier(tmp_path / "b" / "last.pt").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the log too, but for the wall times
    assert [{**r, "seconds": 0} for r in _log(tmp_path / "a")] == [{**r, "seconds": 0} for r in _log(tmp_path / "b")]


def test_oversampling_copies_real_positives_only_and_the_log_says_what_was_seen(shards, translator_pt, filter_pt,
                                                                              tmp_path, monkeypatch):
    seen, streams = _recording(monkeypatch)
    plain = cfg_for(shards, tmp_path / "plain", epochs=1, positive_ratio=0.2, oversample=3)
    counts = count_selected(plain)
    train_classifier(plain, progress=False)
    (record,) = _log(tmp_path / "plain")
    assert record["emitted"] == {"real_positive": 3 * counts["positives"], "real_normal": counts["normals"],
                                 "real_other": 0, "synthetic": 0}
    assert record["samples"] == 3 * counts["positives"] + counts["normals"] and record["synthetic_share"] == 0
    assert record["real_positive_share"] == pytest.approx(3 * counts["positives"] / record["samples"])
    assert record["candidates_per_accepted"] is None
    # every batch is full but the last, and no positive is copied into its own batch
    keys = [s[1] for s in seen]
    assert all(len(k) == 8 for k in keys[:-1]) and all(len(set(k)) == len(k) for k in keys)

    seen.clear()
    mixed = cfg_for(shards, tmp_path / "mixed", epochs=1, positive_ratio=0.2, oversample=3, stream="lesion",
                    translator=translator_pt, filter_classifier=filter_pt, filter_mode="rank", synthetic_fraction=0.3)
    train_classifier(mixed, progress=False)
    (record,) = _log(tmp_path / "mixed")
    emitted = streams[-1].stats["emitted"]  # what the stream gave, before the copies
    assert record["emitted"]["real_positive"] == 3 * emitted["real_positive"]
    assert record["emitted"]["synthetic"] == emitted["synthetic"] == record["synthetic"] > 0
    assert record["emitted"]["real_normal"] == emitted["real_normal"]
    assert sum(sum(s[2]) for s in seen) == emitted["synthetic"]  # synthetic samples are never copied
    assert record["synthetic_share"] == pytest.approx(record["synthetic"] / record["samples"])
    # rank mode: about 2 candidates scored per accepted sample (the stage's oversample), never a dry run;
    # a synthesis round makes up to a source batch of samples, so the epoch may end with some unused
    assert record["accepted"] >= record["synthetic"] and 1 <= record["candidates_per_accepted"] <= 4


def test_synthetic_per_positive_matches_the_oversampling_budget_and_every_epoch_sees_each_real_sample(
        shards, tmp_path):
    """Before: lesion arms drew real samples from a resampled stream (the real positives an epoch saw
    varied) and their epochs were longer than the oversampling arm's; now synthetic positives replace
    copies one for one."""
    from streamaug.data.select import rare_positive_select
    from streamaug.train.classifier_data import build_train_stream

    select, counts = rare_positive_select(shards, "train", None, 0.2, 1)

    def epochs(**kw):
        cfg = cfg_for(shards, tmp_path, positive_ratio=0.2, **kw)
        batches, stream = build_train_stream(cfg, n_real=counts, world=1, device=torch.device("cpu"))
        out = []
        for epoch in range(2):
            stream.set_epoch(epoch)
            out.append([(k, lab, syn) for b in batches(epoch) for k, lab, syn in
                        zip(b["key"], b["label"].tolist(), b.get("synthetic", torch.zeros(len(b["key"]))).tolist())])
        return out

    copies = epochs(oversample=5)
    half = epochs(oversample=3, stream="lesion", synthesizer="copy_paste", synthetic_per_positive=2.0)
    for a, b in zip(copies, half):
        assert len(a) == len(b) == counts["normals"] + 5 * counts["positives"]
        assert sum(lab for _, lab, _ in a) == sum(lab for _, lab, _ in b) == 5 * counts["positives"]
        assert sum(syn for *_, syn in b) == 2 * counts["positives"]
        real = [k for k, _, syn in b if not syn]
        assert set(real) == {k for k, _, _ in a}  # every kept real sample, every epoch
        assert {k for k, lab, syn in b if lab and not syn} == set(select.positives)


def _synthetic_provenance(shards, cfg):
    """``(select, counts, provenance)``: the kept rare positives of ``cfg``, their counts, and the
    provenance of every synthetic sample of epoch 0 of its training stream."""
    from streamaug.data.select import rare_positive_select
    from streamaug.train.classifier_data import build_train_stream

    select, counts = rare_positive_select(shards, "train", None, cfg.positive_ratio, cfg.seed)
    batches, stream = build_train_stream(cfg, n_real=counts, world=1, device=torch.device("cpu"))
    stream.set_epoch(0)
    return select, counts, [p for b in batches(0) for p in b["provenance"] if p is not None]


def test_inpaint_arm_gives_only_the_kept_positives_new_surroundings(shards, tmp_path):
    from streamaug.models.checkpoint import save_inpainter
    from streamaug.models.pix2pix import Pix2Pix, pix2pix_preset
    from streamaug.train.classifier_data import build_train_stream

    inpainter = save_inpainter(tmp_path / "inpainter.pt", Pix2Pix(pix2pix_preset("tiny", image_size=32, depth=4)),
                               data_sha256="0" * 64, step=0)
    cfg = cfg_for(shards, tmp_path, stream="lesion", synthesizer="inpaint", inpainter=str(inpainter),
                  positive_ratio=0.2, synthetic_per_positive=2.0)
    select, counts, made = _synthetic_provenance(shards, cfg)
    assert len(made) == 2 * counts["positives"] and {p["synthesizer"] for p in made} == {"inpaint"}
    assert {p["source_key"] for p in made} <= set(select.positives)
    with pytest.raises(ValueError, match="--inpainter"):
        build_train_stream(cfg_for(shards, tmp_path, stream="lesion", synthesizer="inpaint"), n_real=counts,
                           world=1, device=torch.device("cpu"))


def test_swap_pastes_kept_lesions_over_kept_positives(shards, tmp_path):
    from streamaug.train.classifier_data import build_train_stream

    cfg = cfg_for(shards, tmp_path, stream="lesion", synthesizer="swap", positive_ratio=0.2,
                  synthetic_per_positive=2.0)
    select, counts, made = _synthetic_provenance(shards, cfg)
    assert len(made) == 2 * counts["positives"] and {p["synthesizer"] for p in made} == {"copy_paste"}
    assert {p["source_key"] for p in made} <= set(select.positives)
    assert {p["lesion_key"] for p in made} <= set(select.positives)
    assert {p["rot90"] for p in made} == {0, 1, 2, 3}  # quarter turns by default
    _, _, upright = _synthetic_provenance(shards, dataclasses.replace(cfg, paste_rot90=False))
    assert {p["rot90"] for p in upright} == {0}
    with pytest.raises(ValueError, match="not inpaint or swap"):
        build_train_stream(cfg_for(shards, tmp_path, stream="lesion", synthesizer="swap", match_sources="age"),
                           n_real=counts, world=1, device=torch.device("cpu"))


def test_swap_with_paste_match_and_avoid_takes_same_bone_lesions_of_other_patients(shards, tmp_path):
    from streamaug import XRayShards

    meta = {s["key"]: s["meta"] for s in XRayShards(shards, split="train", shuffle=False, equalize="none")}
    cfg = cfg_for(shards, tmp_path, stream="lesion", synthesizer="swap", positive_ratio=0.5,
                  synthetic_per_positive=2.0, paste_match="bone", paste_avoid="group")
    select, counts, made = _synthetic_provenance(shards, cfg)
    assert len(made) == 2 * counts["positives"] and {p["lesion_key"] for p in made} <= set(select.positives)
    kept = [meta[k] for k in select.positives]
    for p in made:
        source, donor = meta[p["source_key"]], meta[p["lesion_key"]]
        assert donor["group"] != source["group"]  # never the positive's own lesion, nor its patient's
        if any(m["bone"] == source["bone"] and m["group"] != source["group"] for m in kept):
            assert donor["bone"] == source["bone"]
    assert any(meta[p["lesion_key"]]["bone"] == meta[p["source_key"]]["bone"] for p in made)
    _, _, anyone = _synthetic_provenance(shards, dataclasses.replace(cfg, paste_match=None, paste_avoid=None))
    assert any(meta[p["lesion_key"]]["group"] == meta[p["source_key"]]["group"] for p in anyone)


def test_match_sources_draws_synthetic_positives_from_age_matched_normals(shards, tmp_path):
    from streamaug.data.select import matched_normals, rare_positive_select
    from streamaug.train.classifier_data import build_train_stream

    cfg = cfg_for(shards, tmp_path, stream="lesion", synthesizer="copy_paste", positive_ratio=0.2,
                  synthetic_per_positive=2.0, match_sources="age")
    select, counts = rare_positive_select(shards, "train", None, 0.2, cfg.seed)
    matched, info = matched_normals(shards, "train", select, "age", cfg.seed)
    assert 0 < info["sources"] < counts["normals"]
    batches, stream = build_train_stream(cfg, n_real=counts, world=1, device=torch.device("cpu"))
    stream.set_epoch(0)
    made = [p for b in batches(0) for p in b["provenance"] if p is not None]
    assert len(made) == 2 * counts["positives"] and {p["source_key"] for p in made} <= matched.keys
    with pytest.raises(ValueError, match="--stream lesion"):
        build_train_stream(cfg_for(shards, tmp_path, match_sources="age"), n_real=counts, world=1,
                           device=torch.device("cpu"))


def test_paste_shape_mask_cuts_the_kept_lesions_by_their_masks(shards, tmp_path):
    from streamaug.data.select import rare_positive_select
    from streamaug.train.classifier_data import build_synthesizer

    select, _ = rare_positive_select(shards, "train", None, 0.2, 1)
    synth = build_synthesizer(cfg_for(shards, tmp_path, stream="lesion", synthesizer="copy_paste", paste_shape="mask"),
                              select)
    assert synth.crops.canvases.shape[1] == 3 and synth.crops.unmasked == 0  # the phantoms carry lesion masks
    assert set(synth.crops.keys) == set(select.positives) and synth.describe()["shape"] == "mask"
    with pytest.raises(ValueError, match="shape='box'"):
        build_synthesizer(cfg_for(shards, tmp_path, stream="lesion", synthesizer="swap", paste_shape="mask"), select)


def test_filter_quantile_calibrates_on_validation_positives(shards, filter_pt):
    from streamaug.train.classifier_data import build_filter, build_val_stream

    cfg = cfg_for(shards, "unused", filter_classifier=filter_pt, filter_quantile=0.5)
    filt = build_filter(cfg)
    scores = filt.positive_scores(build_val_stream(cfg))
    assert filt.mode == "threshold" and filt.threshold == pytest.approx(float(torch.quantile(scores.double(), 0.5)))
    ranked = build_filter(cfg_for(shards, "unused", filter_classifier=filter_pt, filter_mode="rank"))
    assert ranked.mode == "rank" and ranked.threshold is None  # rank mode: no floor without a quantile
    floored = build_filter(cfg_for(shards, "unused", filter_classifier=filter_pt, filter_mode="rank",
                                   filter_quantile=0.0))
    assert floored.mode == "rank" and floored.threshold == pytest.approx(float(scores.min()))
    assert build_filter(cfg_for(shards, "unused")) is None


def test_copy_paste_pastes_only_the_kept_positives(shards, tmp_path):
    from streamaug.train.classifier_data import build_train_stream

    cfg = cfg_for(shards, tmp_path, stream="lesion", synthesizer="copy_paste", positive_ratio=0.2,
                  synthetic_fraction=0.5)
    select, counts, samples = _synthetic_provenance(shards, cfg)
    assert samples and {p["synthesizer"] for p in samples} == {"copy_paste"}
    assert {p["lesion_key"] for p in samples} <= set(select.positives)
    with pytest.raises(ValueError, match="--translator"):
        build_train_stream(cfg_for(shards, tmp_path, stream="lesion", synthesizer="mix"), n_real=counts, world=1,
                           device=torch.device("cpu"))
