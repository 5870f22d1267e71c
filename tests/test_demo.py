"""python -m streamaug.cli.demo: every option has help; a miniature end-to-end run scores through
streamaug.eval.scoring and prints the result table."""
from __future__ import annotations

import json
import re

import pytest

from streamaug.cli.demo import build_parser, run_demo


def test_every_demo_option_has_help():
    actions = [a for a in build_parser()._actions if a.dest != "help"]
    assert actions and all(a.help and a.help.strip() for a in actions), [a.dest for a in actions if not a.help]


@pytest.mark.slow
@pytest.mark.parametrize("synthesizer", ["mix", "copy_paste"])
def test_miniature_demo_runs_end_to_end(tmp_path, capsys, synthesizer):
    summary = run_demo(tmp_path, n_normal=40, n_lesion=24, image_size=32, epochs=1, translator_steps=2,
                       positive_ratio=0.2, synthesizer=synthesizer)
    assert summary["test_images"] > 0 and 0 < summary["test_positives"] < summary["test_images"]
    assert 0.0 <= summary["baseline_auc"][0] <= 1.0 and 0.0 <= summary["augmented_auc"][0] <= 1.0
    assert json.loads((tmp_path / "summary.json").read_text())["test_images"] == summary["test_images"]
    # the phantom's pseudo-patients (1-3 images each) are what the bootstrap resamples
    assert 0 < summary["test_patients"] < summary["test_images"]
    assert (tmp_path / "roc.png").exists() and (tmp_path / "samples.png").exists()
    out = capsys.readouterr().out
    assert "baseline AUC" in out and "[1/5]" not in out  # the result table is printed; progress is logged
    assert "trained on" in out and f"of {summary['test_patients']} patients" in out
    # the translator saw only the kept (rare) positives, the ones the classifiers train on
    from streamaug.data.select import rare_positive_select
    from streamaug.models.checkpoint import load_classifier

    select, kept = rare_positive_select(str(tmp_path / "shards"), "train", None, 0.2, 0)
    assert kept["positives"] == summary["kept_positives"] and summary["synthesizer"] == synthesizer
    if synthesizer == "mix":
        translator_run = json.loads((tmp_path / "translator" / "run.json").read_text())["run"]
        assert translator_run["positives"] == sorted(select.positives)
    else:  # copy-paste trains no translator; its lesion crops come from the kept positives only
        assert not (tmp_path / "translator").exists()
        from streamaug.train.classifier_data import RunConfig, build_synthesizer

        run = load_classifier(tmp_path / "augmented" / "best.pt").extra["run"]
        pasted = set(build_synthesizer(RunConfig(**run), select).crops.keys)
        assert pasted and pasted <= set(select.positives)
        # the demo run again into the same folder starts its runs afresh (trainers refuse a used --out)
        again = run_demo(tmp_path, n_normal=40, n_lesion=24, image_size=32, epochs=1, translator_steps=2,
                         positive_ratio=0.2, synthesizer=synthesizer)
        assert again["test_images"] == summary["test_images"]
    # both arms: one classifier recipe and the same real data; only the stream and its (ranked) filter differ
    base = load_classifier(tmp_path / "baseline" / "best.pt").extra["run"]
    aug = load_classifier(tmp_path / "augmented" / "best.pt").extra["run"]
    differ = {"out", "stream", "synthesizer", "filter_classifier", "filter_mode", "oversample", "synthetic_per_positive"}
    assert {k for k in base if base[k] != aug[k]} == differ | ({"translator"} if synthesizer == "mix" else set())
    assert aug["filter_mode"] == "rank" and summary["trained_on"]["augmented"]["synthetic"] > 0
    assert summary["trained_on"]["baseline"]["synthetic"] == 0
    # the same budget: as many samples and positives per epoch; copies in one arm, synthetic in the other
    b, a = summary["trained_on"]["baseline"], summary["trained_on"]["augmented"]
    assert b["samples"] == a["samples"] and b["real_positive"] == a["real_positive"] + a["synthetic"]
    assert a["synthetic"] == 3 * kept["positives"]


@pytest.mark.parametrize("args, said", [
    (["--data", "NONE"], "--data .*NONE: no such folder; give a folder laid out like BTXRD"),
    (["--data", "FILE"], "--data .*FILE: a file; give a folder"),
    (["--data", "EMPTY"], "--data .*EMPTY has no metadata.csv"),
    (["--out", "FILE"], "--out .*FILE is a file, not a folder"),
    (["--n-normal", "40", "--n-lesion", "24", "--synthetic-per-positive", "0"],
     "--synthetic-per-positive must be a whole number >= 1"),
    (["--n-normal", "-3"], "--n-normal must be >= 0, got -3"),
    (["--n-normal", "0", "--n-lesion", "0"], "leaves the train split without normal or lesion images"),
    (["--n-normal", "5", "--n-lesion", "3"], "leaves the val split without"),
    (["--n-normal", "40", "--n-lesion", "24", "--positive-ratio", "0.01"], r"--positive-ratio 0\.01 keeps "
                                                                          r"round\(0\.01 x \d+ training normals\) = 0"),
    (["--device", "cuda"], "--device cuda: this machine has 0 CUDA device"),
    (["--epochs", "0"], "--epochs must be >= 1"),
])
def test_demo_checks_every_argument_before_any_work(tmp_path, capsys, monkeypatch, args, said):
    """Before: PackError, IndexError, FileExistsError and ShardError tracebacks, and
    --synthetic-per-positive 0 refused only after the phantom set was written and packed."""
    import torch

    from streamaug.cli.demo import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "FILE").write_text("")
    (tmp_path / "EMPTY").mkdir()
    args = [str(tmp_path / a) if a in ("NONE", "FILE", "EMPTY") else a for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "out")]
    assert main([*out, "--image-size", "32", "--epochs", "1", *args]) == 2  # a later option wins
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and re.search(said, err), err
    assert not (tmp_path / "out").exists()


def test_demo_refuses_data_whose_splits_lack_a_label_before_training(tmp_path, capsys, monkeypatch):
    import streamaug.train.classifier as classifier
    from streamaug.cli.demo import main
    from streamaug.phantom import write_phantom_dataset

    monkeypatch.setattr(classifier, "train_classifier", lambda *a, **k: pytest.fail("trained"))
    data = write_phantom_dataset(tmp_path / "data", 4, 4, size=(32, 32), splits=(1, 0, 0))  # train only
    assert main(["--out", str(tmp_path / "out"), "--data", str(data), "--image-size", "32", "--epochs", "1"]) == 2
    assert re.search(r"^error: --data .*data leaves the val split without normal or lesion images .*a split column",
                     capsys.readouterr().err)
