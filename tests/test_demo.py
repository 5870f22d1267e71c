"""python -m streamaug.cli.demo: every option has help; a miniature end-to-end run scores through
streamaug.eval.scoring and prints the result table."""
from __future__ import annotations

import json

import pytest

from streamaug.cli.demo import build_parser, run_demo


def test_every_demo_option_has_help():
    actions = [a for a in build_parser()._actions if a.dest != "help"]
    assert actions and all(a.help and a.help.strip() for a in actions), [a.dest for a in actions if not a.help]


@pytest.mark.slow
def test_miniature_demo_runs_end_to_end(tmp_path, capsys):
    summary = run_demo(tmp_path, n_normal=40, n_lesion=24, image_size=32, epochs=1, translator_steps=2,
                       positive_ratio=0.2)
    assert summary["test_images"] > 0 and 0 < summary["test_positives"] < summary["test_images"]
    assert 0.0 <= summary["baseline_auc"][0] <= 1.0 and 0.0 <= summary["augmented_auc"][0] <= 1.0
    assert json.loads((tmp_path / "summary.json").read_text())["test_images"] == summary["test_images"]
    assert (tmp_path / "roc.png").exists() and (tmp_path / "samples.png").exists()
    out = capsys.readouterr().out
    assert "baseline AUC" in out and "[1/5]" not in out  # the result table is printed; progress is logged
