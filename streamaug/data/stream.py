"""``XRayShards``: the X-ray shard stream, split by rank and worker, seeded, resumable.

Stages, each a generator (``iterator -> iterator``), in the order a sample meets them::

    plan (shards -> this reader) -> read tar -> shuffle buffer -> [resume skip] -> decode
        -> resize -> propose sites -> transform -> yield

Shuffling works on raw bytes, before decoding, so a resumed stream skips already-seen samples
without decoding them. Example with a ``DataLoader``::

    ds = XRayShards("shards/train", sites=True)           # folder with manifest.json
    loader = StatefulDataLoader(ds, batch_size=32, num_workers=4, collate_fn=collate_xray)
    for epoch in range(10):
        ds.set_epoch(epoch)
        for batch in loader: ...
"""
from __future__ import annotations

import io
import json
import multiprocessing
import warnings
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from webdataset.tariterators import base_plus_ext

from streamaug.data.collate import one_storage
from streamaug.data.distributed import Slot, current_slot
from streamaug.io.tar import READ_ERRORS, iter_tar_files, open_tar_stream
from streamaug.io.labels import to_int_label
from streamaug.io.errors import SampleError, ShardError
from streamaug.data.shardlist import expand_urls, find_manifest, plan_epoch, scan_metadata, shard_counts

IMAGE_EXTS = ("png", "jpg", "jpeg", "dcm", "dicom", "tif", "tiff")
STAT_NAMES = ("yielded", "skipped_samples", "bad_shards", "padded")


class _Counters:
    """Counters shared by the DataLoader workers and the main process (a shared-memory array).

    When the owning dataset is pickled outside of process start-up (e.g. ``copy.deepcopy``), the
    copy gets counters of its own.
    """

    def __init__(self) -> None:
        self._arr = multiprocessing.get_context().Array("q", len(STAT_NAMES))

    def add(self, name: str, value: int = 1) -> None:
        with self._arr.get_lock():
            self._arr[STAT_NAMES.index(name)] += value

    def as_dict(self) -> dict[str, int]:
        return dict(zip(STAT_NAMES, self._arr[:]))

    def __getstate__(self) -> dict:
        from multiprocessing import context

        return {"arr": self._arr if context.get_spawning_popen() is not None else None}

    def __setstate__(self, state: dict) -> None:
        self._arr = state["arr"] if state["arr"] is not None else multiprocessing.get_context().Array(
            "q", len(STAT_NAMES))


def read_tar(shard: str, on_error: str, counters: _Counters) -> Iterator[dict[str, Any]]:
    """Raw samples ``{"__key__", "__url__", ext: bytes, ...}`` of one tar shard, in file order.

    A truncated or unreadable shard raises :class:`ShardError` (``on_error="raise"``) or ends
    the shard there, counting it in ``bad_shards`` and dropping its partial last sample.
    """
    current: dict[str, Any] | None = None
    try:
        with open_tar_stream(shard) as fh:
            for name, data in iter_tar_files(fh):
                key, ext = base_plus_ext(name)
                if key is None:
                    continue
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": shard}
                current[ext.lower()] = data
    except READ_ERRORS as err:
        at = f" after key {current['__key__']!r}" if current else ""
        if on_error == "raise":
            raise ShardError(f"shard {shard} is truncated or corrupt{at}: {err}. Re-pack it, or pass "
                             "on_error='skip' to count and skip the damaged part.") from err
        counters.add("bad_shards")
        if on_error == "warn":
            warnings.warn(f"skipping the rest of shard {shard}{at}: {err}", stacklevel=2)
        return
    if current is not None:
        yield current


def shuffle_buffer(samples: Iterable[Any], bufsize: int, rng: np.random.Generator) -> Iterator[Any]:
    """Reservoir-style shuffle with a buffer of ``bufsize`` items (``bufsize <= 1``: no shuffle)."""
    if bufsize <= 1:
        yield from samples
        return
    buf: list[Any] = []
    for sample in samples:
        if len(buf) < bufsize:
            buf.append(sample)
            continue
        i = int(rng.integers(len(buf)))
        buf[i], sample = sample, buf[i]
        yield sample
    rng.shuffle(buf)
    yield from buf


def decode_sample(raw: dict[str, Any], label_fn: Callable[[Any], int] = to_int_label) -> dict[str, Any]:
    """Raw tar sample -> sample dict (see docs/ARCHITECTURE.md): ``key``, ``image`` (1, H, W),
    ``label``, ``boxes`` (k, 4), ``meta`` and ``mask`` when present."""
    from streamaug.io.readers import decode_xray

    key, url = raw["__key__"], raw["__url__"]
    ext = next((e for e in IMAGE_EXTS if e in raw), None)
    if ext is None:
        raise SampleError(f"sample {key!r} in {url} has no image (found {sorted(k for k in raw if k[0] != '_')}; "
                          f"expected one of {IMAGE_EXTS})")
    image, reader_meta = decode_xray(raw[ext], ext, source=f"{url}:{key}.{ext}")
    meta = json.loads(raw["json"]) if "json" in raw else {}
    meta.update({"reader": reader_meta, "shard": url})
    boxes = torch.as_tensor(meta.get("boxes") or [], dtype=torch.float32).reshape(-1, 4)
    sample = {"key": key, "image": image, "label": label_fn(meta.get("label")), "boxes": boxes, "meta": meta}
    if "mask.png" in raw:
        from PIL import Image

        mask = np.asarray(Image.open(io.BytesIO(raw["mask.png"])).convert("L")) > 127
        sample["mask"] = torch.from_numpy(mask).to(torch.float32)[None]
    return sample


def resize_sample(sample: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    """Resize ``image`` (area/bilinear, antialiased) and ``mask`` (nearest) to ``size = (H, W)``
    and scale ``boxes`` to match."""
    _, h, w = sample["image"].shape
    if (h, w) == tuple(size):
        return sample
    sample["image"] = torch.nn.functional.interpolate(
        sample["image"][None], size=size, mode="bilinear", antialias=True, align_corners=False)[0].clamp_(0, 1)
    if "mask" in sample:
        sample["mask"] = torch.nn.functional.interpolate(sample["mask"][None], size=size, mode="nearest")[0]
    scale = torch.tensor([size[1] / w, size[0] / h, size[1] / w, size[0] / h])
    sample["boxes"] = sample["boxes"] * scale
    return sample


def manifest_site_proposer(shards: Sequence[str], *, select: Callable[[str, dict], bool] | None = None,
                           seed: int = 0) -> Any:
    """The :class:`streamaug.SiteProposer` that ``sites=True`` builds: matched against the train-split
    lesion boxes of the packer's manifest beside ``shards[0]``, keeping only those ``select`` keeps
    (so a rare-positive selection does not leak the boxes of the positives it drops).

    Raises:
        ShardError: there is no manifest beside the shards.
    """
    from streamaug.sites import LesionBoxBank, SiteProposer

    manifest = find_manifest(shards[0])
    if manifest is None:
        raise ShardError(f"sites=True needs the packer's manifest.json beside {shards[0]}; "
                         "pass sites=SiteProposer(LesionBoxBank.from_records(...)) instead")
    return SiteProposer(LesionBoxBank.from_manifest(manifest, split="train", select=select), seed=seed)


class XRayShards(torch.utils.data.IterableDataset):
    """A stream of X-ray samples from WebDataset tar shards written by ``python -m streamaug.cli.pack``.

    Args:
        urls: shard paths, a brace pattern, a glob, a folder, or a ``manifest.json``.
        split: with a manifest or a packed folder: which split's shards.
        shuffle: shuffle the shard order and, within a reader, samples (buffer of ``buffer_size``).
        seed: seeds shard order, buffer and site proposal; the order is a function of
            ``(seed, epoch)`` so it can be replayed.
        resampled: draw shards with replacement forever (an unbounded stream); with
            ``epoch_length`` each rank yields exactly that many samples per epoch.
        on_error: ``"raise"`` (an error naming shard and key), ``"skip"`` (skip and count, see
            :attr:`stats`) or ``"warn"`` (skip, count and warn).
        sites: a :class:`streamaug.SiteProposer`, or ``True`` to build one from the packer's
            manifest (its train-split lesion boxes that ``select`` keeps, so a rare-positive
            selection does not leak the boxes it drops), or None for no site proposal.
        resize: ``(H, W)`` or an int: resize every image (boxes and sites follow).
        equalize: ``"pad"`` (default) gives every rank the same number of samples per epoch: ranks
            whose shards hold fewer samples re-read their first ones (counted in ``stats['padded']``);
            ``"none"`` leaves ranks unequal. With ``"pad"`` a sample skipped for an error is also
            replaced by a re-read one, so a bad sample never makes one DDP rank run short.
        label_fn: maps the metadata ``label`` to an int (default :func:`streamaug.to_int_label`).
        buffer_size: shuffle buffer, in samples.
        select: keep only samples for which ``select(key, metadata_json)`` is true, decided
            before decoding (e.g. one region, or a seeded subsample of positives). The per-shard
            counts are then found by scanning the shards' JSON once.
        distributed: split shards across ``torch.distributed`` ranks (default). False: every rank
            reads everything (e.g. a validation set each rank scores in full).
        transform: a per-sample function ``sample dict -> sample dict`` applied last (after resize
            and sites), inside the DataLoader workers; its errors follow ``on_error`` like a decode
            error. It must be picklable for worker processes started by spawn (a module-level
            function or a ``functools.partial`` of one).

    Every rank gets the same number of samples per epoch (``equalize="pad"``): the epoch's plan
    (:func:`streamaug.data.shardlist.plan_epoch`) gives each rank the largest rank total, padding
    the others, so DDP ranks run the same number of steps. Resume: the stream keeps
    ``(epoch, consumed, yielded)`` per reader in :meth:`state_dict`; torchdata's
    ``StatefulDataLoader`` saves and restores it per worker, and the restored reader replays
    its deterministic order, skipping the consumed raw samples without decoding them.
    """

    def __init__(self, urls: str | Sequence[str], *, split: str | None = None, shuffle: bool = True,
                 seed: int = 0, resampled: bool = False, epoch_length: int | None = None,
                 on_error: str = "raise", sites: Any = None, resize: int | tuple[int, int] | None = None,
                 equalize: str = "pad", label_fn: Callable[[Any], int] = to_int_label,
                 buffer_size: int = 256, select: Callable[[str, dict], bool] | None = None,
                 distributed: bool = True, transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 ) -> None:
        super().__init__()
        if on_error not in ("raise", "skip", "warn"):
            raise ValueError(f"on_error must be 'raise', 'skip' or 'warn', got {on_error!r}")
        self.shards = expand_urls(urls, split)
        self.shuffle, self.seed, self.resampled = shuffle, seed, resampled
        self.epoch_length, self.on_error, self.equalize = epoch_length, on_error, equalize
        self.label_fn, self.buffer_size = label_fn, buffer_size if shuffle else 0
        self.resize = (resize, resize) if isinstance(resize, int) else (tuple(resize) if resize else None)
        self.select, self.distributed, self.transform = select, distributed, transform
        self.sites = self._make_sites(sites)
        self.counts = None if resampled else (
            shard_counts(self.shards) if select is None else
            [sum(bool(select(k, m)) for k, m in scan_metadata(s)) for s in self.shards])
        self.epoch = 0
        self._state = {"epoch": 0, "consumed": 0, "yielded": 0}
        self._resume: dict | None = None
        self._counters = _Counters()

    def _make_sites(self, sites: Any) -> Any:
        if sites is True:
            return manifest_site_proposer(self.shards, select=self.select, seed=self.seed)
        return sites or None

    # -- epochs and resume -------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (reshuffles). Moving to another epoch drops a pending resume."""
        if self._resume is not None and self._resume["epoch"] != epoch:
            self._resume = None
        self.epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        """This reader's position: ``{"epoch", "consumed", "yielded", "stats"}``."""
        return {**self._state, "stats": self.stats}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`state_dict`) on the next iteration."""
        self._resume = {k: int(state[k]) for k in ("epoch", "consumed", "yielded")}
        self._state = dict(self._resume)
        self.epoch = self._resume["epoch"]

    @property
    def stats(self) -> dict[str, int]:
        """Counts shared across workers: ``yielded``, ``skipped_samples`` (bad samples skipped),
        ``bad_shards`` (truncated/corrupt shards cut short), ``padded`` (re-read for equal ranks)."""
        return self._counters.as_dict()

    def samples_per_rank(self) -> int | None:
        """Samples each rank yields per epoch (None for an unbounded stream)."""
        if self.resampled:
            return self.epoch_length
        from streamaug.data.distributed import rank_world

        world = rank_world()[1] if self.distributed else 1
        plan = plan_epoch(self.counts, world=world, num_workers=1, seed=self.seed, epoch=self.epoch,
                          shuffle=self.shuffle, equalize=self.equalize)
        return sum(p.quota for p in plan[0])

    # -- the pipeline --------------------------------------------------------------------------
    def _read(self, shard: str) -> Iterator[dict[str, Any]]:
        raws = read_tar(shard, self.on_error, self._counters)
        if self.select is None:
            return raws
        return (r for r in raws if self.select(r["__key__"], json.loads(r["json"]) if "json" in r else {}))

    def _raw_passes(self, epoch: int) -> tuple[Iterator[dict[str, Any]], int | None]:
        """This reader's raw samples (shuffled within each pass) and its quota."""
        slot = current_slot()
        if not self.distributed:
            slot = Slot(0, 1, slot.worker, slot.num_workers)
        rng = np.random.default_rng([self.seed, epoch, slot.rank, slot.worker])
        if self.resampled:
            quota = None
            if self.epoch_length is not None:
                per, extra = divmod(self.epoch_length, slot.num_workers)
                quota = per + (1 if slot.worker < extra else 0)

            def forever() -> Iterator[dict[str, Any]]:
                while True:
                    shard = self.shards[int(rng.integers(len(self.shards)))]
                    yield from shuffle_buffer(self._read(shard), self.buffer_size, rng)
            return forever(), quota
        plan = plan_epoch(self.counts, world=slot.world, num_workers=slot.num_workers, seed=self.seed,
                          epoch=epoch, shuffle=self.shuffle, equalize=self.equalize)[slot.rank][slot.worker]

        n_passes = 1 if self.equalize == "none" else 1 << 30

        def passes() -> Iterator[dict[str, Any]]:
            for n_pass in range(n_passes):  # pass 0 is the data; later passes pad to the quota
                seen = False
                for i in plan.shards:
                    for raw in shuffle_buffer(self._read(self.shards[i]), self.buffer_size, rng):
                        seen = True
                        raw["__pass__"] = n_pass
                        yield raw
                if not seen:
                    raise ShardError(f"shards {[self.shards[i] for i in plan.shards]} yielded no readable sample")
        return passes(), (plan.quota if self.equalize == "pad" else None)

    def _decode(self, raw: dict[str, Any]) -> dict[str, Any] | None:
        try:
            sample = decode_sample(raw, self.label_fn)
            if self.resize is not None:
                sample = resize_sample(sample, self.resize)
            if self.sites is not None:
                sample = self.sites(sample)
            if self.transform is not None:
                sample = self.transform(sample)
            return sample
        except Exception as err:  # noqa: BLE001 - the policy decides
            where = f"sample {raw.get('__key__')!r} of shard {raw.get('__url__')}"
            if self.on_error == "raise":
                raise SampleError(f"{where}: {err}. Fix or drop the sample, or pass on_error='skip'.") from err
            self._counters.add("skipped_samples")
            if self.on_error == "warn":
                warnings.warn(f"skipping {where}: {err}", stacklevel=2)
            return None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        resume, self._resume = self._resume, None
        epoch = resume["epoch"] if resume else self.epoch
        consumed = resume["consumed"] if resume else 0
        yielded = resume["yielded"] if resume else 0
        self._state = {"epoch": epoch, "consumed": consumed, "yielded": yielded}
        if self.sites is not None and hasattr(self.sites, "set_epoch"):
            self.sites.set_epoch(epoch)
        raws, quota = self._raw_passes(epoch)
        in_worker = torch.utils.data.get_worker_info() is not None  # hand-off: one storage per sample
        for position, raw in enumerate(raws):
            if quota is not None and yielded >= quota:
                return
            if position < consumed:
                continue
            self._state["consumed"] = position + 1
            sample = self._decode(raw)
            if sample is None:
                continue
            if raw.get("__pass__", 0) > 0:
                self._counters.add("padded")
            yielded += 1
            self._state["yielded"] = yielded
            self._counters.add("yielded")
            yield one_storage(sample) if in_worker else sample
