"""Measuring primitives behind ``python -m streamaug.cli.bench`` and ``benchmarks/*.py``.

What is measured and how: process memory from ``/proc``, the loaders under comparison
(:func:`loader_factories`), throughput of a loader (:func:`measure`, :func:`compare`) or of a call
(:func:`time_calls`), the synthesis stage against its translator (:func:`synthesis_bench`), RSS over
a long stream (:func:`memory_trend`) and a classifier step to consume batches
(:func:`classifier_step`). The suite and its tables live in :mod:`streamaug.cli.bench`.

Nothing here asserts a speed; every number comes from a timed run. Loaders are compared
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
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from streamaug.data.collate import collate_xray
from streamaug.io.labels import to_int_label

LoaderFactory = Callable[[], Iterable[dict[str, Any]]]
Consume = Callable[[dict[str, Any]], None]
KINDS = ("plain", "stream", "stream_sites", "synth")


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
    from streamaug.filters.pseudo_label import PseudoLabel
    from streamaug.models import get_classifier
    from streamaug.models.unit import UNIT, unit_preset
    from streamaug.synth.lesion_stream import LesionStream

    filt = PseudoLabel(get_classifier("drn_tiny")(), threshold=0.0, input_size=filter_size, device=device)
    return LesionStream(list(urls), translator=UNIT(unit_preset(preset)), filter=filt, device=device, seed=seed,
                        num_workers=workers, device_batch=batch, sites=True, dtype=dtype)


def loader_factories(urls: Sequence[str], *, workers: int, batch: int, kinds: Sequence[str] = KINDS,
                     device: str = "cpu", preset: str = "tiny") -> dict[str, LoaderFactory]:
    """One factory per kind; every kind uses the same shards, ``batch`` and ``workers``.

    ``batch=0``: per-sample hand-off, ``DataLoader(ds, batch_size=None)`` (not for ``synth``).
    ``plain``: :func:`plain_dataset`; ``stream``/``stream_sites``: ``XRayShards(resampled=True)``
    without/with ``sites=True``; ``synth``: :func:`make_lesion_stream`, whose two inner loaders get
    ``workers // 2`` each (at least 1), so its worker processes are as many as the others' (one more
    when ``workers`` is 1 or odd).
    """
    from torch.utils.data import DataLoader

    from streamaug.data.stream import XRayShards

    def dl(ds: Any) -> DataLoader:
        if batch == 0:
            return DataLoader(ds, batch_size=None, num_workers=workers)
        return DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate_xray)

    out: dict[str, LoaderFactory] = {}
    for kind in kinds:
        if kind == "plain":
            out[kind] = (lambda d: lambda: d)(dl(plain_dataset(urls)))
        elif kind in ("stream", "stream_sites"):
            ds = XRayShards(list(urls), resampled=True, sites=True if kind == "stream_sites" else None)
            out[kind] = (lambda d: lambda: d)(dl(ds))
        elif kind == "synth":
            ls = make_lesion_stream(urls, workers=max(1, workers // 2), batch=batch, preset=preset, device=device)
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


def measure(make: LoaderFactory, seconds: float, *, warmup: int = 2,
            consume: Consume | None = None) -> dict[str, float]:
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
        n = len(batch["image"]) if batch["image"].dim() == 4 else 1  # a batch, or one (C, H, W) sample
        images, batches = images + n, batches + 1
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
    """Measure each factory once per round, the order turned every other round (A, B, B, A, A, B, ...),
    so the first measurement's start-up does not fall on one factory only.

    Returns:
        ``{name: {"img_s" (median), "batch_s" (median), "rounds": [img/s ...], "mem": {max per field}}}``
        plus ``"ratio"``: ``{name: median over rounds of img_s / img_s[baseline]}`` when ``baseline``.
    """
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in factories}
    order = list(factories.items())
    for r in range(rounds):
        for name, make in (order if r % 2 == 0 else order[::-1]):
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
    from streamaug.data.stream import XRayShards

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
    from streamaug.filters.pseudo_label import PseudoLabel
    from streamaug.models import get_classifier
    from streamaug.models.unit import UNIT, unit_preset
    from streamaug.synth.ops import crop_sites, paste_blend
    from streamaug.synth.stage import SynthesisStage

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
        ``samples`` ``[(batch, main_mb, workers_mb, live_workers)]``, first/last (after the first sample, which
        includes start-up) and the least-squares slope of main and main+workers in MB per 1000
        batches, fitted to the samples from ``slope_from_batch`` on (the last three quarters, with
        four samples or more: buffers still fill at the start, which a whole-window fit reads as growth).
    """
    it, samples = iter(make()), []
    start = time.perf_counter()
    for i in range(1, batches + 1):
        next(it)
        if i % every == 0:
            m = memory_snapshot()
            samples.append((i, round(m["main_rss_mb"], 1), round(m["workers_rss_mb"], 1), int(m["workers"])))
    elapsed = time.perf_counter() - start
    _close(it)
    del it
    gc.collect()

    fit = samples[len(samples) // 4:] if len(samples) >= 4 else samples

    def slope(ys: list[float]) -> float:
        xs = [s[0] for s in fit]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        den = sum((x - mx) ** 2 for x in xs) or 1.0
        return 1000.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den

    first, last = samples[0], samples[-1]
    return {"batches": batches, "every": every, "seconds": elapsed, "samples": samples,
            "first_main_mb": first[1], "last_main_mb": last[1], "first_workers_mb": first[2],
            "last_workers_mb": last[2], "slope_from_batch": fit[0][0],
            "slope_main_mb_per_1k": slope([s[1] for s in fit]),
            "slope_total_mb_per_1k": slope([s[1] + s[2] for s in fit])}


def classifier_step(model_name: str, device: str | torch.device) -> Consume:
    """A ``consume`` callback: one forward+backward+SGD step of a fresh ``model_name`` per batch."""
    from streamaug.models import get_classifier

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
