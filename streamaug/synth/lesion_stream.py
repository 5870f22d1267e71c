"""``LesionStream``: an unbounded stream of real X-rays mixed with lesions synthesized on the fly.

Where each part runs::

    DataLoader workers (CPU)            consuming process (device)
    ------------------------            --------------------------------------------------
    read shards -> decode -> sites  ->  batch -> crop -> translate -> blend -> filter -> mix

Iterate it in the process that owns the device (``DataLoader(stream, num_workers=0)`` or
:meth:`LesionStream.iter_batches`); its own ``num_workers`` CPU workers do the decoding.
"""
from __future__ import annotations

import os
from collections import deque
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from streamaug.data.collate import collate_xray, unbatch
from streamaug.data.stream import XRayShards
from streamaug.synth.stage import SynthesisStage


class NoAcceptedCandidates(RuntimeError):
    """The pseudo-label filter accepted no synthetic candidate in ``max_empty_batches`` batches: the
    stream stops instead of spinning forever (lower the threshold or check the translator)."""


class LesionStream(torch.utils.data.IterableDataset):
    """Real normals, real positives and accepted synthetic positives, mixed in asked proportions.

    Args:
        normal_shards: shards whose normal images (label 0, with sites) are the synthesis sources;
            their other images are passed through as real samples.
        translator: a translator module or checkpoint path (:func:`streamaug.load_translator`).
        filter: e.g. :class:`streamaug.PseudoLabel`; None accepts every candidate.
        positives: optional shards of real positives, mixed in at ``positive_fraction``.
        synthetic_fraction: share of emitted samples that are synthetic positives.
        positive_fraction: share drawn from ``positives`` (default 0.1 when given, else 0).
        blend_n: exponent of the cosine blending mask.
        device: where the synthesis stage runs; emitted images live there.
        seed: seeds the shard streams, the site choice and the mixing.
        sites: passed to :class:`streamaug.XRayShards` (``True``: from the packer's manifest).
        split: split of ``normal_shards`` when it is a packed folder/manifest.
        resize: ``(H, W)`` or int, applied by the workers (needed when image sizes differ).
        num_workers: CPU DataLoader workers decoding and proposing sites.
        device_batch: images per synthesis batch on the device.
        epoch_length: samples per ``iter()`` (None: unbounded).
        max_empty_batches: raise after this many synthesis batches in a row accept nothing.
        select: ``select(key, metadata) -> bool`` on ``normal_shards`` (see :class:`XRayShards`).
        **stage_kwargs: passed to :class:`streamaug.SynthesisStage` (``min_intensity``, ``dtype``).

    Every synthetic sample has ``synthetic=True``, ``label=1``, ``boxes`` = the blended site and
    ``provenance`` = ``{source_key, box, translator, blend_n, score}``; ``stats`` counts what was
    generated, accepted and emitted.
    """

    def __init__(self, normal_shards: str | Sequence[str], *, translator: torch.nn.Module | str | os.PathLike,
                 filter: Callable | None = None, positives: str | Sequence[str] | None = None,
                 synthetic_fraction: float = 0.25, positive_fraction: float | None = None,
                 blend_n: float = 2.0, device: str | torch.device = "cpu", seed: int = 0, sites: Any = True,
                 split: str | None = None, resize: int | tuple[int, int] | None = None, num_workers: int = 0,
                 device_batch: int = 32, epoch_length: int | None = None, max_empty_batches: int = 50,
                 on_error: str = "raise", select: Callable[[str, dict], bool] | None = None,
                 **stage_kwargs: Any) -> None:
        super().__init__()
        positive_fraction = (0.1 if positives is not None else 0.0) if positive_fraction is None else positive_fraction
        if positive_fraction and positives is None:
            raise ValueError("positive_fraction > 0 needs positives= shards")
        if synthetic_fraction < 0 or positive_fraction < 0 or synthetic_fraction + positive_fraction > 1:
            raise ValueError(f"fractions must be >= 0 and sum to <= 1, got synthetic={synthetic_fraction}, "
                             f"positive={positive_fraction}")
        self.fractions = (float(synthetic_fraction), float(positive_fraction))
        self.device = torch.device(device)
        self.seed, self.num_workers, self.device_batch = seed, num_workers, device_batch
        self.epoch_length, self.max_empty_batches = epoch_length, max_empty_batches
        self.normals = XRayShards(normal_shards, split=split, resampled=True, seed=seed, sites=sites,
                                  resize=resize, on_error=on_error, select=select)
        self.positives = None if positives is None else XRayShards(
            positives, resampled=True, seed=seed + 1, resize=resize, on_error=on_error)
        self.stage = SynthesisStage(translator, filter=filter, blend_n=blend_n, device=self.device, seed=seed,
                                    **stage_kwargs)
        self.emitted = {"real": 0, "positive": 0, "synthetic": 0}
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: the shard streams, the site choice and the mix all depend on it."""
        self.epoch = int(epoch)
        self.normals.set_epoch(epoch)
        if self.positives is not None:
            self.positives.set_epoch(epoch)

    # -- sources --------------------------------------------------------------------------------
    def _batches(self, dataset: XRayShards) -> Iterator[dict[str, Any]]:
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=self.device_batch, num_workers=self.num_workers, collate_fn=collate_xray,
            pin_memory=self.device.type == "cuda", persistent_workers=self.num_workers > 0)
        while True:
            yield from loader

    def _to_device(self, sample: dict[str, Any]) -> dict[str, Any]:
        sample["image"] = sample["image"].to(self.device, non_blocking=True)
        sample.setdefault("synthetic", False)
        sample.setdefault("provenance", None)
        return sample

    def _refill_synthetic(self, batches: Iterator, synthetic: deque, real: deque) -> None:
        """Pull normal batches until the synthesis stage accepts at least one candidate."""
        for attempt in range(self.max_empty_batches):
            batch = next(batches)
            b = len(batch["image"])
            sources = [i for i in range(b) if int(batch["label"][i]) == 0 and len(batch["sites"][i])]
            source_set = set(sources)
            real.extend(self._to_device(s) for i, s in enumerate(unbatch(batch)) if i not in source_set)
            if not sources:
                continue
            boxes, source = self.stage.choose_sites(batch["sites"], sources)
            result = self.stage.synthesize(batch["image"], boxes, source)
            accepted = torch.nonzero(result.keep).flatten().tolist()
            for j in accepted:
                i = int(result.source[j])
                synthetic.append({
                    "key": f"{batch['key'][i]}-syn", "image": result.images[j], "label": 1,
                    "boxes": result.boxes[j][None].float().cpu(), "meta": batch["meta"][i],
                    "synthetic": True, "provenance": self.stage.provenance(result, j, batch["key"][i])})
            if accepted:
                return
        raise NoAcceptedCandidates(
            f"the synthesis stage accepted no candidate in {self.max_empty_batches} batches "
            f"(stats: {self.stage.stats}); lower the filter threshold, check the translator, or check "
            "that the normal shards have sites (sites=True needs lesion boxes in the manifest)")

    # -- the mix --------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        rng = np.random.default_rng([self.seed, self.epoch, 0x1E51])
        self.stage.generator.manual_seed(self.seed * 7919 + self.epoch)
        normal_batches = self._batches(self.normals)
        positive_batches = self._batches(self.positives) if self.positives is not None else None
        synthetic: deque = deque()
        real: deque = deque()
        positive: deque = deque()
        f_syn, f_pos = self.fractions
        n = 0
        while self.epoch_length is None or n < self.epoch_length:
            u = rng.random()
            if u < f_syn:
                if not synthetic:
                    self._refill_synthetic(normal_batches, synthetic, real)
                kind, sample = "synthetic", synthetic.popleft()
            elif u < f_syn + f_pos:
                if not positive:
                    positive.extend(self._to_device(s) for s in unbatch(next(positive_batches)))
                kind, sample = "positive", positive.popleft()
            else:
                if not real:
                    real.extend(self._to_device(s) for s in unbatch(next(normal_batches)))
                kind, sample = "real", real.popleft()
            self.emitted[kind] += 1
            n += 1
            yield sample

    def iter_batches(self, batch_size: int) -> Iterator[dict[str, Any]]:
        """Yield :func:`streamaug.collate_xray` batches of ``batch_size`` mixed samples."""
        buf: list[dict[str, Any]] = []
        for sample in self:
            buf.append(sample)
            if len(buf) == batch_size:
                yield collate_xray(buf)
                buf = []
        if buf:
            yield collate_xray(buf)

    @property
    def stats(self) -> dict[str, Any]:
        """``emitted`` per kind, the stage's ``generated``/``accepted``/``rate``, and the shard
        stream's error counts."""
        return {"emitted": dict(self.emitted), **self.stage.stats, "normals": self.normals.stats}
