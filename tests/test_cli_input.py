"""``streamaug-eval`` on bad input: one line ``error: <message>`` naming the file and the fix, exit
code 2; never a traceback for a user mistake, never a silent wrong number."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from shardgen import write_shards

import streamaug.eval.__main__ as cli
from streamaug.eval.score_files import save_scores
from streamaug.models import get_classifier
from streamaug.models.checkpoint import CheckpointError, save_classifier


def _fails(argv: list[str], capsys, said: str) -> str:
    """Run ``streamaug-eval argv``; assert exit code 2 and one ``error:`` line matching ``said``."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert re.search(said, err), err
    return err


def _scores(path: Path, y, s, keys=None) -> str:
    return str(save_scores(path, np.asarray(y), np.asarray(s, float), keys or [f"k{i}" for i in range(len(y))]))


Y = [0, 1, 0, 1, 0, 1, 1, 0]


# --- compare ----------------------------------------------------------------------------------------

def test_compare_tells_files_with_one_stem_apart(tmp_path, capsys, monkeypatch):
    """Before: r1/test.csv and r2/test.csv were both rows "test", and one ROC curve replaced the other."""
    rng = np.random.default_rng(0)
    a = _scores(tmp_path / "r1" / "test.csv", Y, rng.random(8))
    b = _scores(tmp_path / "r2" / "test.csv", Y, np.asarray(Y) + rng.random(8))
    drawn = {}
    monkeypatch.setattr(cli, "plot_roc", lambda path, curves, **kw: drawn.update(curves) or path)
    assert cli.main(["compare", a, b, "--roc", str(tmp_path / "roc.png"), "--n-boot", "20"]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:4]]  # after the cases and the header
    assert rows == ["r1/test", "r2/test"] and sorted(drawn) == rows
    assert cli.model_names(["x/a.csv", "y/b.csv"]) == ["a", "b"]
    _fails(["compare", a, str(tmp_path / "r1" / ".." / "r1" / "test.csv")], capsys, "is given twice")


@pytest.mark.parametrize("which", [0, 1])
def test_compare_refuses_a_key_given_twice_in_any_file(tmp_path, capsys, which):
    """Before: a key twice in the baseline file was counted twice (its AUC and the difference)."""
    files = [_scores(tmp_path / f"{n}.csv", Y, np.linspace(0, 1, 8)) for n in ("base", "aug")]
    keys = [f"k{i}" for i in range(8)]
    _scores(Path(files[which]), Y + [0], list(np.linspace(0, 1, 8)) + [0.5], keys + ["k0"])
    _fails(["compare", *files], capsys, rf"{('base', 'aug')[which]}\.csv: 1 key\(s\) on more than one row "
                                        r"\(e\.g\. \['k0'\]\); keep one row per case")


@pytest.mark.parametrize("text, said", [
    ("key,y,score\na,0,0.1\n", r"no column label \(header: \['key', 'y', 'score'\]\); write it with "
                               r"`streamaug-eval score"),
    ("", "no columns key, label, score"),
    ("key,label,score\na,0,0.1,9\nb,1,0.2\n", "line 2: 4 cells, the header has 3"),
    ("key,label,score\na,0,nan\nb,1,0.2\n", "line 2: score 'nan' is not a finite number"),
    ("key,label,score\na,0,0.1\nb,2,0.2\n", "line 3: label '2' is not 0 or 1"),
    ("key,label,score\na,0,0.1\nb,0,0.2\n", "all 2 cases have label 0; an AUC needs cases of both labels"),
    ("key,label,score\n", "no cases"),
])
def test_compare_names_the_file_and_line_of_a_bad_score_csv(tmp_path, capsys, text, said):
    """Before: KeyError, TypeError or numpy errors as tracebacks, or a number from a NaN score."""
    (tmp_path / "bad.csv").write_text(text)
    good = _scores(tmp_path / "good.csv", [0, 1], [0.1, 0.2], ["a", "b"])
    _fails(["compare", good, str(tmp_path / "bad.csv")], capsys, r"bad\.csv.*" + said)
    _fails(["compare", str(tmp_path / "bad.csv"), good], capsys, r"bad\.csv.*" + said)


def test_compare_refuses_a_missing_file_and_no_bootstrap(tmp_path, capsys):
    good = _scores(tmp_path / "good.csv", Y, np.linspace(0, 1, 8))
    _fails(["compare", good, str(tmp_path / "none.csv")], capsys, r"none\.csv: no such score file")
    _fails(["compare", good, "--n-boot", "0"], capsys, "--n-boot must be >= 1")
    _fails(["compare", good, good + "x", "--val", good], capsys, "--val needs one file per scores file")


# --- score ------------------------------------------------------------------------------------------

@pytest.fixture()
def shards(tmp_path) -> str:
    write_shards(tmp_path / "shards", 8, 8, size=16, lesion_every=100)  # one lesion (k000000), 7 normals
    return str(tmp_path / "shards")


def test_score_refuses_a_patch_scorer(tmp_path, capsys, shards):
    """Before: a patch scorer (on: site) scored whole images shrunk to its 32 px, exit 0."""
    scorer = save_classifier(tmp_path / "scorer.pt", get_classifier("drn_tiny")(),
                             extra={"on": "site", "input_size": 32, "kind": "patch_scorer"})
    _fails(["score", str(scorer), "--shards", shards, "--split", "all", "--out", str(tmp_path / "r.json")], capsys,
           r"scorer\.pt: a patch scorer \(on: site.*at 32 px.*best\.pt of `streamaug-train classifier`")
    with pytest.raises(CheckpointError, match="a patch scorer"):
        cli.score_checkpoint(scorer, shards, split="all")
    assert not (tmp_path / "r.json").exists()


def test_score_names_the_split_and_region_of_one_class(tmp_path, capsys):
    """Before: "AUC needs both classes in y", naming neither the split nor the region."""
    write_shards(tmp_path / "lesions", 5, 5, size=16, lesion_every=1)  # every sample a lesion
    model = save_classifier(tmp_path / "c.pt", get_classifier("drn_tiny")())
    _fails(["score", str(model), "--shards", str(tmp_path / "lesions"), "--split", "all", "--region", "lower_limb",
            "--out", str(tmp_path / "r.json"), "--n-boot", "10"], capsys,
           r"--split 'all', region 'lower_limb' of .*lesions: all 5 labelled images have label 1; an AUC needs both "
           "labels: choose another --split or --region")
    assert not (tmp_path / "r.json").exists()


def test_score_checks_paths_and_shards_before_scoring(tmp_path, capsys, shards, monkeypatch):
    """Before: --out a folder failed after scoring (IsADirectoryError); a missing shard folder or
    split was a ShardError traceback."""
    model = str(save_classifier(tmp_path / "c.pt", get_classifier("drn_tiny")()))
    (tmp_path / "folder").mkdir()
    real = cli.score_checkpoint
    monkeypatch.setattr(cli, "score_checkpoint", lambda *a, **k: pytest.fail("scored before --out was checked"))
    for option in ("--out", "--roc", "--scores"):
        _fails(["score", model, "--shards", shards, "--split", "all", option, str(tmp_path / "folder")], capsys,
               f"{option} .*folder is a folder")
    monkeypatch.setattr(cli, "score_checkpoint", real)
    out = str(tmp_path / "r.json")
    _fails(["score", model, "--shards", str(tmp_path / "none"), "--split", "all", "--out", out], capsys, "none")
    _fails(["score", model, "--shards", shards, "--split", "test", "--out", out], capsys,
           r"split 'test' not in .*manifest\.json; it has \['all'\]")
    _fails(["score", str(tmp_path / "none.pt"), "--shards", shards, "--out", out], capsys, "no such classifier")
    _fails(["score", model, "--shards", shards, "--workers", "-1", "--out", out], capsys, "--workers must be >= 0")
    assert not Path(out).exists()
