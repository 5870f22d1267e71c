"""Smoke test of the benchmark suite on tiny generated data (no speed assertions)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from streamaug.cli.bench import loader_table, report, run_suite
from streamaug.cli.bench_measure import classifier_step, compare, loader_factories, memory_snapshot
from streamaug.cli.pack import pack
from streamaug.data.shardlist import expand_urls
from streamaug.phantom import write_phantom_dataset

TINY = dict(rounds=1, seconds=0.05, workers=(0, 1), batch=4, dicom_n=4, dicom_size=64, dicom_rounds=1,
            dicom_seconds=0.05, dicom_workers=(0,), dicom_batch=2, synth_seconds=0.05, trend_batches=4,
            trend_every=2)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    write_phantom_dataset(root / "raw", 12, 12, size=(64, 64), splits=(1, 0, 0))
    pack(root / "raw", root / "raw" / "metadata.csv", root / "shards", shard_size=8, progress=False)
    return root


def test_suite_keys_and_positive_rates(shards: Path) -> None:
    res = run_suite(str(shards / "shards"), quick=True, cache=str(shards / "cache"), log=lambda m: None, **TINY)
    json.dumps(res)  # JSON-able
    assert {"settings", "machine", "loaders", "synthesis", "memory_trend", "gpu", "memory", "total_s"} <= set(res)
    assert [(r["dataset"], r["workers"]) for r in res["loaders"]] == [("shards", 0), ("shards", 1), ("dicom64", 0)]
    for r in res["loaders"]:
        c = r["compare"]
        for kind in ("plain", "stream", "stream_sites", "synth"):
            assert c[kind]["img_s"] > 0 and c[kind]["mem"]["main_rss_mb"] > 0
        assert set(c["ratio"]) == {"stream", "stream_sites", "synth"} and min(c["ratio"].values()) > 0
    assert res["loaders"][1]["compare"]["stream_sites"]["mem"]["workers_peak_mb"] > 0  # one worker seen
    s = res["synthesis"]
    assert set(s["patches_s"]) == {"translator", "stage", "stage_nofilter", "crop", "blend", "filter"}
    assert min(s["patches_s"].values()) > 0 and s["ratio"] > 0
    t = res["memory_trend"]
    assert len(t["samples"]) == 2 and t["first_main_mb"] > 0 and "slope_total_mb_per_1k" in t
    if not torch.cuda.is_available():
        assert "skipped" in res["gpu"]
    assert "stream+sites / plain" in report(res)


def test_classifier_step_rate(shards: Path) -> None:
    """The GPU suite's classifier loop, run on CPU: steps/s with and without synthesis."""
    urls = expand_urls(shards / "shards", "train")
    f = loader_factories(urls, workers=0, batch=2, kinds=("stream_sites", "synth"))
    c = compare(f, rounds=1, seconds=0.01, warmup=1, consume=classifier_step("drn_tiny", "cpu"),
                baseline="stream_sites")
    assert c["stream_sites"]["batch_s"] > 0 and c["synth"]["batch_s"] > 0 and c["ratio"]["synth"] > 0
    assert memory_snapshot()["main_peak_mb"] > 0
    table = loader_table([{"dataset": "d", "workers": 0, "batch": 2, "compare": c}])
    assert table.splitlines()[0].startswith("| data | workers | batch | stream+sites img/s | stream+synth img/s |")


def test_module_entry_point_and_scripts_import() -> None:
    """``python -m streamaug.cli.bench`` parses its options; the scripts find what they import."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "streamaug.cli.bench", "--help"], capture_output=True, text=True,
                         check=True, cwd=root)
    assert "--quick" in out.stdout and "--no-dicom" in out.stdout
    code = ("import runpy, sys; sys.argv = ['x', '--help']\n"
            "for name in ('loader', 'synthesis', 'run_all', 'sites', 'memory', 'epoch_start', 'collate', 'tar_read',"
            " 'train_step'):\n"
            "    try:\n"
            "        runpy.run_path(f'benchmarks/{name}.py', run_name='__main__')\n"
            "    except SystemExit as e:\n"
            "        assert e.code in (0, None), (name, e.code)\n")
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)


def _script(name: str, *args: str) -> str:
    """stdout of ``python benchmarks/<name>.py args`` run from the repository root."""
    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, f"benchmarks/{name}.py", *args], capture_output=True, text=True,
                          check=True, cwd=root).stdout


def _rows(out: str, header_word: str) -> list[list[str]]:
    """Cells of the Markdown table rows in ``out`` (the header row holds ``header_word``)."""
    return [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines()
            if line.startswith("| ") and header_word not in line]


def test_memory_and_epoch_start_scripts_run(shards: Path) -> None:
    folder = str(shards / "shards")
    out = _script("memory", "--shards", folder, "--batches", "4", "--every", "2", "--workers", "1", "--batch", "4")
    rows = _rows(out, "batch")
    # LesionStream runs two loaders (real samples, synthesis sources), each with --workers 1
    assert [int(r[0]) for r in rows] == [2, 4] and all(float(r[1]) > 0 and int(r[3]) == 2 for r in rows)
    assert "4 batches in" in out
    out = _script("epoch_start", "--shards", folder, "--workers", "1", "--epochs", "1")
    assert out.startswith("cold: ") and "\nwarm: " in out and "warm / cold (median epoch) = " in out


def test_collate_and_tar_read_scripts_run(shards: Path) -> None:
    folder = str(shards / "shards")
    rows = _rows(_script("collate", "--shards", folder, "--workers", "1", "--batch", "4", "--rounds", "1",
                         "--seconds", "0.05"), "img/s")
    assert [r[0] for r in rows] == ["plain wds", "stream+sites"]
    assert all(float(v) > 0 for r in rows for v in r[1:])
    out = _script("tar_read", "--shards", folder, "--rounds", "1")
    rows = _rows(out, "us per file")
    assert [r[0] for r in rows] == ["tarfile", "streamaug.io.tar"] and all(float(r[1]) > 0 for r in rows)
    assert "pax header per file: False" in out  # the packer writes an int mtime


def test_train_step_script_runs(shards: Path) -> None:
    # two rounds with a worker: each round starts a fresh loader (before: the second round reused a plain
    # loader whose workers the first had shut down, "Queue is closed")
    out = _script("train_step", "--shards", str(shards / "shards"), "--workers", "1", "--batch", "4", "--size", "64",
                  "--rounds", "2", "--seconds", "0.05")
    last = out.strip().splitlines()[-1]
    assert "lesion / plain = " in last and float(last.rsplit(" ", 1)[-1]) > 0


def test_compare_turns_the_order_every_other_round(monkeypatch) -> None:
    """The first measurement of a run carries start-up costs; always measuring A first put them on A."""
    import streamaug.cli.bench_measure as bm

    seen = []
    monkeypatch.setattr(bm, "measure", lambda make, seconds, **kw: seen.append(make()) or
                        {"img_s": 1.0, "batch_s": 1.0, "images": 1, "batches": 1, "seconds": 1.0})
    compare({"a": lambda: "a", "b": lambda: "b"}, rounds=4, seconds=0.1, baseline="a")
    assert seen == ["a", "b", "b", "a", "a", "b", "b", "a"]


def test_memory_trend_slope_leaves_the_start_up_out(monkeypatch) -> None:
    """Buffers filling in the first batches read as growth when the whole window is fitted."""
    import itertools

    import streamaug.cli.bench_measure as bm

    rss = iter([100.0, 180.0] + [200.0] * 6)  # two samples of start-up, then flat
    monkeypatch.setattr(bm, "memory_snapshot", lambda: {"main_rss_mb": next(rss), "workers_rss_mb": 0.0,
                                                        "workers": 0})
    trend = bm.memory_trend(lambda: itertools.repeat({}), batches=80, every=10)
    assert trend["slope_from_batch"] == 30 and trend["slope_main_mb_per_1k"] == 0.0
    assert trend["first_main_mb"] == 100.0


def test_train_step_arms_have_as_many_workers_and_pin_alike(shards: Path) -> None:
    """Before: the plain loader had ``--workers`` workers, the LesionStream two loaders of ``--workers``
    each, so on a GPU the ratio measured the worker counts as much as the synthesis."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_step", Path("benchmarks/train_step.py"))
    train_step = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_step)
    args = argparse.Namespace(size=64, batch=4, workers=1, device="cpu", preset="tiny", synthetic_fraction=0.25)
    urls = expand_urls(str(shards / "shards"), "train")
    makers = train_step.factories(urls, args)
    plain, lesion = makers["plain"](), makers["lesion"].stream
    assert plain.num_workers == 2 * args.workers == 2 * lesion.num_workers and not plain.pin_memory
    assert not getattr(plain.dataset, "sites", None)  # what training without synthesis reads


@pytest.mark.parametrize("args, said", [
    (["--out", "/nonexistent/dir/res.json"], "--out /nonexistent/dir/res.json: no folder /nonexistent/dir"),
    (["--out", "FOLDER"], "--out .*FOLDER is a folder"),
    (["--shards", "/nonexistent"], "--shards /nonexistent: no such folder or file"),
    (["--shards", "FOLDER"], "--shards .*FOLDER: no manifest.json and no .tar shards in it"),
])
def test_bench_checks_out_and_shards_before_the_suite(tmp_path, capsys, monkeypatch, args, said):
    """Before: --out in a missing folder failed after the whole suite ran (its results lost), and
    --shards /nonexistent gave a message about sites=True."""
    import re

    import streamaug.cli.bench as bench

    monkeypatch.setattr(bench, "run_suite", lambda *a, **k: pytest.fail("the suite ran"))
    (tmp_path / "FOLDER").mkdir()
    args = [str(tmp_path / a) if a == "FOLDER" else a for a in args]
    assert bench.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and re.search(said, err), err
