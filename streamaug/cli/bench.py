"""The benchmark suite, ``python -m streamaug.cli.bench``, and its Markdown tables.

:func:`run_suite` runs every comparison with the settings of :data:`SUITE` (loaders on BTXRD and on
generated 2048x2048 DICOM shards, synthesis stage vs translator, memory over a long stream, and on
CUDA the classifier steps); :func:`report` prints the tables recorded in ``benchmarks/RESULTS.md``.
The measuring itself (timing, memory, the loaders compared) is in :mod:`streamaug.cli.bench_measure`.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from streamaug.cli.bench_measure import (
    KINDS,
    classifier_step,
    compare,
    loader_factories,
    make_lesion_stream,
    memory_snapshot,
    memory_trend,
    synthesis_bench,
)

LABELS = {"plain": "plain wds", "stream": "stream", "stream_sites": "stream+sites", "synth": "stream+synth"}


# ---------------------------------------------------------------------------------------- tables
def format_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table; floats get one decimal (two below 10)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def loader_table(results: Sequence[dict[str, Any]]) -> str:
    """Table of :func:`compare` results, one row per (dataset, workers)."""
    rows = []
    for r in results:
        c = r["compare"]
        kinds = [k for k in KINDS if k in c]
        row = [r["dataset"], r["workers"], r["batch"]] + [c[k]["img_s"] for k in kinds]
        row += [c["ratio"].get(k, float("nan")) for k in kinds if k != "plain"]
        row += [max(c[k]["mem"]["main_rss_mb"] for k in kinds), max(c[k]["mem"]["workers_peak_mb"] for k in kinds)]
        rows.append(row)
    kinds = [k for k in KINDS if k in results[0]["compare"]]
    header = ["data", "workers", "batch"] + [f"{LABELS[k]} img/s" for k in kinds]
    header += [f"{LABELS[k]} / plain" for k in kinds if k != "plain"] + ["main RSS MB", "workers peak MB"]
    return format_table(header, rows)


def synthesis_table(s: dict[str, Any]) -> str:
    """Table of :func:`synthesis_bench` results (patches/s per part)."""
    r = s["patches_s"]
    rows = [[name, r[name], r[name] / r["translator"]] for name in r]
    return format_table(["part", "patches/s", "vs translator"], rows)


# ---------------------------------------------------------------------------------------- the suite
SUITE = {  # per mode: rounds x seconds per loader, worker counts, DICOM images, trend length
    "full": dict(rounds=3, seconds=4.0, workers=(0, 1, 2), batch=32, dicom_n=32, dicom_rounds=2,
                 dicom_seconds=4.0, dicom_workers=(0, 1, 2), dicom_batch=4, dicom_size=2048, synth_seconds=2.0,
                 trend_batches=300, trend_every=20),
    "quick": dict(rounds=2, seconds=1.5, workers=(0, 2), batch=32, dicom_n=8, dicom_rounds=1,
                  dicom_seconds=2.0, dicom_workers=(2,), dicom_batch=4, dicom_size=2048, synth_seconds=1.0,
                  trend_batches=40, trend_every=5),
}


def phantom_shards(cache: str | os.PathLike | None = None, n: int = 512, size: int = 256,
                   fmt: str = "png", shard_size: int = 32) -> str:
    """A packed folder of ``n`` phantom radiographs (``size`` px, ``fmt`` png or dcm, half with
    lesions), generated once into ``cache`` (default ``$TMPDIR/streamaug-bench``) and reused.

    The benchmark scripts use it when no ``--shards`` folder is given. Returns the folder (its
    ``train`` split holds every image).
    """
    import tempfile

    from streamaug.cli.pack import pack
    from streamaug.phantom import write_phantom_dataset

    root = Path(cache or os.path.join(tempfile.gettempdir(), "streamaug-bench")) / f"{fmt}{size}-n{n}"
    if not (root / "shards" / "manifest.json").exists():
        write_phantom_dataset(root / "raw", n // 2, n - n // 2, size=(size, size), fmt=fmt, splits=(1, 0, 0))
        pack(root / "raw", root / "raw" / "metadata.csv", root / "shards", shard_size=shard_size, progress=False,
             overwrite=True)
    return str(root / "shards")


def add_shards_argument(ap: Any) -> None:
    """``--shards`` (optional) and ``--split`` for the benchmark scripts."""
    ap.add_argument("--shards", default=None,
                    help="a folder packed by streamaug-pack (with manifest.json); default: 512 phantom "
                         "256-px radiographs generated once into $TMPDIR/streamaug-bench")
    ap.add_argument("--split", default="train", help="split of the packed folder")


def shard_urls(shards: str | None, split: str = "train") -> list[str]:
    """The shard list of ``--shards`` (phantom shards when None)."""
    from streamaug.data.shardlist import expand_urls

    return expand_urls(shards or phantom_shards(), split)


def run_suite(shards: str | None, *, quick: bool = False, cache: str | None = None, dicom: bool = True,
              log: Callable[[str], None] = print, **override: Any) -> dict[str, Any]:
    """The whole suite; returns a JSON-able dict (see ``benchmarks/RESULTS.md``).

    Args:
        shards: a packed folder (``train`` split used) or any ``XRayShards`` spec; None: phantom
            shards (:func:`phantom_shards`).
        quick: the short settings of :data:`SUITE`.
        cache: where the DICOM shards are generated (default ``$TMPDIR/streamaug-bench``).
        dicom: also run the 2048x2048 16-bit DICOM shards.
        override: replace entries of the :data:`SUITE` settings (tests use tiny values).
    """
    import platform

    from streamaug.data.shardlist import expand_urls

    cfg = {**SUITE["quick" if quick else "full"], **override}
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if shards is None:
        shards = phantom_shards(cache)
    urls = expand_urls(shards, "train") if os.path.isdir(shards) and os.path.exists(
        os.path.join(shards, "manifest.json")) else expand_urls(shards)
    res: dict[str, Any] = {"settings": cfg, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                           "torch": torch.__version__, "threads": torch.get_num_threads(), "cuda": cuda,
                           "gpu": torch.cuda.get_device_name() if cuda else None}, "loaders": []}
    started = time.perf_counter()
    name = os.path.basename(os.path.normpath(shards)) if os.path.isdir(shards) else "shards"
    sets = [(name, urls, cfg["workers"], cfg["batch"], cfg["rounds"], cfg["seconds"])]
    if dicom:
        t = time.perf_counter()
        durls = shard_urls(phantom_shards(cache, cfg["dicom_n"], cfg["dicom_size"], fmt="dcm", shard_size=8))
        res["dicom_setup_s"] = time.perf_counter() - t
        sets.append((f"dicom{cfg['dicom_size']}", durls, cfg["dicom_workers"], cfg["dicom_batch"], cfg["dicom_rounds"],
                     cfg["dicom_seconds"]))
    for name, us, workers, batch, rounds, seconds in sets:
        for w in workers:
            log(f"[bench] loaders: {name}, {w} workers, batch {batch}, {rounds} rounds x {seconds}s")
            c = compare(loader_factories(us, workers=w, batch=batch, device=device), rounds=rounds,
                        seconds=seconds, baseline="plain")
            res["loaders"].append({"dataset": name, "workers": w, "batch": batch, "compare": c})
    log("[bench] synthesis stage vs translator")
    res["synthesis"] = synthesis_bench(urls, device=device, batch=cfg["batch"], rounds=cfg["rounds"],
                                       seconds=cfg["synth_seconds"])
    w = max(cfg["workers"])
    log(f"[bench] memory over a long LesionStream ({cfg['trend_batches']} batches, {w} workers)")
    ls = make_lesion_stream(urls, workers=w, batch=cfg["batch"], device=device)
    res["memory_trend"] = memory_trend(lambda: ls.iter_batches(cfg["batch"]), batches=cfg["trend_batches"],
                                       every=cfg["trend_every"])
    if cuda:
        log("[bench] GPU: bf16 synthesis, classifier steps with vs without synthesis")
        res["gpu"] = {"synthesis_bf16": synthesis_bench(urls, device="cuda", batch=cfg["batch"], bf16=True,
                                                        rounds=cfg["rounds"], seconds=cfg["synth_seconds"])}
        for model in ("drn_tiny", "drn_small"):
            f = loader_factories(urls, workers=w, batch=cfg["batch"], kinds=("stream_sites", "synth"), device=device)
            res["gpu"][model] = compare(f, rounds=cfg["rounds"], seconds=cfg["seconds"],
                                        consume=classifier_step(model, "cuda"), baseline="stream_sites")
    else:
        res["gpu"] = {"skipped": "torch.cuda.is_available() is False"}
    res["memory"] = memory_snapshot()
    res["total_s"] = time.perf_counter() - started
    return res


def report(res: dict[str, Any]) -> str:
    """Markdown tables of a :func:`run_suite` result."""
    s, t = res["synthesis"], res["memory_trend"]
    parts = ["Loaders (img/s, median of rounds; ratio = median of per-round ratios):",
             loader_table(res["loaders"]), "",
             f"Synthesis, preset {s['preset']} (patch {s['patch']}), {s['batch']} images {s['image']}, "
             f"{s['filter_model']}, {s['device']}: stage / translator = {s['ratio']:.3f}", synthesis_table(s), "",
             f"Memory over {t['batches']} LesionStream batches ({t['seconds']:.0f} s): main RSS "
             f"{t['first_main_mb']:.0f} -> {t['last_main_mb']:.0f} MB, workers {t['first_workers_mb']:.0f} -> "
             f"{t['last_workers_mb']:.0f} MB; from batch {t['slope_from_batch']}: slope main "
             f"{t['slope_main_mb_per_1k']:+.1f} MB/1k batches, main+workers "
             f"{t['slope_total_mb_per_1k']:+.1f} MB/1k batches"]
    gpu = res.get("gpu", {})
    if "skipped" in gpu:
        parts.append(f"GPU: skipped ({gpu['skipped']})")
    else:
        parts += ["", f"GPU synthesis bf16: stage {gpu['synthesis_bf16']['patches_s']['stage']:.0f} patches/s, "
                  f"translator {gpu['synthesis_bf16']['patches_s']['translator']:.0f} patches/s"]
        rows = [[m, gpu[m]["stream_sites"]["batch_s"], gpu[m]["synth"]["batch_s"], gpu[m]["ratio"]["synth"]]
                for m in ("drn_tiny", "drn_small")]
        parts.append(format_table(["classifier", "steps/s stream", "steps/s stream+synth", "ratio"], rows))
    parts.append(f"Total {res['total_s']:.0f} s; main process peak RSS {res['memory']['main_peak_mb']:.0f} MB")
    return "\n".join(parts)


def check_shards(shards: str | None) -> None:
    """Refuse, before the suite, a ``--shards`` that is not there or that holds no shards.

    Raises:
        ValueError: no such folder or file, or a folder with neither ``manifest.json`` nor ``.tar`` shards.
    """
    from streamaug._commands import check_shards as check_spec

    check_spec(shards, "--shards")
    path = Path(shards) if shards else None
    if path and path.is_dir() and not (path / "manifest.json").exists() and not any(path.glob("*.tar")):
        raise ValueError(f"--shards {shards}: no manifest.json and no .tar shards in it; give a folder packed by "
                         "streamaug-pack")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m streamaug.cli.bench [--shards DIR] [--quick] [--out results.json]``; the exit code.

    ``--out``, ``--shards`` and ``--cache`` are checked before the suite runs (a bad ``--out`` would
    lose its results); bad input ends with ``error: ...`` and exit code 2.
    """
    import argparse
    import json

    from streamaug._commands import USER_ERRORS, check_file_to_write, check_folder_to_write, fail

    ap = argparse.ArgumentParser(prog="python -m streamaug.cli.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--shards", default=None, help="a packed folder, e.g. BTXRD packed by streamaug-pack (train "
                    "split used); default: phantom radiographs generated once into --cache")
    ap.add_argument("--quick", action="store_true", help="short settings (about 2 minutes on 2 cores)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--cache", default=None, help="folder for the generated phantom and DICOM shards "
                    "(default $TMPDIR/streamaug-bench)")
    ap.add_argument("--no-dicom", action="store_true", help="skip the 2048x2048 DICOM shards")
    args = ap.parse_args(argv)
    try:
        check_file_to_write(args.out, "--out", make_folders=False)
        if args.cache:
            check_folder_to_write(args.cache, "--cache")
        check_shards(args.shards)
        res = run_suite(args.shards, quick=args.quick, cache=args.cache, dicom=not args.no_dicom)
        print(report(res))
        if args.out:
            with open(args.out, "w", encoding="utf-8") as fh:
                json.dump(res, fh, indent=1)
    except USER_ERRORS as err:  # ShardError of unreadable shards, a path that cannot be written
        return fail(err)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
