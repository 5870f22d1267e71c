"""``XRayShards``: the X-ray shard stream, split by rank and worker, seeded, resumable.

Stages, each a generator (``iterator -> iterator``), in the order a sample meets them::

    plan (shards -> this reader) -> [verify sha256] -> read tar (count check) -> shuffle buffer
        -> [resume skip] -> decode -> resize -> propose sites -> transform -> yield

Shuffling works on raw bytes, before decoding, so a resumed stream skips already-seen samples
without decoding them. Example with a ``DataLoader``::

    ds = XRayShards("shards/train", sites=True)           # folder with manifest.json
    loader = StatefulDataLoader(ds, batch_size=32, num_workers=4, collate_fn=collate_xray)
    for epoch in range(10):
        ds.set_epoch(epoch)
        for batch in loader: ...

``set_epoch`` reaches the workers only when they start: with ``persistent_workers=True`` every
epoch would repeat the first one's order, so leave it off (the default). A resume state belongs to
its epoch: once ``set_epoch`` has moved on to a later epoch, loading an older state (as
``StatefulDataLoader`` does lazily, at ``iter()``, after the loop's ``set_epoch``) starts the new
epoch afresh instead of replaying the finished one.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from streamaug.data.collate import HandOff
from streamaug.data.counters import Counters
from streamaug.data.decode import decode_sample, resize_sample
from streamaug.data.distributed import Slot, current_slot
from streamaug.data.plan import plan_epoch
from streamaug.data.select import check_select
from streamaug.data.shardlist import ShardInfo, expand_urls, manifest_site_proposer, read_tar, shard_infos
from streamaug.io.errors import SampleError, ShardError
from streamaug.io.labels import to_int_label

_PASS_END = {"__pass_end__": True}  # what the raw stream yields after each pass (compared by identity)


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
            :attr:`stats`) or ``"warn"`` (skip, count and warn). A shard is bad when it is
            truncated or corrupt, holds fewer or more samples than its manifest (or a scan) lists,
            or fails ``verify``; with ``"skip"`` its complete samples before the damage are read
            and the rest counted in ``stats["lost_samples"]``, also when listing it at start-up
            (with ``verify`` and a manifest hash, a damaged shard fails the hash first: none of its
            samples is read, all are counted as lost).
        sites: a :class:`streamaug.SiteProposer`, or ``True`` to build one from the packer's
            manifest (its train-split lesion boxes that ``select`` keeps, so a rare-positive
            selection does not leak the boxes it drops), or None for no site proposal.
        resize: ``(H, W)`` or an int: resize every image (boxes and sites follow).
        equalize: ``"pad"`` (default) gives every rank the same number of samples per epoch: ranks
            whose shards hold fewer samples re-read their first ones (counted in ``stats['padded']``);
            ``"none"`` leaves ranks unequal. With ``"pad"`` and several ranks (or ``batch_size``) a
            sample skipped for an error is also replaced by a re-read one, so a bad sample never makes
            one DDP rank run short; one rank without ``batch_size`` pads nothing.
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
        verify: check each shard's bytes against the sha256 the packer's manifest records before
            yielding any of its samples; a mismatch makes it a bad shard (see ``on_error``), so no
            altered sample is ever yielded. ``True`` (default) hashes a local file first, once per process
            while it is unchanged (a second,
            cached read; constant memory), ``"buffer"`` reads it once, holding one shard's samples
            in memory until the hash is checked (for shards that are costly to read twice),
            ``False`` does not check. Shards without a recorded sha256 are read unchecked. The
            default is on, hashing first, because in ``benchmarks/verify.py``'s side-by-side runs
            (run it on your shards) hashing cost a few percent of one core's decoding at most,
            about the run-to-run noise (sha256 runs at about a GB/s per core), while an altered
            shard otherwise yields changed images and labels without a word; and hashing first
            keeps memory flat whatever the shard size, where ``"buffer"``, measured no slower,
            holds a whole shard per reader (GBs for a 1,000-sample shard of large DICOMs).
        batch_size: the ``DataLoader``'s batch size, for equal *batches* per rank (see below).

    Every rank gets the same number of samples per epoch (``equalize="pad"``): the epoch's plan
    (:func:`streamaug.data.plan.plan_epoch`) gives each rank the largest rank total, padding
    the others. A ``DataLoader`` with workers batches each worker's share apart, so equal
    samples can still leave one rank a batch more than another and a DDP job hangs on its last
    step: pass the loader's ``batch_size`` here too
    (``DataLoader(XRayShards(..., batch_size=B), batch_size=B, num_workers=W)``, the same ``W`` on
    every rank) and every worker yields whole batches, every rank the same number of them (padded
    with re-read samples, counted in ``stats["padded"]``; with ``resampled`` and ``epoch_length``,
    the length is rounded up to whole batches). Resume: the stream keeps
    ``(epoch, consumed, yielded)`` per reader in :meth:`state_dict`; torchdata's
    ``StatefulDataLoader`` saves and restores it per worker, and the restored reader replays
    its deterministic order, skipping the consumed raw samples without decoding them.
    """

    def __init__(self, urls: str | Sequence[str], *, split: str | None = None, shuffle: bool = True,
                 seed: int = 0, resampled: bool = False, epoch_length: int | None = None,
                 on_error: str = "raise", sites: Any = None, resize: int | tuple[int, int] | None = None,
                 equalize: str = "pad", label_fn: Callable[[Any], int] = to_int_label,
                 buffer_size: int = 256, select: Callable[[str, dict], bool] | None = None,
                 distributed: bool = True, verify: bool | str = True, batch_size: int | None = None,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        super().__init__()
        if on_error not in ("raise", "skip", "warn"):
            raise ValueError(f"on_error must be 'raise', 'skip' or 'warn', got {on_error!r}")
        if verify not in (True, False, "buffer"):
            raise ValueError(f"verify must be True, False or 'buffer', got {verify!r}")
        if batch_size is not None and (batch_size < 1 or equalize != "pad"):
            raise ValueError(f"batch_size={batch_size!r} needs equalize='pad' and a positive batch size")
        check_select(select)
        self.shards = expand_urls(urls, split)
        self.shuffle, self.seed, self.resampled = shuffle, seed, resampled
        self.epoch_length, self.on_error, self.equalize = epoch_length, on_error, equalize
        self.label_fn, self.buffer_size = label_fn, buffer_size if shuffle else 0
        self.resize = (resize, resize) if isinstance(resize, int) else (tuple(resize) if resize else None)
        self.select, self.distributed, self.transform = select, distributed, transform
        self.sites = self._make_sites(sites)
        self.verify, self.batch_size = verify, batch_size
        #: per shard: count, selected count, manifest sha256, damage found by a scan
        self.infos: list[ShardInfo] = shard_infos(self.shards, on_error=on_error, select=None if resampled else select,
                                                  count=not resampled)
        self.counts = None if resampled else [int(i.selected or 0) for i in self.infos]
        self.epoch = 0
        self._epoch_set = False  # set_epoch was called: a state of an older epoch is then a finished one
        self._state = {"epoch": 0, "consumed": 0, "yielded": 0}
        self._resume: dict | None = None
        self._counters = Counters()

    def _make_sites(self, sites: Any) -> Any:
        if sites is True:
            return manifest_site_proposer(self.shards, select=self.select, seed=self.seed)
        return sites or None

    # -- epochs and resume -------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (reshuffles). Moving to another epoch drops a pending resume; without
        one, the position is the epoch's start (what a reader that has not yielded yet reports)."""
        if self._resume is not None and self._resume["epoch"] != epoch:
            self._resume = None
        self.epoch, self._epoch_set = epoch, True
        if self._resume is None:
            self._state = {"epoch": epoch, "consumed": 0, "yielded": 0}

    def state_dict(self) -> dict[str, Any]:
        """This reader's position: ``{"epoch", "consumed", "yielded", "stats"}``."""
        return {**self._state, "stats": self.stats}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`state_dict`) on the next iteration; a state of an
        epoch older than the one :meth:`set_epoch` selected is a finished epoch's and is not resumed."""
        saved = {k: int(state[k]) for k in ("epoch", "consumed", "yielded")}
        if self._epoch_set and saved["epoch"] < self.epoch:
            return
        self._resume, self._state, self.epoch = saved, dict(saved), saved["epoch"]

    @property
    def stats(self) -> dict[str, int]:
        """Counts shared across workers, summed over epochs: ``yielded`` (by the readers; DataLoader
        workers run ahead of the consumed batches by what they prefetch), ``skipped_samples`` (bad
        samples skipped), ``bad_shards`` (bad shards cut short or skipped), ``lost_samples`` (samples
        listed for bad shards that were not read), ``padded`` (re-read for equal ranks).

        Each epoch every sample the manifest lists is yielded once (``yielded - padded``), skipped
        or lost. Without a manifest a shard's count comes from a scan, which cannot see samples
        after a damage: they are not counted, but the shard is, in ``bad_shards``."""
        return self._counters.as_dict()

    def samples_per_rank(self, num_workers: int = 1) -> int | None:
        """Samples each rank yields per epoch (None for an unbounded stream); with ``batch_size``
        this depends on the ``DataLoader``'s ``num_workers``."""
        if self.resampled:
            if self.epoch_length is None or self.batch_size is None:
                return self.epoch_length
            return -(-self.epoch_length // self.batch_size) * self.batch_size
        from streamaug.data.distributed import rank_world

        rank, world = rank_world() if self.distributed else (0, 1)
        return sum(p.quota for p in self._plan(world, max(1, num_workers), self.epoch)[rank])

    def _barren_message(self, what: str, *, read: bool) -> str:
        """Why no shard gives a sample (``read``: after reading them): the shards, the counts, the fix."""
        names = ", ".join(self.shards[:3]) + (f" and {len(self.shards) - 3} more" if len(self.shards) > 3 else "")
        causes = ([f"select={self.select!r} keeps none of their samples"] if self.select is not None else []) + (
            ["their samples are damaged or fail to decode"] if read else ["they are empty"])
        return (f"shards {names} {what} (stats: {self.stats}): {', or '.join(causes)}. "
                "Fix or re-pack the shards, or loosen select.")

    def _plan(self, world: int, num_workers: int, epoch: int) -> list[list[Any]]:
        if self.counts is not None and not any(self.counts):
            damage = [f"{s}: {info.damage}" for s, info in zip(self.shards, self.infos) if info.damage]
            if damage:
                raise ShardError(f"no shard holds a usable sample; the damaged ones: {'; '.join(damage[:3])}"
                                 f"{f' and {len(damage) - 3} more' if len(damage) > 3 else ''}. Restore or "
                                 "re-pack them (on_error='skip' counts them in stats, but leaves nothing to read)")
            raise ShardError(self._barren_message("hold no sample to read", read=False))
        try:
            return plan_epoch(self.counts, world=world, num_workers=num_workers, seed=self.seed, epoch=epoch,
                              shuffle=self.shuffle, equalize=self.equalize, batch_size=self.batch_size)
        except ShardError as err:
            damaged = [s for s, info in zip(self.shards, self.infos) if info.damage and not info.selected]
            if not damaged:
                raise
            raise ShardError(f"shards {damaged} are damaged and hold no usable sample, so: {err}") from err

    def _report_damage(self, i: int) -> None:
        """Count shard ``i``, found damaged when it was listed, as bad (once per epoch, by one reader)."""
        info = self.infos[i]
        lost = info.count - info.readable if info.count is not None and info.readable is not None else 0
        self._counters.add("bad_shards")
        self._counters.add("lost_samples", lost)
        if self.on_error == "warn":
            warnings.warn(f"skipping the rest of shard {self.shards[i]} after its {info.readable} complete samples "
                          f"({lost} samples lost): {info.damage}", stacklevel=2)

    # -- the pipeline --------------------------------------------------------------------------
    def _read(self, i: int, report: bool = True) -> Iterator[dict[str, Any]]:
        """Raw samples of shard ``i`` that ``select`` keeps (``report``: count what is bad)."""
        info = self.infos[i]
        if info.damage is not None:  # found when listing: counted now, reading stops at the same place
            if report:
                self._report_damage(i)
            report = False
        expected = info.readable if info.damage is not None else info.count
        raws = read_tar(self.shards[i], self.on_error, self._counters, expected=expected, sha256=info.sha256,
                        verify=self.verify, report=report)
        return raws if self.select is None else self._selected(raws, report)

    def _selected(self, raws: Iterable[dict[str, Any]], report: bool) -> Iterator[dict[str, Any]]:
        for raw in raws:
            try:
                meta = json.loads(raw["json"]) if "json" in raw else {}
                if not isinstance(meta, dict):
                    raise ValueError(f"a JSON {type(meta).__name__}, not an object")
            except (ValueError, UnicodeDecodeError) as err:  # the scan did not count it either
                where = f"sample {raw['__key__']!r} of shard {raw['__url__']}"
                if self.on_error == "raise":
                    raise SampleError(f"{where}: its JSON does not parse ({err}). Re-pack the shard, or pass "
                                      "on_error='skip'.") from err
                if report:
                    self._counters.add("skipped_samples")
                continue
            if self.select(raw["__key__"], meta):
                yield raw

    def _raw_passes(self, epoch: int, progress: list[int]) -> tuple[Iterator[dict[str, Any]], int | None]:
        """This reader's raw samples (shuffled within each pass) and its quota.

        ``progress[0]`` is raised by the caller for every usable sample; a padding pass that
        sees none of them raises instead of spinning."""
        slot = current_slot()
        if not self.distributed:
            slot = Slot(0, 1, slot.worker, slot.num_workers)
        rng = np.random.default_rng([self.seed, epoch, slot.rank, slot.worker])
        if self.resampled:
            quota = None
            if self.epoch_length is not None:
                batch = self.batch_size or 1
                per, extra = divmod(-(-self.epoch_length // batch), slot.num_workers)
                quota = (per + (1 if slot.worker < extra else 0)) * batch

            def forever() -> Iterator[dict[str, Any]]:
                barren: set[int] = set()  # shards read since the last usable sample
                while True:
                    i, before = int(rng.integers(len(self.shards))), progress[0]
                    yield from shuffle_buffer(self._read(i), self.buffer_size, rng)
                    barren = set() if progress[0] > before else barren | {i}
                    if len(barren) == len(self.shards):
                        raise ShardError(self._barren_message("gave no usable sample: each was read since the "
                                                              "last one that did, so the unbounded stream would "
                                                              "spin forever", read=True))
            return forever(), quota
        plan = self._plan(slot.world, slot.num_workers, epoch)[slot.rank][slot.worker]
        # Damaged shards with nothing to read are in no plan: one reader each counts them.
        orphans = [i for i, info in enumerate(self.infos) if info.damage and not info.selected]
        first = list(plan.shards)
        # One rank without batch_size has nothing to equalize: a skipped sample is not replaced by a re-read one.
        pad = self.equalize == "pad" and (slot.world > 1 or self.batch_size is not None)
        n_passes = 1 << 30 if pad else 1

        def passes() -> Iterator[Any]:
            for i in orphans[slot.index::slot.total]:
                self._report_damage(i)
            shards = first
            for n_pass in range(n_passes):  # pass 0 is the data; later passes pad to the quota
                before, readable = progress[0], []
                for i in shards:
                    got = 0
                    for raw in shuffle_buffer(self._read(i, report=n_pass == 0), self.buffer_size, rng):
                        got += 1
                        raw["__pass__"] = n_pass
                        yield raw
                    if got:
                        readable.append(i)
                yield _PASS_END
                shards = readable  # padding re-reads only shards that gave samples
                if progress[0] == before and n_passes > 1:
                    names = [self.shards[i] for i in first]
                    raise ShardError(
                        f"shards {names} gave this reader no usable sample in a whole pass (stats: {self.stats}), "
                        f"so it cannot pad to its quota of {plan.quota} samples for equal ranks. Fix or re-pack "
                        "these shards, or pass equalize='none'.")
        return passes(), (plan.quota if pad else None)

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
            if raw.get("__pass__", 0) == 0:  # a padding pass meets the same bad sample again: count it once
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
        in_worker = torch.utils.data.get_worker_info() is not None  # hand-off: one storage per sample, if pickled
        progress = [0]
        raws, quota = self._raw_passes(epoch, progress)
        position, n_pass = -1, 0
        drain = not self.resampled  # a planned epoch reads its data pass out (passes end with _PASS_END)
        while quota is None or yielded < quota or (drain and n_pass == 0):  # no padding pass started for nothing
            raw = next(raws, None)
            if raw is None:
                return
            if raw is _PASS_END:
                n_pass += 1
                continue
            position += 1
            if position < consumed:
                progress[0] += 1
                continue
            if quota is not None and yielded >= quota:
                # The quota was met before the end of the data pass: the shards hold more samples than
                # they list. Read the pass out, unyielded, so its shards' checks run and count them.
                self._counters.add("lost_samples")
                continue
            self._state["consumed"] = position + 1
            sample = self._decode(raw)
            if sample is None:
                continue
            progress[0] += 1
            if raw.get("__pass__", 0) > 0:
                self._counters.add("padded")
            yielded += 1
            self._state["yielded"] = yielded
            self._counters.add("yielded")
            yield HandOff(sample) if in_worker else sample
