"""``SynthesisStage``: sites -> synthesize (translate, copy-paste, ...) -> blend -> filter, batched on one device.

The stage runs in the consuming process (where the GPU is); CPU DataLoader workers have already
decoded the images and proposed sites (``sample["sites"]``). ``wrap(loader)`` applies it to the
batches of an existing ``DataLoader``::

    stage = SynthesisStage("runs/unit/translator.pt", filter=PseudoLabel("runs/base/best.pt", 0.9),
                           device="cuda", fraction=0.25)
    for batch in stage.wrap(loader):   # loader yields collate_xray batches with "sites"
        logits = model(batch["image"]); loss = bce(logits, batch["label"].float())

How many candidates: for ``want`` synthetic samples, ``want`` candidates without a filter (one site
of each of ``want`` normals), else ``ceil(oversample * want)``, spread over the batch's normals, up
to ``sites_per_image`` sites of each. The best ``want`` are kept (filter scores, at most one per
source image; in threshold mode only those ``>= t``), so a ranking filter
(``PseudoLabel(mode="rank")``) scores ``oversample`` candidates per accepted sample.

Sources: a synthesizer makes positives from normals (label 0, sites proposed by the workers) unless
it declares ``source_label = 1`` (:class:`streamaug.synth.Inpaint`, ``CopyPaste(onto="lesions")``): then
the sources are positives and their sites are their own lesion boxes (:mod:`streamaug.synth.sources`).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from streamaug.data.collate import Ragged
from streamaug.filters.intensity import BoneContent
from streamaug.filters.rank import select_top
from streamaug.filters.stats import AcceptanceStats
from streamaug.synth.base import Synthesizer
from streamaug.synth.mix import Mix
from streamaug.synth.ops import check_blend_n, clip_sites, crop_sites
from streamaug.synth.sources import keeps_site, source_label
from streamaug.synth.translate import Translate


@dataclass
class Synthesized:
    """Candidates made from one batch (``K`` of them, one site each).

    Attributes:
        images: ``(K, 1, H, W)`` blended full images.
        source: ``(K,)`` long, index of the source image in the input batch.
        boxes: ``(K, 4)`` long, the blended site ``x0 y0 x1 y1`` in image pixels (a lesion swap's
            may reach past the image border; :meth:`SynthesisStage.sample` clips it).
        scores: ``(K,)`` float, filter scores (NaN without a filter).
        keep: ``(K,)`` bool, chosen (passed the filter and, with ``want``, among the best).
        translated: ``(K, 1, P, P)`` what was pasted into each site (for sample grids), or None.
        patches: ``(K, 1, P, P)`` the source patches, or None.
        params: the synthesizer's random parameters (replay them with ``synthesizer.apply``).
        passed: ``(K,)`` bool, passed the filter (before the ``want`` limit).
    """

    images: torch.Tensor
    source: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    keep: torch.Tensor
    translated: torch.Tensor | None
    patches: torch.Tensor | None
    params: dict[str, Any] = field(default_factory=dict)
    passed: torch.Tensor | None = None


def as_synthesizer(spec: Any, *, blend_n: float = 2.0, dtype: torch.dtype | None = None,
                   device: str | torch.device = "cpu") -> Synthesizer:
    """A :class:`Synthesizer` from a synthesizer (moved to ``device``), a list of them or of
    ``(synthesizer, weight)`` pairs (:class:`Mix`), or a translator module or checkpoint path
    (:class:`Translate` with ``blend_n`` and ``dtype``)."""
    if isinstance(spec, Synthesizer):
        return spec.to(device)
    if isinstance(spec, (list, tuple)):
        return Mix(spec).to(device)
    return Translate(spec, blend_n=blend_n, dtype=dtype, device=device)


def epoch_seed(seed: int, epoch: int, salt: int = 0) -> int:
    """A 63-bit seed for one epoch of one random stream (numpy's SeedSequence of the three).

    The 64-bit state is made a Python int before the shift: numpy 1.x refuses ``uint64 >> int``
    (no safe common type), numpy 2 allows it; the value is the same under both.

    Examples:
        >>> epoch_seed(0, 1, 0x5173) == epoch_seed(0, 1, 0x5173) != epoch_seed(0, 2, 0x5173)
        True
    """
    state = np.random.SeedSequence([int(seed), int(epoch), int(salt)]).generate_state(1, np.uint64)
    return int(state[0]) >> 1


class SynthesisStage:
    """Make lesion positives from normal images on the device.

    Args:
        translator: shorthand for ``synthesizer=Translate(translator, blend_n=..., dtype=...)``: a
            module with ``patch_size`` and ``translate`` or a checkpoint path.
        synthesizer: a :class:`streamaug.synth.Translate`, :class:`streamaug.synth.CopyPaste`, a
            :class:`streamaug.synth.Mix`, or a list of synthesizers / ``(synthesizer, weight)`` pairs.
        filter: a callable ``images (K,1,H,W) -> (keep (K,) bool, scores (K,))`` such as
            :class:`streamaug.PseudoLabel`, or None to accept every candidate. A filter with
            ``mode == "rank"`` is called as ``filter(images, want=, groups=)``; one with
            ``on == "site"`` gets the blended sites, cropped to its square ``input_size``, instead of the images.
        blend_n: exponent ``n > 0`` of the cosine blending mask (for ``translator=``; checked either way).
        device: where cropping, synthesis, blending and filtering run.
        fraction: for :meth:`apply`: the share of each batch (all its samples) replaced by synthetic
            positives. Per-batch rounding is carried over to the next batch, so the share is exact on
            average; a batch with too few normals (or a filter that passes too few) gives less, which
            :attr:`stats` reports as ``achieved_fraction``.
        oversample: with a filter, candidates scored per wanted positive (no extra ones without).
        sites_per_image: with a filter, at most this many candidate sites of one image.
        min_intensity: device-side bone-content check on the site boxes' exact means (None to skip);
            only for sites proposed in normals (a real lesion box of a positive source is kept as it is).
        dtype: autocast dtype for the translator on CUDA (e.g. ``torch.bfloat16``); None: float32.
        seed: seeds the choice of images and sites and the synthesizer's parameters.
    """

    def __init__(self, translator: torch.nn.Module | str | os.PathLike | None = None, *,
                 synthesizer: Synthesizer | Sequence[Any] | None = None,
                 filter: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
                 blend_n: float = 2.0, device: str | torch.device = "cpu", fraction: float = 0.25,
                 oversample: float = 2.0, sites_per_image: int = 2, min_intensity: float | None = 0.15,
                 dtype: torch.dtype | None = None, seed: int = 0) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
        if oversample < 1 or sites_per_image < 1:
            raise ValueError(f"need oversample >= 1 and sites_per_image >= 1, got {oversample}, {sites_per_image}")
        if (translator is None) == (synthesizer is None):
            raise ValueError("pass one of translator= (a UNIT checkpoint or module) or synthesizer=")
        blend_n = check_blend_n(blend_n)
        self.device = torch.device(device)
        self.synthesizer = as_synthesizer(synthesizer if synthesizer is not None else translator,
                                          blend_n=blend_n, dtype=dtype, device=self.device)
        self.filter, self.fraction, self.oversample = filter, fraction, float(oversample)
        self.sites_per_image = int(sites_per_image)
        self.source_label = source_label(self.synthesizer)
        if keeps_site(self.synthesizer) and getattr(filter, "on", "image") == "site":
            raise ValueError("a site filter (on='site') scores the blended site, but this synthesizer keeps the "
                             "site (a real lesion box) and repaints around it: use a whole-image filter")
        self.bone = BoneContent(min_intensity) if min_intensity is not None and self.source_label == 0 else None
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.acceptance = AcceptanceStats()
        self._counts = {"samples": 0, "synthetic": 0, "asked": 0}
        self._carry = 0.0

    # -- what the synthesizer is ---------------------------------------------------------------
    @property
    def translator(self) -> torch.nn.Module | None:
        """The translator module of a :class:`Translate` synthesizer (else None)."""
        return getattr(self.synthesizer, "translator", None)

    @property
    def translator_id(self) -> str | None:
        """The synthesizer's ``id`` (a translator's checkpoint and step), or None."""
        return getattr(self.synthesizer, "id", None)

    @property
    def patch_size(self) -> int | None:
        """The side a translator works at, or None for synthesizers without one."""
        return getattr(self.synthesizer, "patch_size", None)

    @property
    def blend_n(self) -> float:
        """The exponent ``n`` of the cosine blending mask the synthesizer uses."""
        return self.synthesizer.blend_n

    def set_epoch(self, epoch: int) -> None:
        """Reseed the choice of images, sites and synthesis parameters for ``epoch`` (replayable)."""
        self.generator.manual_seed(epoch_seed(self.seed, epoch, 0x5173))

    # -- the batched core ---------------------------------------------------------------------
    def choose_sites(self, sites: Sequence[torch.Tensor], candidates: Sequence[int], k: int | None = None,
                     per_image: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Random distinct sites of the ``candidates`` images, round-robin: one site of each image in
        the given order, then a second one of each, ... up to ``per_image`` each and ``k`` in all.

        Returns:
            ``(boxes (K, 4) long, source (K,) long)``.
        """
        perms = [torch.randperm(len(torch.as_tensor(sites[i]).reshape(-1, 4)), generator=self.generator)
                 for i in candidates]
        boxes, source = [], []
        for r in range(per_image):
            for i, perm in zip(candidates, perms):
                if r < len(perm) and (k is None or len(boxes) < k):
                    boxes.append(torch.as_tensor(sites[i]).reshape(-1, 4)[int(perm[r])])
                    source.append(i)
        if not boxes:
            return torch.zeros(0, 4, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        return torch.stack(boxes).long(), torch.tensor(source, dtype=torch.long)

    def plan(self, batch: dict[str, Any], want: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Candidate sites for ``want`` synthetic samples from the sources (label :attr:`source_label`,
        with sites) of a ``collate_xray`` batch, in random order; returns ``(boxes, source, want)`` with
        ``want`` lowered to the number of such sources."""
        sources = [i for i in range(len(batch["label"])) if int(batch["label"][i]) == self.source_label
                   and len(batch["sites"][i])]
        images = [sources[i] for i in torch.randperm(len(sources), generator=self.generator).tolist()]
        want = min(want, len(images))
        if self.filter is None:
            boxes, source = self.choose_sites(batch["sites"], images[:want])
        else:
            boxes, source = self.choose_sites(batch["sites"], images, k=math.ceil(want * self.oversample),
                                              per_image=self.sites_per_image)
        return boxes, source, want

    def _score(self, images: torch.Tensor, boxes: torch.Tensor, source: torch.Tensor,
               want: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(passed, scores)`` of the filter (all passed, NaN scores without one). A filter with
        ``on == "site"`` sees each candidate's blended site, cropped to its ``input_size``."""
        k = len(images)
        if self.filter is None:
            return (torch.ones(k, dtype=torch.bool, device=self.device),
                    torch.full((k,), float("nan"), device=self.device))
        if getattr(self.filter, "on", "image") == "site":  # the site's part inside the image
            images = crop_sites(images, clip_sites(boxes, *images.shape[-2:]), torch.arange(k, device=images.device),
                                self.filter.input_size[0])
        if getattr(self.filter, "mode", "threshold") == "rank":
            passed, scores = self.filter(images, want=want, groups=source)
        else:
            passed, scores = self.filter(images)
        return passed.to(self.device), scores.to(self.device, torch.float32)

    @torch.no_grad()
    def synthesize(self, images: torch.Tensor, boxes: torch.Tensor, source: torch.Tensor,
                   want: int | None = None, meta: Sequence[Mapping[str, Any] | None] | None = None) -> Synthesized:
        """Bone check, synthesize, blend, filter, choose.

        Args:
            images: ``(B, 1, H, W)`` normal images in ``[0, 1]``.
            boxes: ``(K, 4)`` sites ``x0 y0 x1 y1`` (end-exclusive), one per candidate.
            source: ``(K,)`` index of each candidate's image in ``images``.
            want: keep at most this many, the best first and at most one per source image (None:
                every candidate that passes the filter).
            meta: one record per image of ``images`` (the batch's ``meta``), for a synthesizer that
                matches what it pastes to its source (``CopyPaste(match=...)``); None when unknown.

        Returns:
            :class:`Synthesized` with ``K' <= K`` candidates (dark sites dropped when
            ``min_intensity`` is set).
        """
        images = images.to(self.device, non_blocking=True)
        boxes, source = boxes.to(self.device).long(), source.to(self.device).long()
        if self.bone is not None and len(boxes):
            bright = self.bone.boxes(images, boxes, source)
            boxes, source = boxes[bright], source[bright]
        k = len(boxes)
        if k == 0:
            none = torch.zeros(0, dtype=torch.bool, device=self.device)
            return Synthesized(images.new_zeros((0, *images.shape[1:])), source, boxes, images.new_zeros(0),
                               none, None, None, {}, none)
        params = self.synthesizer.generate_parameters(images, boxes, source, self.generator, meta)
        made = self.synthesizer.apply(images, boxes, source, params)
        passed, scores = self._score(made.images, boxes, source, want)
        keep = passed if want is None else select_top(scores, want, eligible=passed, groups=source)
        self.acceptance.update(k, int(keep.sum()))
        return Synthesized(made.images, source, boxes, scores, keep, made.translated, made.patches, params, passed)

    def provenance(self, result: Synthesized, j: int, source_key: str) -> dict[str, Any]:
        """The provenance record of candidate ``j`` of ``result``: ``source_key``, ``box``, ``score``
        and the synthesizer's record (``synthesizer``, ``blend_n``, ``translator`` or ``lesion_key``, ...)."""
        return {"source_key": source_key, "box": [int(v) for v in result.boxes[j].tolist()],
                "score": float(result.scores[j]), **self.synthesizer.provenance(result.params, j)}

    def sample(self, result: Synthesized, j: int, key: str, meta: Any = None) -> dict[str, Any]:
        """Candidate ``j`` of ``result`` as a sample dict: ``key`` (``<source key>-syn``), ``image``,
        ``label`` 1, ``boxes`` (the blended site, clipped to the image; the provenance's ``box`` is the
        site as blended), ``meta``, ``synthetic`` True, ``provenance``."""
        box = clip_sites(result.boxes[j][None], *result.images.shape[-2:])
        return {"key": f"{key}-syn", "image": result.images[j], "label": 1,
                "boxes": box.float().cpu(), "meta": meta, "synthetic": True,
                "provenance": self.provenance(result, j, key)}

    # -- drop-in for an existing DataLoader -----------------------------------------------------
    def apply(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Replace ``fraction`` of a ``collate_xray`` batch by synthetic positives made from its
        normals (each replaced normal becomes the :meth:`sample` made from it; with a positive-source
        synthesizer such as :class:`streamaug.synth.Inpaint`, from its positives, whose ``sites``
        are then their lesion boxes: ``XRayShards(..., sites=source_sites(synthesizer))``). Candidates that are
        not chosen leave their normal image in place, so the batch size never changes. The batch
        needs ``image``, ``label`` and ``sites``."""
        if "sites" not in batch:
            raise KeyError("SynthesisStage needs batch['sites']: build the stream with sites=True "
                           "(XRayShards(..., sites=True)) or propose them with streamaug.SiteProposer")
        images = batch["image"].to(self.device, non_blocking=True)
        b = len(images)
        self._carry += self.fraction * b
        asked = min(b, int(math.floor(self._carry + 0.5)))
        self._carry -= asked
        boxes, source, want = self.plan(batch, asked)
        keys = list(batch.get("key") or map(str, range(b)))
        out = {**batch, "image": images.clone(), "label": batch["label"].clone(),
               "synthetic": torch.zeros(b, dtype=torch.bool), "key": list(keys),
               "provenance": list(batch.get("provenance") or [None] * b),
               "boxes": list(batch.get("boxes") or [torch.zeros(0, 4)] * b)}
        placed = 0
        if want and len(boxes):
            metas = batch.get("meta") or [None] * b
            result = self.synthesize(images, boxes, source, want=want, meta=metas)
            for j in torch.nonzero(result.keep).flatten().tolist():
                i = int(result.source[j])
                made = self.sample(result, j, keys[i], metas[i])
                for name in ("key", "image", "label", "synthetic", "boxes", "provenance"):
                    out[name][i] = made[name]
                placed += 1
        self._counts["samples"] += b
        self._counts["synthetic"] += placed
        self._counts["asked"] += asked
        out["boxes"] = Ragged.from_list(out["boxes"])
        return out

    def wrap(self, loader: Iterable[dict[str, Any]]) -> SynthesisLoader:
        """The batches of ``loader`` with synthesis applied (see :meth:`apply`); resumable with a
        ``StatefulDataLoader`` (see :class:`SynthesisLoader`)."""
        return SynthesisLoader(self, loader)

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The generator, the rounding carry, the counts and the filter's state (if it has one)."""
        return {"generator": self.generator.get_state(), "carry": self._carry, "counts": dict(self._counts),
                "acceptance": self.acceptance.state_dict(),
                "bone": self.bone.stats.state_dict() if self.bone is not None else None,
                "filter": self.filter.state_dict() if hasattr(self.filter, "state_dict") else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (the generator, the rounding carry, the counts, the filter's state)."""
        self.generator.set_state(state["generator"])
        self._carry, self._counts = float(state["carry"]), dict(state["counts"])
        self.acceptance.load_state_dict(state["acceptance"])
        if self.bone is not None and state["bone"] is not None:
            self.bone.stats.load_state_dict(state["bone"])
        if state["filter"] is not None and hasattr(self.filter, "load_state_dict"):
            self.filter.load_state_dict(state["filter"])

    @property
    def stats(self) -> dict[str, Any]:
        """``generated`` (candidates blended and scored), ``accepted`` (chosen), ``rate``,
        ``candidates_per_accepted``, ``dark_crops`` (sites dropped by the bone check before
        synthesis) and, for :meth:`apply`, ``samples``, ``synthetic``, ``asked_fraction`` and
        ``achieved_fraction`` (synthetic / samples)."""
        dark = self.bone.stats.generated - self.bone.stats.accepted if self.bone is not None else 0
        n = self._counts["samples"]
        return {**self.acceptance.as_dict(), "dark_crops": dark, "samples": n, "synthetic": self._counts["synthetic"],
                "asked_fraction": self.fraction, "achieved_fraction": self._counts["synthetic"] / n if n else None}


class SynthesisLoader:
    """``stage.wrap(loader)``: iterate ``loader`` with :meth:`SynthesisStage.apply` on every batch.

    ``set_epoch`` reseeds the stage and calls the loader's dataset's ``set_epoch``; ``state_dict`` /
    ``load_state_dict`` save and restore the stage with the loader (a torchdata
    ``StatefulDataLoader``) so a run resumed after ``k`` batches gives the batches that followed.
    """

    def __init__(self, stage: SynthesisStage, loader: Iterable[dict[str, Any]]) -> None:
        self.stage, self.loader = stage, loader

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            yield self.stage.apply(batch)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        self.stage.set_epoch(epoch)
        dataset = getattr(self.loader, "dataset", self.loader)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        loader = self.loader.state_dict() if hasattr(self.loader, "state_dict") else None
        return {"stage": self.stage.state_dict(), "loader": loader}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the stage and, when it has state, the wrapped loader."""
        self.stage.load_state_dict(state["stage"])
        if state["loader"] is not None:
            if not hasattr(self.loader, "load_state_dict"):
                raise TypeError("this state holds a loader position: wrap a torchdata StatefulDataLoader")
            self.loader.load_state_dict(state["loader"])
