"""``LesionStream``: an unbounded stream of real X-rays mixed with lesions synthesized on the fly.

Where each part runs::

    DataLoader workers (CPU)                     consuming process (device)
    ------------------------                     -----------------------------------------------
    real:      read shards -> decode          -> real samples, every label
    sources:   read normals -> decode -> sites -> batch -> synthesize -> blend -> filter -> synthetic
    positives: read positives= -> decode      -> real positives
                                                 mix: each sample is synthetic, from positives= or
                                                 real, drawn with the asked fractions

The real samples have a stream of their own over the same shards (all labels, in the shards'
proportions), drawn apart from synthesis: how many candidates the filter accepts changes how many
normals the sources stream decodes, never the label make-up of the real samples. That stream is
resampled, or with ``real_pass=True`` one exact pass per epoch (every selected sample once, the
synthetic and ``positives=`` samples interleaved at exact counts, so every epoch trains on the same
real positives). The sources stream reads only normals (label 0, decided from the JSON before
decoding), or only positives for a synthesizer that makes new positives from real ones
(``source_label = 1``: :class:`streamaug.synth.Inpaint`, ``CopyPaste(onto="lesions")``; their own
lesion boxes are then the sites, :func:`streamaug.synth.sources.source_sites`).

Iterate it in the process that owns the device (``DataLoader(stream, num_workers=0)`` or
:meth:`LesionStream.iter_batches`); its own ``num_workers`` CPU workers per inner loader decode.

Resume: :meth:`LesionStream.state_dict` after any sample holds the mix generator, the counts, and
for each inner loader its ``StatefulDataLoader`` state *before* the batch now being consumed, how
many of that batch's samples were taken, and (for synthesis) the stage's and filter's state before
that batch. :meth:`load_state_dict` then replays that batch exactly (same sites, same parameters,
same scores) and skips what was taken, so the samples after a resume are those of an
uninterrupted run, without storing any image.
"""
from __future__ import annotations

import functools
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from streamaug.data.collate import collate_xray, unbatch
from streamaug.data.oversample import rebatch
from streamaug.data.select import AllOf, LabelSelect, check_select
from streamaug.data.shardlist import manifest_site_proposer
from streamaug.data.stream import XRayShards
from streamaug.synth.sources import source_sites
from streamaug.synth.stage import SynthesisStage, epoch_seed

_KINDS = ("real_positive", "real_normal", "real_other", "synthetic", "positives")


class NoAcceptedCandidates(RuntimeError):
    """The pseudo-label filter accepted no synthetic candidate in ``max_empty_batches`` batches: the
    stream stops instead of spinning forever (lower the threshold, rank, or check the translator)."""


class _Feed:
    """A ``StatefulDataLoader`` read batch by batch; ``point`` is its state before the next batch."""

    def __init__(self, make_loader: Callable[[], StatefulDataLoader], state: dict | None) -> None:
        self.loader = make_loader()
        if state is not None:
            self.loader.load_state_dict(state)
        self.point, self._it = state, None

    def next_batch(self) -> dict[str, Any]:
        if self._it is None:
            self._it = iter(self.loader)
        batch = next(self._it)
        self.point = self.loader.state_dict()
        return batch

    def close(self) -> None:
        """Shut the loader's workers down now (the position stays in ``point``)."""
        it, self._it = self._it, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()


class _Queue:
    """Samples of the batch (or synthesis round) being consumed, and how to make them again."""

    def __init__(self) -> None:
        self.items: deque = deque()
        self.state: dict[str, Any] = {"filled": False, "point": None, "stage": None, "taken": 0}

    def fill(self, items: list[dict[str, Any]], point: dict | None, stage: dict | None = None) -> None:
        self.items = deque(items)
        self.state = {"filled": True, "point": point, "stage": stage, "taken": 0}

    def pop(self) -> dict[str, Any]:
        self.state["taken"] += 1
        return self.items.popleft()


class LesionStream(torch.utils.data.IterableDataset):
    """Real samples, samples from ``positives=`` and synthetic positives, mixed in asked proportions.

    Args:
        normal_shards: the source shards: real samples are drawn from all of them (every label, as
            they come), synthetic ones are made from their normals (label 0, with sites) or, for a
            synthesizer with ``source_label = 1`` (:class:`streamaug.synth.Inpaint`, a lesion swap), from their
            positives (label 1, their lesion boxes as sites; ``sites`` is not used then).
        translator: shorthand for ``synthesizer=Translate(translator)``: a translator module or
            checkpoint path (:func:`streamaug.load_translator`).
        synthesizer: a :class:`streamaug.synth.Translate`, :class:`streamaug.synth.CopyPaste`,
            :class:`streamaug.synth.Mix` or a list of (synthesizer, weight) pairs.
        filter: e.g. :class:`streamaug.PseudoLabel`; None accepts every candidate.
        positives: optional shards of real positives, mixed in at ``positive_fraction`` (only their
            label-1 samples are read, so a folder that also holds normals gives its positives).
        synthetic_fraction: share of emitted samples that are synthetic positives.
        positive_fraction: share drawn from ``positives`` (default 0.1 when given, else 0).
        blend_n: exponent of the cosine blending mask (for ``translator=``).
        device: where the synthesis stage runs; emitted images live there.
        seed: seeds the shard streams, the site choice, the synthesis parameters and the mix.
        sites: passed to the sources' :class:`streamaug.XRayShards` (``True``: from the manifest).
        split: split of ``normal_shards`` when it is a packed folder/manifest.
        resize: ``(H, W)`` or int, applied by the workers (needed when image sizes differ).
        num_workers: CPU DataLoader workers of each inner loader (real, sources, positives).
        device_batch: images per batch of each inner loader (a synthesis round uses one or more).
        epoch_length: samples per ``iter()`` (None: unbounded; not with ``real_pass``).
        real_pass: each ``iter()`` is one pass over the real samples of ``normal_shards`` (every
            selected sample exactly once, shuffled per epoch), with ``floor(real * f_syn / (1 - f_syn
            - f_pos) + u)`` synthetic samples (and likewise ``positives=`` samples) spread evenly among
            them (``u`` uniform per epoch): the epoch has ``real / (1 - f_syn - f_pos)`` samples and
            the same real label make-up every epoch. False: the real samples are drawn from a resampled
            stream and each sample's kind by a coin flip with the asked fractions.
        max_empty_batches: raise after this many source batches in a row give no synthetic sample.
        on_error: shard and sample error policy (see :class:`streamaug.XRayShards`).
        select: ``select(key, metadata) -> bool`` on ``normal_shards`` (see :class:`XRayShards`).
        source_select: a further ``select(key, metadata)`` for the synthesis sources only (the real
            samples follow ``select`` alone), e.g. :func:`streamaug.data.select.matched_normals`.
        **stage_kwargs: passed to :class:`streamaug.SynthesisStage` (``oversample``,
            ``sites_per_image``, ``min_intensity``, ``dtype``).

    Every synthetic sample has ``synthetic=True``, ``label=1``, ``boxes`` = the blended site and
    ``provenance`` = ``{source_key, box, score, synthesizer, blend_n, ...}``; :attr:`stats` reports the
    emitted label make-up and the candidates scored per accepted sample.
    """

    def __init__(self, normal_shards: str | Sequence[str], *,
                 translator: torch.nn.Module | str | os.PathLike | None = None,
                 synthesizer: Any = None, filter: Callable | None = None,
                 positives: str | Sequence[str] | None = None, synthetic_fraction: float = 0.25,
                 positive_fraction: float | None = None, blend_n: float = 2.0, device: str | torch.device = "cpu",
                 seed: int = 0, sites: Any = True, split: str | None = None,
                 resize: int | tuple[int, int] | None = None, num_workers: int = 0, device_batch: int = 32,
                 epoch_length: int | None = None, real_pass: bool = False, max_empty_batches: int = 50,
                 on_error: str = "raise", select: Callable[[str, dict], bool] | None = None,
                 source_select: Callable[[str, dict], bool] | None = None,
                 **stage_kwargs: Any) -> None:
        super().__init__()
        positive_fraction = (0.1 if positives is not None else 0.0) if positive_fraction is None else positive_fraction
        if positive_fraction and positives is None:
            raise ValueError("positive_fraction > 0 needs positives= shards")
        if not (synthetic_fraction >= 0 and positive_fraction >= 0 and synthetic_fraction + positive_fraction <= 1):
            raise ValueError(f"fractions must be >= 0 and sum to <= 1, got synthetic={synthetic_fraction}, "
                             f"positive={positive_fraction}")
        if real_pass and (epoch_length is not None or synthetic_fraction + positive_fraction >= 1):
            raise ValueError("real_pass=True makes each epoch one pass over the real samples: it needs real "
                             "samples (synthetic_fraction + positive_fraction < 1) and no epoch_length")
        check_select(source_select, "source_select")
        self.fractions = (float(synthetic_fraction), float(positive_fraction))
        self.real_pass = bool(real_pass)
        self.device = torch.device(device)
        self.seed, self.num_workers, self.device_batch = seed, num_workers, device_batch
        self.epoch_length, self.max_empty_batches = epoch_length, max_empty_batches
        common = {"split": split, "resampled": True, "resize": resize, "on_error": on_error}
        self.stage = SynthesisStage(translator, synthesizer=synthesizer, filter=filter, blend_n=blend_n,
                                    device=self.device, seed=seed, **stage_kwargs)
        self.real = XRayShards(normal_shards, seed=seed, select=select, **{**common, "resampled": not real_pass})
        label = self.stage.source_label
        if label == 1:  # positives are their own sites
            sites = source_sites(self.stage.synthesizer)
        elif sites is True:  # the bank follows the caller's select, not the normals-only one below
            sites = manifest_site_proposer(self.real.shards, select=select, seed=seed + 2)
        self.sources = XRayShards(normal_shards, seed=seed + 2, sites=sites,
                                  select=LabelSelect(label, AllOf(select, source_select)), **common)
        self.positives = None if positives is None else XRayShards(  # its positives only (label 1)
            positives, seed=seed + 1, resampled=True, resize=resize, on_error=on_error, select=LabelSelect(1))
        _check_resize(self.stage.synthesizer, resize)
        self.emitted = dict.fromkeys(_KINDS, 0)
        self.epoch = 0
        self._run: _Run | None = None
        self._resume: dict[str, Any] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: the shard streams, the sites, the synthesis and the mix all depend on it.
        Moving to another epoch drops a pending resume."""
        if self._resume is not None and self._resume["epoch"] != epoch:
            self._resume = None
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, Any]:
        """The position after the last sample emitted (see the module docstring); picklable."""
        if self._run is not None:
            return self._run.state_dict()
        if self._resume is not None:
            return self._resume
        return {"epoch": self.epoch, "n": 0, "rng": None, "queues": {}, "emitted": dict(self.emitted),
                "stage": self.stage.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`state_dict`) on the next iteration. The counts (emitted
        samples, the stage's and the filter's) carry on, also into a next epoch chosen by :meth:`set_epoch`."""
        self._resume, self.epoch, self._run = state, int(state["epoch"]), None
        self.emitted = dict(state["emitted"])
        if state.get("stage") is not None:  # the stage after the last sample; set_epoch reseeds its generator
            self.stage.load_state_dict(state["stage"])

    # -- sources --------------------------------------------------------------------------------
    def _loader(self, dataset: XRayShards) -> StatefulDataLoader:
        with warnings.catch_warnings():  # torchdata 0.11 calls the deprecated torch.set_vital in __init__
            warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
            return StatefulDataLoader(dataset, batch_size=self.device_batch, num_workers=self.num_workers,
                                      collate_fn=collate_xray, pin_memory=self.device.type == "cuda")

    def _to_device(self, sample: dict[str, Any]) -> dict[str, Any]:
        sample["image"] = sample["image"].to(self.device, non_blocking=True)
        sample.setdefault("synthetic", False)
        sample.setdefault("provenance", None)
        return sample

    def _synthesize(self, feed: _Feed) -> list[dict[str, Any]]:
        """Synthetic samples from the next source batches: one candidate set per batch, at most one
        sample per normal; more batches only while a batch gives none."""
        for _ in range(self.max_empty_batches):
            batch = feed.next_batch()
            boxes, source, want = self.stage.plan(batch, len(batch["label"]))
            if not want or not len(boxes):
                continue
            result = self.stage.synthesize(batch["image"], boxes, source, want=want, meta=batch["meta"])
            made = [self.stage.sample(result, j, batch["key"][int(result.source[j])],
                                      batch["meta"][int(result.source[j])])
                    for j in torch.nonzero(result.keep).flatten().tolist()]
            if made:
                return made
        st = self.stage.stats
        raise NoAcceptedCandidates(
            f"the synthesis stage accepted no candidate in {self.max_empty_batches} source batches in a row "
            f"({st.get('generated')} made so far; filter: {self.stage.filter!r}). Rank instead of a "
            "fixed threshold (PseudoLabel(..., threshold=None), or --filter-mode rank in streamaug-train), lower "
            "the threshold (calibrate it: PseudoLabel.calibrate / --filter-quantile), check the translator, or "
            "check that the normal shards have sites (sites=True needs lesion boxes in the manifest)")

    # -- the mix --------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        if torch.utils.data.get_worker_info() is not None:
            warnings.warn("LesionStream is iterated inside a DataLoader worker: each worker synthesizes on its own "
                          "copy (on the CPU) and the stream's stats in the main process stay 0. Iterate it in the "
                          "process that owns the device (DataLoader(stream, num_workers=0) or stream.iter_batches); "
                          "its own num_workers= decode in the background.", stacklevel=2)
        resume, self._resume = self._resume, None
        run = self._run = _Run(self, resume["epoch"] if resume else self.epoch, resume)
        try:
            yield from self._mix(run)
        finally:  # the epoch is over or the consumer stopped: free the workers (state_dict() stays valid)
            run.close()

    def _mix(self, run: _Run) -> Iterator[dict[str, Any]]:
        """The samples of one epoch's ``run``, in the asked proportions."""
        f_syn, f_pos = self.fractions
        while self.epoch_length is None or run.n < self.epoch_length:
            if self.real_pass:  # one pass: a synthetic (positives=) sample each time its credit reaches 1
                name = next((n for n in ("sources", "positives") if run.credit[n] >= 1), "real")
                if name != "real":
                    run.credit[name] -= 1
            else:
                u = run.rng.random()
                name = "sources" if u < f_syn else "positives" if u < f_syn + f_pos else "real"
            sample = run.take(name)
            if sample is None:  # the pass is over
                break
            if name == "real":
                kind = {1: "real_positive", 0: "real_normal"}.get(int(sample["label"]), "real_other")
                for other, rate in run.rates.items():
                    run.credit[other] += rate
            else:
                kind = "synthetic" if name == "sources" else "positives"
            self.emitted[kind] += 1
            run.n += 1
            yield sample

    def iter_batches(self, batch_size: int) -> Iterator[dict[str, Any]]:
        """Yield :func:`streamaug.collate_xray` batches of ``batch_size`` mixed samples."""
        return rebatch(self, batch_size)

    @property
    def stats(self) -> dict[str, Any]:
        """``emitted`` label make-up (``real_positive``, ``real_normal``, ``real_other``,
        ``synthetic``, ``positives``), ``real_positive_share`` (real positives / real samples),
        ``synthetic_share``, the stage's ``generated``/``accepted``/``rate``/``candidates_per_accepted``/
        ``dark_crops``, ``candidates_per_used`` (per synthetic sample emitted: accepted candidates left
        over when an epoch ends are never emitted), and the inner streams' error counts (``real``,
        ``sources``)."""
        e = self.emitted
        real, total = e["real_positive"] + e["real_normal"] + e["real_other"], sum(e.values())
        stage = {k: v for k, v in self.stage.stats.items()
                 if k in ("generated", "accepted", "rate", "candidates_per_accepted", "dark_crops")}
        return {"emitted": dict(e), "real_positive_share": e["real_positive"] / real if real else None,
                "synthetic_share": e["synthetic"] / total if total else None, **stage,
                "candidates_per_used": self.stage.stats["generated"] / e["synthetic"] if e["synthetic"] else None,
                "real": self.real.stats, "sources": self.sources.stats}


class _Run:
    """One epoch's iteration: the mix generator, the inner loaders and their queues."""

    def __init__(self, stream: LesionStream, epoch: int, resume: dict[str, Any] | None) -> None:
        self.stream, self.epoch, self.n = stream, epoch, 0
        stream.stage.set_epoch(epoch)
        self.rng = np.random.default_rng(epoch_seed(stream.seed, epoch, 0x1E51))
        f_syn, f_pos = stream.fractions
        rest = 1.0 - f_syn - f_pos
        # real_pass: synthetic (positives=) samples due per real sample; a random phase per epoch
        self.rates = {"sources": f_syn / rest, "positives": f_pos / rest} if stream.real_pass else {}
        self.credit = {name: float(self.rng.random()) for name in self.rates}
        saved = (resume or {}).get("queues", {})
        self.feeds: dict[str, _Feed] = {}
        self.queues: dict[str, _Queue] = {}
        for name in ("real", "sources", "positives"):
            dataset = getattr(stream, name)
            if dataset is None:
                continue
            dataset.set_epoch(epoch)
            point = saved[name]["point"] if name in saved else None
            self.feeds[name] = _Feed(functools.partial(stream._loader, dataset), point)
            self.queues[name] = _Queue()
        if resume is not None:
            self.n = int(resume["n"])
            if resume["rng"] is not None:
                self.rng.bit_generator.state = resume["rng"]
            self.credit.update(resume.get("credit") or {})
            for name, state in saved.items():
                if state["filled"]:  # make the batch being consumed again, skip what was taken
                    if state["stage"] is not None:
                        stream.stage.load_state_dict(state["stage"])
                    self._fill(name)
                    for _ in range(int(state["taken"])):
                        self.queues[name].pop()

    def _fill(self, name: str) -> bool:
        """Read the next batch of ``name``; False when its (not resampled) stream is over."""
        feed, queue = self.feeds[name], self.queues[name]
        point = feed.point
        if name == "sources":
            stage = self.stream.stage.state_dict()
            queue.fill(self.stream._synthesize(feed), point, stage)
            return True
        try:
            batch = feed.next_batch()
        except StopIteration:
            return False
        queue.fill([self.stream._to_device(s) for s in unbatch(batch)], point)
        return True

    def take(self, name: str) -> dict[str, Any] | None:
        """The next sample of ``name``, or None when its stream is over (``real_pass``)."""
        if not self.queues[name].items and not self._fill(name):
            return None
        return self.queues[name].pop()

    def close(self) -> None:
        """Shut every inner loader's workers down (the queues keep the positions)."""
        for feed in self.feeds.values():
            feed.close()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "n": self.n, "rng": self.rng.bit_generator.state, "credit": dict(self.credit),
                "queues": {name: dict(q.state) for name, q in self.queues.items()},
                "emitted": dict(self.stream.emitted), "stage": self.stream.stage.state_dict()}


def _check_resize(synthesizer: Any, resize: int | tuple[int, int] | None) -> None:
    """Lesion crops cut at another image size than the stream's would be matched to the wrong sites."""
    size = (resize, resize) if isinstance(resize, int) else (tuple(resize) if resize else None)
    for synth in getattr(synthesizer, "synthesizers", [synthesizer]):
        if hasattr(synth, "resize"):
            own = synth.resize
            own = (own, own) if isinstance(own, int) else (tuple(own) if own else None)
            if own != size:
                raise ValueError(f"{type(synth).__name__}(resize={synth.resize}) cuts lesions at another size than "
                                 f"the stream's resize={resize}; pass the same resize to both")
