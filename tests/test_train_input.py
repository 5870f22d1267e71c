"""streamaug-train refuses bad input before training: one line naming the option (or file) and the fix,
exit code 2, no traceback; and it never trains on the wrong data silently. One test (or more) per
finding of the CLI audit: A-N in the docstrings."""
from __future__ import annotations

import glob
import io
import json
import logging
import tarfile
from pathlib import Path

import pytest
import torch
from shardgen import packed_phantom, png_bytes, tiny_image, write_shards

from streamaug.models import DRN, DRNConfig, save_classifier
from streamaug.train.__main__ import main as train_main
from streamaug.train.classifier_data import RunConfig


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A tiny pack: train (3 shards), val and test (1 shard each), both classes in each."""
    return packed_phantom(tmp_path_factory.mktemp("phantom"), n_normal=24, n_lesion=12, size=32)


@pytest.fixture(scope="module")
def lesions_only(tmp_path_factory):
    """Shards of lesion images only (like a positives-only set)."""
    folder = tmp_path_factory.mktemp("lesions")
    write_shards(folder, n=4, shard_size=4, size=32, lesion_every=1)
    return str(folder / "t-000000.tar")


@pytest.fixture(scope="module")
def normals_only(tmp_path_factory):
    """One shard of normal images only."""
    path = tmp_path_factory.mktemp("normals") / "n-000000.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(4):
            meta = {"label": "normal", "region": "lower_limb", "view": "frontal", "boxes": []}
            for ext, data in (("png", png_bytes(tiny_image(i, 32))), ("json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"n{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.fixture(scope="module")
def filter_pt(tmp_path_factory):
    return str(save_classifier(tmp_path_factory.mktemp("filter") / "best.pt", DRN(DRNConfig.preset("tiny"))))


def refused(capsys, *argv: str) -> str:
    """Run ``streamaug-train ARGV``; assert it stopped with exit code 2 and no traceback; its error line."""
    with pytest.raises(SystemExit) as exit_:
        train_main(list(argv))
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if ": error: " in x]
    return line


def classifier(shards, out, *extra: str) -> list[str]:
    return ["classifier", "--train-shards", shards, "--train-split", "train", "--val-shards", shards,
            "--val-split", "val", "--out", str(out), "--image-size", "32", "--epochs", "1", "--batch-size", "8", *extra]


def test_a_training_stream_with_validation_or_test_images_is_refused(shards, tmp_path, capsys):
    """A: before, --train-shards DIR/manifest.json trained on train+val+test silently."""
    argv = classifier(f"{shards}/manifest.json", tmp_path / "a")
    argv[3:5] = []  # no --train-split: every split of the manifest
    line = refused(capsys, *argv)
    assert f"--train-shards {shards}/manifest.json reads the splits test, train, val" in line
    assert "the validation split val" in line and "the test split test" in line and "pass --train-split train" in line
    tars = sorted(glob.glob(f"{shards}/train/*.tar")) + sorted(glob.glob(f"{shards}/val/*.tar"))
    argv = classifier(shards, tmp_path / "b")
    argv[2:5] = tars
    line = refused(capsys, *argv)
    assert "reads the splits train, val, among them the validation split val:" in line
    argv = classifier(shards, tmp_path / "d")
    argv[8] = "train"  # --val-split train: validated on its own training images
    line = refused(capsys, *argv)
    assert "reads the validation split train" in line and "pass a --val-split other than --train-split" in line
    argv = classifier(shards, tmp_path / "c")
    argv[3:5] = []
    assert "is a packed folder: pass --train-split (one of test, train, val)" in refused(capsys, *argv)
    assert not (tmp_path / "a" / "best.pt").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(("command", "checkpoint"), [("classifier", "best.pt"), ("classifier", "last.pt"),
                                                      ("translator", "best.pt"), ("inpainter", "inpainter.pt")])
def test_a_fresh_run_into_a_folder_with_checkpoints_is_refused(shards, tmp_path, capsys, command, checkpoint):
    """B: before, a fresh run kept an earlier run's best.pt (classifier: when no epoch scored;
    translator: when the new run scored none), and chosen_checkpoint picked it."""
    stale = tmp_path / checkpoint
    stale.write_bytes(b"an earlier run's weights")
    argv = classifier(shards, tmp_path) if command == "classifier" else \
        [command, "--shards", shards, "--out", str(tmp_path), "--steps", "1"]
    line = refused(capsys, *argv)
    assert f"--out {tmp_path} holds the checkpoints of an earlier run ({checkpoint})" in line
    assert "pass --resume to continue that run, or another --out" in line
    assert stale.read_bytes() == b"an earlier run's weights"


@pytest.mark.parametrize(("command", "option", "value", "expected"), [
    ("classifier", "--epochs", "0", "--epochs 0: must be at least 1"),
    ("classifier", "--epochs", "-1", "--epochs -1: must be at least 1"),
    ("classifier", "--batch-size", "0", "--batch-size 0: must be at least 1"),
    ("classifier", "--image-size", "-8", "--image-size -8: must be at least 1"),
    ("classifier", "--patience", "-1", "--patience -1: must be at least 0"),
    ("classifier", "--lr", "0", "--lr 0: must be above 0"),
    ("classifier", "--lr", "nan", "--lr nan: must be above 0"),
    ("classifier", "--oversample", "0", "--oversample 0: must be at least 1"),
    ("classifier", "--positive-ratio", "0", "--positive-ratio 0: must be above 0"),
    ("classifier", "--workers", "-1", "--workers -1: must be at least 0"),
    ("translator", "--steps", "0", "--steps 0: must be at least 1"),
    ("translator", "--patch-size", "0", "--patch-size 0: must be at least 1"),
    ("translator", "--batch-size", "0", "--batch-size 0: must be at least 1"),
    ("inpainter", "--steps", "-5", "--steps -5: must be at least 1"),
    ("inpainter", "--image-size", "0", "--image-size 0: must be at least 1"),
    ("scorer", "--steps", "0", "--steps 0: must be at least 1"),
    ("scorer", "--patch-size", "0", "--patch-size 0: must be at least 1"),
])
def test_numeric_options_out_of_range_are_refused_before_reading(tmp_path, capsys, command, option, value, expected):
    """C: before, --epochs 0 / --steps 0 wrote an untrained model with exit 0, and --oversample 0
    divided by zero. The shards do not exist: the options are checked first."""
    argv = classifier("missing", tmp_path) if command == "classifier" else \
        [command, "--shards", "missing", "--out", str(tmp_path)]
    assert refused(capsys, *argv, option, value).endswith(f"error: {expected}")
    assert not any(tmp_path.iterdir())


def test_synthetic_fraction_one_is_refused_in_option_terms(tmp_path, capsys):
    """L: before, --synthetic-fraction 1.0 failed with "real_pass=True ... positive_fraction"."""
    line = refused(capsys, *classifier("missing", tmp_path, "--stream", "lesion", "--synthetic-fraction", "1.0"))
    assert "--synthetic-fraction 1: must be at least 0 and below 1" in line and "real_pass" not in line
    with pytest.raises(ValueError, match="--synthetic-fraction"):
        RunConfig(synthetic_fraction=1.0)  # the Python API checks the same bounds


def test_a_kept_training_set_without_a_class_is_refused(shards, lesions_only, tmp_path, capsys):
    """D: before, a ratio or region that left no positives (or no normals) trained on one class, exit 0."""
    line = refused(capsys, *classifier(shards, tmp_path / "a", "--positive-ratio", "0.01"))
    assert "--positive-ratio 0.01 keeps no positive" in line and "raise --positive-ratio" in line
    argv = classifier(shards, tmp_path / "b")
    argv[2:5] = [lesions_only]
    line = refused(capsys, *argv)
    assert f"--train-shards {lesions_only}" in line and "hold 4 positive and 0 normal images" in line


def test_a_positive_ratio_above_the_positives_available_is_noted(shards, caplog):
    """D: a capped --positive-ratio says so."""
    from streamaug.train.classifier_data import count_selected
    from streamaug.train.inputs import check_training_classes

    cfg = RunConfig(train_shards=[shards], train_split="train", positive_ratio=5.0)
    counts = count_selected(cfg)
    with caplog.at_level(logging.WARNING):
        check_training_classes(cfg, counts)
    assert f"--positive-ratio 5 asks for {5 * counts['normals']} positives" in caplog.text
    assert f"training on all {counts['positives_available']}" in caplog.text


def test_a_validation_set_with_one_class_is_refused(shards, lesions_only, tmp_path, capsys):
    """E: before, every epoch's validation AUC was NaN and best.pt an arbitrary epoch's."""
    argv = classifier(shards, tmp_path)
    argv[6:9] = [lesions_only]
    line = refused(capsys, *argv)
    assert f"--val-shards {lesions_only} hold 4 positive and 0 normal images" in line and "needs both" in line


def test_synthesis_options_without_the_lesion_stream_are_refused(shards, tmp_path, capsys):
    """F: before, --translator, --synthetic-fraction, --filter-classifier ... were ignored by --stream plain."""
    line = refused(capsys, *classifier(shards, tmp_path, "--translator", "t.pt", "--filter-classifier", "f.pt",
                                       "--synthetic-fraction", "0.5"))
    assert "--translator, --filter-classifier, --synthetic-fraction only apply to synthesis" in line
    assert "add --stream lesion" in line


@pytest.mark.parametrize("command", ["translator", "inpainter", "scorer"])
def test_positives_keys_that_match_no_lesion_image_are_named(shards, tmp_path, capsys, command):
    """G: before, --positives keys that matched nothing were dropped silently."""
    from streamaug import XRayShards

    lesion = next(s["key"] for s in XRayShards(shards, split="train", shuffle=False) if s["label"] == 1)
    line = refused(capsys, command, "--shards", shards, "--out", str(tmp_path), "--steps", "1",
                   "--positives", lesion, "NOPE", "ALSO_NOT")
    assert "--positives: 2 of 3 keys match no lesion image of --shards" in line
    assert "NOPE, ALSO_NOT" in line and lesion not in line.split("--split train")[1]


def test_user_errors_exit_2_in_one_line_and_bugs_keep_their_traceback(tmp_path, capsys, monkeypatch):
    """H: before, only CheckpointError was caught: a missing shard or a bad --device gave a traceback."""
    from streamaug._commands import message as one_line

    line = refused(capsys, "scorer", "--shards", str(tmp_path / "missing.tar"), "--out", str(tmp_path / "o"))
    assert "missing.tar" in line
    line = refused(capsys, "translator", "--shards", "x.tar", "--out", str(tmp_path / "o"), "--device", "gpu")
    assert "error: --device gpu: not a torch device" in line and "use e.g. cpu, cuda or cuda:0" in line
    (tmp_path / "a_file").write_text("")
    line = refused(capsys, *classifier("x.tar", tmp_path / "a_file"))
    assert line.endswith(f"error: --out {tmp_path / 'a_file'} is a file: pass a folder (it is created when missing)")
    line = refused(capsys, "scorer", "--shards", "x.tar", "--out", str(tmp_path / "a_file" / "run"))
    assert f"--out {tmp_path / 'a_file' / 'run'}: cannot create the run folder" in line
    if not torch.cuda.is_available():
        line = refused(capsys, "inpainter", "--shards", "x.tar", "--out", str(tmp_path / "o"), "--device", "cuda")
        assert "--device cuda:" in line and "(--device cpu)" in line
    from streamaug.train import scorer

    def bug(args):
        raise KeyError("a bug")

    monkeypatch.setattr(scorer, "main", bug)
    with pytest.raises(KeyError, match="a bug"):  # not a user error: the traceback stays
        train_main(["scorer", "--shards", "x.tar", "--out", str(tmp_path / "o")])
    wrapped = RuntimeError("Caught ShardError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                           "last):\n  File \"x.py\", line 1\nstreamaug.io.errors.ShardError: shard x.tar is bad\n")
    assert one_line(wrapped) == "shard x.tar is bad"


def test_validation_reads_with_no_more_workers_than_its_shards(shards):
    """I: before, --workers 2 with a one-shard validation split failed after a whole training epoch."""
    from streamaug.train.classifier_data import build_val_stream

    cfg = RunConfig(train_shards=[shards], val_shards=[shards], train_split="train", val_split="val",
                    image_size=32, workers=2)
    loader = build_val_stream(cfg)
    assert loader.num_workers == 1
    assert sum(len(b["label"]) for b in loader) == 7  # every validation image, once


def test_more_training_workers_than_shards_are_refused_before_training(shards, tmp_path, capsys):
    """I: the training stream's readers would fail inside a worker, with the worker's traceback."""
    line = refused(capsys, *classifier(shards, tmp_path, "--workers", "4"))
    assert "--workers 4: the training stream has 3 shards with kept samples" in line and "--workers 3 or fewer" in line


def test_lesion_stream_on_a_list_of_tar_files_matches_sites_to_their_boxes(shards, tmp_path):
    """J: before, --train-shards given as .tar files (no split) left the lesion-box bank empty."""
    from streamaug.train.classifier_data import build_train_stream, count_selected
    from streamaug.train.inputs import lesion_box_records

    tars = sorted(glob.glob(f"{shards}/train/*.tar"))
    cfg = RunConfig(train_shards=tars, val_shards=[shards], val_split="val", out=str(tmp_path), image_size=32,
                    batch_size=8, stream="lesion", synthesizer="copy_paste", synthetic_fraction=0.5)
    manifest = Path(shards) / "manifest.json"
    records = lesion_box_records(cfg, manifest, lambda key, meta: True)
    train_boxes = [r for r in json.loads(manifest.read_text())["lesion_boxes"] if r["split"] == "train"]
    assert records == train_boxes and records
    batches, stream = build_train_stream(cfg, n_real=count_selected(cfg), world=1, device=torch.device("cpu"))
    stream.set_epoch(0)
    assert sum(int(b["synthetic"].sum()) for b in batches(0)) > 0
    with pytest.raises(ValueError, match="matched to the kept training positives' lesion boxes"):
        lesion_box_records(cfg, manifest, lambda key, meta: False)


def test_filter_quantile_without_validation_positives_is_refused(shards, normals_only, filter_pt):
    """K: before, the calibration crashed inside torch on an empty set of scores."""
    from streamaug.train.classifier_data import build_filter

    cfg = RunConfig(train_shards=[shards], train_split="train", val_shards=[normals_only], stream="lesion",
                    filter_classifier=filter_pt, filter_quantile=0.5)
    with pytest.raises(ValueError, match=r"--filter-quantile calibrates the filter on the validation positives, but "
                                         r"--val-shards .*n-000000\.tar hold none"):
        build_filter(cfg)


@pytest.mark.parametrize(("command", "looked_for"), [("classifier", "no last.pt (looked for best.pt, last.pt)"),
                                                     ("translator", "no translator.pt (looked for translator.pt"),
                                                     ("inpainter", "no inpainter.pt;")])
def test_resume_with_nothing_to_resume_is_refused(shards, tmp_path, capsys, command, looked_for):
    """M: before, --resume into a folder without a checkpoint started a fresh run silently."""
    argv = classifier(shards, tmp_path) if command == "classifier" else \
        [command, "--shards", shards, "--out", str(tmp_path), "--steps", "1"]
    line = refused(capsys, *argv, "--resume")
    assert f"--out {tmp_path}: nothing to resume: it holds {looked_for}" in line
    assert "start a new run without --resume" in line and not any(tmp_path.iterdir())


def test_no_training_patches_names_the_options_to_check(shards):
    """N: before, the message said "the region name ... and min_intensity" (Python names), not --positives."""
    from streamaug.train.patches import build_patch_sets

    with pytest.raises(ValueError, match=r"no training patches: .*check --region, --positives .*--min-intensity"):
        build_patch_sets(shards, patch_size=16, split="train", region="nowhere", progress=False)


def test_a_list_of_tar_files_read_for_both_training_and_validation_is_refused(tmp_path, capsys):
    """.tar files without a manifest have no split to compare: the shared files themselves are the clash."""
    paths = [str(p) for p in write_shards(tmp_path / "plain", n=8, shard_size=4, size=32, lesion_every=2)]
    (tmp_path / "plain" / "manifest.json").unlink(missing_ok=True)
    argv = ["classifier", "--train-shards", *paths, "--val-shards", paths[1], "--out", str(tmp_path / "out"),
            "--image-size", "32", "--epochs", "1", "--batch-size", "8"]
    line = refused(capsys, *argv)
    assert "1 shard(s) of --val-shards" in line and Path(paths[1]).name in line
    assert not (tmp_path / "out" / "best.pt").exists()
