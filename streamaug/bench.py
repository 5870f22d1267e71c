"""Measuring code behind ``benchmarks/*.py`` and ``python -m streamaug.bench`` (the suite).

Nothing here asserts a speed; every number printed comes from a timed run. Loaders are compared
*alternating* (A, B, C, A, B, C, ... for several rounds) so slow phases of a shared machine hit
every loader alike; a ratio is the median of the per-round ratios.

Memory comes from ``/proc/<pid>/status`` (Linux): ``VmRSS`` (now) and ``VmHWM`` (peak) of the
main process and of its child processes (the DataLoader workers). Workers are forked, so their
RSS also counts pages shared with the main process; the sum over workers overstates the unique
memory. On CUDA, ``torch.cuda.max_memory_allocated`` is reported as well.
"""
from __future__ import annotations

import gc
import io
import os
import statistics
import time
from typing import Any, Callable, Iterable, Sequence

import torch

from .collate import collate_xray
from .labels import to_int_label

LoaderFactory = Callable[[], Iterable[dict[str, Any]]]
Consume = Callable[[dict[str, Any]], None]
KINDS = ("plain", "stream", "stream_sites", "synth")
LABELS = {"plain": "plain wds", "stream": "stream", "stream_sites": "stream+sites", "synth": "stream+synth"}


# ---------------------------------------------------------------------------------------- memory
def proc_status_mb(pid: int, field: str) -> float:
    """``field`` (``VmRSS``, ``VmHWM``, ...) of process ``pid`` in MB; 0 if it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return 0.0


def child_pids(pid: int | None = None) -> list[int]:
    """All descendant process ids of ``pid`` (default: this process), from ``/proc``."""
    todo, out = [os.getpid() if pid is None else pid], []
    while todo:
        parent = todo.pop()
        try:
            tids = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{parent}/task/{tid}/children", encoding="ascii") as fh:
                    kids = [int(k) for k in fh.read().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def memory_snapshot() -> dict[str, float]:
    """RSS and peak RSS (MB) of this process and the sum over its child processes (workers)."""
    me, kids = os.getpid(), child_pids()
    snap = {"main_rss_mb": proc_status_mb(me, "VmRSS"), "main_peak_mb": proc_status_mb(me, "VmHWM"),
            "workers": float(len(kids)), "workers_rss_mb": sum(proc_status_mb(k, "VmRSS") for k in kids),
            "workers_peak_mb": sum(proc_status_mb(k, "VmHWM") for k in kids)}
    if torch.cuda.is_available():
        snap["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return snap


# ---------------------------------------------------------------------------------------- loaders
def _decode_dcm(data: bytes) -> torch.Tensor:
    """Plain DICOM decode for the baseline: pixel data scaled by ``2**BitsStored - 1``."""
    import numpy as np
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    arr = ds.pixel_array.astype(np.float32) / float((1 << int(ds.BitsStored)) - 1)
    return torch.from_numpy(arr)


def _plain_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """WebDataset-decoded sample -> the keys ``collate_xray`` batches (image, mask, label)."""
    image = sample["png"] if "png" in sample else sample["dcm"]
    out = {"key": sample["__key__"], "image": image[None],
           "label": to_int_label((sample.get("json") or {}).get("label"))}
    if "mask.png" in sample:
        out["mask"] = sample["mask.png"][None]
    return out


def plain_dataset(urls: Sequence[str]) -> Any:
    """The baseline: ``webdataset.WebDataset(urls, shardshuffle=False).decode("torchl")`` (PNG and
    mask to float tensors, JSON parsed; a pydicom handler for ``.dcm``), repeated forever."""
    import webdataset as wds

    return (wds.WebDataset(list(urls), shardshuffle=False, empty_check=False)
            .decode(wds.handle_extension("dcm", _decode_dcm), "torchl").map(_plain_sample).repeat(2**31))


def make_lesion_stream(urls: Sequence[str], *, workers: int, batch: int, preset: str = "tiny",
                       device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                       filter_size: int = 256, seed: int = 0) -> Any:
    """A ``LesionStream`` with an untrained UNIT ``preset`` translator and a ``PseudoLabel`` filter
    on an untrained ``drn_tiny`` (threshold 0: every candidate is scored, all are kept), images
    scored at ``filter_size``. Weights do not matter for speed."""
    from .filters.pseudo_label import PseudoLabel
    from .models import get_classifier
    from .synth.lesion_stream import LesionStream
    from .synth.unit import UNIT, unit_preset

    filt = PseudoLabel(get_classifier("drn_tiny")(), threshold=0.0, input_size=filter_size, device=device)
    return LesionStream(list(urls), translator=UNIT(unit_preset(preset)), filter=filt, device=device, seed=seed,
                        num_workers=workers, device_batch=batch, sites=True, dtype=dtype)


def loader_factories(urls: Sequence[str], *, workers: int, batch: int, kinds: Sequence[str] = KINDS,
                     device: str = "cpu", preset: str = "tiny") -> dict[str, LoaderFactory]:
    """One factory per kind; every kind uses the same shards, ``batch`` and ``workers``.

    ``plain``: :func:`plain_dataset`; ``stream``/``stream_sites``: ``XRayShards(resampled=True)``
    without/with ``sites=True``; ``synth``: :func:`make_lesion_stream` (its own ``workers``).
    """
    from torch.utils.data import DataLoader

    from .stream import XRayShards

    def dl(ds: Any) -> DataLoader:
        return DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate_xray)

    out: dict[str, LoaderFactory] = {}
    for kind in kinds:
        if kind == "plain":
            out[kind] = (lambda d: lambda: d)(dl(plain_dataset(urls)))
        elif kind in ("stream", "stream_sites"):
            ds = XRayShards(list(urls), resampled=True, sites=True if kind == "stream_sites" else None)
            out[kind] = (lambda d: lambda: d)(dl(ds))
        elif kind == "synth":
            ls = make_lesion_stream(urls, workers=workers, batch=batch, preset=preset, device=device)
            out[kind] = (lambda s: lambda: s.iter_batches(batch))(ls)
        else:
            raise KeyError(f"unknown loader kind {kind!r}; choose from {KINDS}")
    return out


# ---------------------------------------------------------------------------------------- timing
def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _close(it: Any) -> None:
    """Stop an iterator now: generators (``LesionStream``) and DataLoader iterators (workers)."""
    for name in ("close", "_shutdown_workers"):
        if hasattr(it, name):
            getattr(it, name)()


def measure(make: LoaderFactory, seconds: float, *, warmup: int = 2, consume: Consume | None = None) -> dict[str, float]:
    """Iterate a fresh iterator of ``make()``: skip ``warmup`` batches (worker start-up, kernel
    loading), then count images for ``seconds``. ``consume`` runs on every batch (e.g. a training
    step). Memory is sampled while the workers are still alive.

    Returns:
        ``images``, ``batches``, ``seconds``, ``img_s``, ``batch_s`` and :func:`memory_snapshot`.
    """
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    it = iter(make())
    for _ in range(warmup):
        batch = next(it)
        if consume is not None:
            consume(batch)
    _sync()
    images = batches = 0
    start = time.perf_counter()
    while True:
        batch = next(it)
        if consume is not None:
            consume(batch)
        images, batches = images + len(batch["image"]), batches + 1
        _sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    mem = memory_snapshot()
    _close(it)
    del it, batch
    gc.collect()
    return {"images": images, "batches": batches, "seconds": elapsed, "img_s": images / elapsed,
            "batch_s": batches / elapsed, **mem}


def compare(factories: dict[str, LoaderFactory], *, rounds: int, seconds: float, warmup: int = 2,
            consume: Consume | None = None, baseline: str | None = None) -> dict[str, Any]:
    """Measure each factory once per round, in the same order every round (A, B, A, B, ...).

    Returns:
        ``{name: {"img_s" (median), "batch_s" (median), "rounds": [img/s ...], "mem": {max per field}}}``
        plus ``"ratio"``: ``{name: median over rounds of img_s / img_s[baseline]}`` when ``baseline``.
    """
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in factories}
    for _ in range(rounds):
        for name, make in factories.items():
            runs[name].append(measure(make, seconds, warmup=warmup, consume=consume))
    out: dict[str, Any] = {}
    for name, rs in runs.items():
        mem_keys = [k for k in rs[0] if k.endswith("_mb")]
        out[name] = {"img_s": statistics.median(r["img_s"] for r in rs),
                     "batch_s": statistics.median(r["batch_s"] for r in rs),
                     "rounds": [round(r["img_s"], 1) for r in rs],
                     "mem": {k: round(max(r[k] for r in rs), 1) for k in mem_keys}}
    if baseline is not None:
        out["ratio"] = {name: statistics.median(a["img_s"] / b["img_s"] for a, b in zip(rs, runs[baseline]))
                        for name, rs in runs.items() if name != baseline}
    return out


def time_calls(fn: Callable[[], int], seconds: float) -> float:
    """Call ``fn`` (which returns the items it processed) repeatedly for ``seconds``; items/s."""
    fn()  # warm-up (kernel selection, allocator)
    _sync()
    items, start = 0, time.perf_counter()
    while True:
        items += fn()
        _sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return items / elapsed


# ---------------------------------------------------------------------------------------- synthesis
def normal_batch(urls: Sequence[str], batch: int, seed: int = 1) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``batch`` decoded normal images that have sites, from ``XRayShards(sites=True)``."""
    from .stream import XRayShards

    images, sites = [], []
    for sample in XRayShards(list(urls), resampled=True, sites=True, seed=seed):
        if sample["label"] == 0 and len(sample["sites"]):
            images.append(sample["image"])
            sites.append(sample["sites"])
            if len(images) == batch:
                return torch.stack(images), sites
    raise RuntimeError("unreachable: a resampled stream does not end")


def synthesis_bench(urls: Sequence[str], *, preset: str = "tiny", device: str = "cpu", batch: int = 32,
                    bf16: bool = False, rounds: int = 3, seconds: float = 2.0,
                    filter_model: str = "drn_tiny", filter_size: int = 256) -> dict[str, Any]:
    """Patches/s of the translator alone on ``(B, 1, P, P)`` vs ``SynthesisStage.synthesize``
    (crop + bone check + translate + blend + filter) on ``B`` real normal images with one site each,
    the stage without filter, and the parts alone (crop, blend, filter), alternating for ``rounds``.

    ``bf16``: autocast bfloat16 for the translator, as the stage does it (CUDA only; ignored on CPU).
    """
    from .filters.pseudo_label import PseudoLabel
    from .models import get_classifier
    from .synth.blend import crop_sites, paste_blend
    from .synth.stage import SynthesisStage
    from .synth.unit import UNIT, unit_preset

    dev = torch.device(device)
    translator = UNIT(unit_preset(preset)).to(dev).eval()
    filt = PseudoLabel(get_classifier(filter_model)(), threshold=0.0, input_size=filter_size, device=dev)
    use_amp = bf16 and dev.type == "cuda"
    dtype = torch.bfloat16 if bf16 else None
    stage = SynthesisStage(translator, filter=filt, device=dev, dtype=dtype)
    bare = SynthesisStage(translator, filter=None, device=dev, dtype=dtype)
    images, sites = normal_batch(urls, batch)
    images = images.to(dev)
    boxes, source = stage.choose_sites(sites, list(range(batch)))
    boxes, source = boxes.to(dev), source.to(dev)
    p = stage.patch_size
    patches = torch.rand(batch, 1, p, p, device=dev)
    translated = patches.clone()
    idx = torch.arange(batch, device=dev)

    @torch.no_grad()
    def translate() -> int:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            translator.translate(patches)
        return batch

    parts: dict[str, Callable[[], int]] = {
        "translator": translate,
        "stage": lambda: (stage.synthesize(images, boxes, source), batch)[1],
        "stage_nofilter": lambda: (bare.synthesize(images, boxes, source), batch)[1],
        "crop": lambda: (crop_sites(images, boxes, source, p), batch)[1],
        "blend": lambda: (paste_blend(images[source], translated, boxes, idx, stage.blend_n), batch)[1],
        "filter": lambda: (filt(images[source]), batch)[1],
    }
    rates: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(rounds):
        for name, fn in parts.items():
            rates[name].append(time_calls(fn, seconds))
    out: dict[str, Any] = {"patches_s": {name: statistics.median(r) for name, r in rates.items()}}
    out.update(ratio=statistics.median(s / t for s, t in zip(rates["stage"], rates["translator"])),
               rounds={k: [round(v, 1) for v in r] for k, r in rates.items()}, preset=preset, patch=p,
               batch=batch, image=list(images.shape[-2:]), device=str(dev), bf16=use_amp,
               filter_model=f"PseudoLabel({filter_model}, input {filter_size})", dark_crops=stage.stats["dark_crops"])
    if dev.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def memory_trend(make: LoaderFactory, *, batches: int, every: int) -> dict[str, Any]:
    """Sample RSS (main, workers) every ``every`` batches of one long stream.

    Returns:
        ``samples`` ``[(batch, main_mb, workers_mb)]``, first/last (after the first sample, which
        includes start-up) and the least-squares slope of main and main+workers in MB per 1000
        batches.
    """
    it, samples = iter(make()), []
    start = time.perf_counter()
    for i in range(1, batches + 1):
        next(it)
        if i % every == 0:
            m = memory_snapshot()
            samples.append((i, round(m["main_rss_mb"], 1), round(m["workers_rss_mb"], 1)))
    elapsed = time.perf_counter() - start
    _close(it)
    del it
    gc.collect()

    def slope(ys: list[float]) -> float:
        xs = [s[0] for s in samples]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        den = sum((x - mx) ** 2 for x in xs) or 1.0
        return 1000.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den

    first, last = samples[0], samples[-1]
    return {"batches": batches, "every": every, "seconds": elapsed, "samples": samples,
            "first_main_mb": first[1], "last_main_mb": last[1], "first_workers_mb": first[2],
            "last_workers_mb": last[2], "slope_main_mb_per_1k": slope([s[1] for s in samples]),
            "slope_total_mb_per_1k": slope([s[1] + s[2] for s in samples])}


def classifier_step(model_name: str, device: str | torch.device) -> Consume:
    """A ``consume`` callback: one forward+backward+SGD step of a fresh ``model_name`` per batch."""
    from .models import get_classifier

    dev = torch.device(device)
    model = get_classifier(model_name)().to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step(batch: dict[str, Any]) -> None:
        x = batch["image"].to(dev, non_blocking=True).float()
        y = batch["label"].clamp(min=0).float().to(dev)
        logits = model(x).reshape(len(x), -1)[:, 0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


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


def dicom_shards(cache: str | os.PathLike, n: int, size: int = 2048) -> list[str]:
    """``n`` phantom DICOMs (``size``x``size``, 16-bit) packed into shards of 8, cached in ``cache``."""
    from pathlib import Path

    from .pack import pack
    from .phantom import write_phantom_dataset
    from .shardlist import expand_urls

    root = Path(cache) / f"dicom{size}-n{n}"
    if not (root / "shards" / "manifest.json").exists():
        write_phantom_dataset(root / "raw", n // 2, n - n // 2, size=(size, size), fmt="dcm", splits=(1, 0, 0))
        pack(root / "raw", root / "raw" / "metadata.csv", root / "shards", shard_size=8, progress=False,
             overwrite=True)
    return expand_urls(root / "shards", "train")


def run_suite(shards: str, *, quick: bool = False, cache: str | None = None, dicom: bool = True,
              log: Callable[[str], None] = print, **override: Any) -> dict[str, Any]:
    """The whole suite; returns a JSON-able dict (see ``benchmarks/RESULTS.md``).

    Args:
        shards: packed BTXRD folder (``train`` split used) or any ``XRayShards`` spec.
        quick: the short settings of :data:`SUITE`.
        cache: where the DICOM shards are generated (default ``$TMPDIR/streamaug-bench``).
        dicom: also run the 2048x2048 16-bit DICOM shards.
        override: replace entries of the :data:`SUITE` settings (tests use tiny values).
    """
    import platform
    import tempfile

    from .shardlist import expand_urls

    cfg = {**SUITE["quick" if quick else "full"], **override}
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    urls = expand_urls(shards, "train") if os.path.isdir(shards) and os.path.exists(
        os.path.join(shards, "manifest.json")) else expand_urls(shards)
    res: dict[str, Any] = {"settings": cfg, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                           "torch": torch.__version__, "threads": torch.get_num_threads(), "cuda": cuda,
                           "gpu": torch.cuda.get_device_name() if cuda else None}, "loaders": []}
    started = time.perf_counter()
    sets = [("btxrd256", urls, cfg["workers"], cfg["batch"], cfg["rounds"], cfg["seconds"])]
    if dicom:
        t = time.perf_counter()
        durls = dicom_shards(cache or os.path.join(tempfile.gettempdir(), "streamaug-bench"), cfg["dicom_n"],
                             cfg["dicom_size"])
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
             f"{t['last_workers_mb']:.0f} MB; slope main {t['slope_main_mb_per_1k']:+.1f} MB/1k batches, "
             f"main+workers {t['slope_total_mb_per_1k']:+.1f} MB/1k batches"]
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m streamaug.bench [--shards DIR] [--quick] [--out results.json]``."""
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m streamaug.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--shards", default="/tmp/shards/btxrd", help="packed BTXRD folder (train split used)")
    ap.add_argument("--quick", action="store_true", help="short settings (about 2 minutes on 2 cores)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--cache", default=None, help="folder for the generated DICOM shards")
    ap.add_argument("--no-dicom", action="store_true", help="skip the 2048x2048 DICOM shards")
    args = ap.parse_args(argv)
    res = run_suite(args.shards, quick=args.quick, cache=args.cache, dicom=not args.no_dicom)
    print(report(res))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
