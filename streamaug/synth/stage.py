"""``SynthesisStage``: crop sites -> translate -> blend -> filter, batched on one device.

The stage runs in the consuming process (where the GPU is); CPU DataLoader workers have already
decoded the images and proposed sites (``sample["sites"]``). ``wrap(loader)`` applies it to the
batches of an existing ``DataLoader``::

    stage = SynthesisStage("runs/unit/translator.pt", filter=PseudoLabel("runs/base/best.pt", 0.9),
                           device="cuda", fraction=0.25)
    for batch in stage.wrap(loader):   # loader yields collate_xray batches with "sites"
        logits = model(batch["image"]); loss = bce(logits, batch["label"].float())
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch

from streamaug.data.collate import Ragged
from streamaug.filters.intensity import BoneContent
from streamaug.filters.stats import AcceptanceStats
from streamaug.synth.ops import crop_sites, paste_blend


@dataclass
class Synthesized:
    """Candidates made from one batch (``K`` of them, one site each).

    Attributes:
        images: ``(K, 1, H, W)`` blended full images.
        source: ``(K,)`` long, index of the source image in the input batch.
        boxes: ``(K, 4)`` long, the blended site ``x0 y0 x1 y1`` in image pixels.
        scores: ``(K,)`` float, filter scores (NaN without a filter).
        keep: ``(K,)`` bool, accepted by the filter (all True without a filter).
        translated: ``(K, 1, P, P)`` translated patches (for sample grids).
        patches: ``(K, 1, P, P)`` the source patches.
    """

    images: torch.Tensor
    source: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    keep: torch.Tensor
    translated: torch.Tensor
    patches: torch.Tensor


def _translator_id(translator: torch.nn.Module) -> str:
    return str(getattr(translator, "id", None) or type(translator).__name__)


class SynthesisStage:
    """Make lesion positives from normal images on the device.

    Args:
        translator: a module with ``patch_size`` and ``translate((K,1,P,P)) -> (K,1,P,P)``, or a
            checkpoint path for :func:`streamaug.load_translator`.
        filter: a callable ``images (K,1,H,W) -> (keep (K,) bool, scores (K,))`` such as
            :class:`streamaug.PseudoLabel`, or None to accept every candidate.
        blend_n: exponent ``n`` of the cosine blending mask.
        device: where cropping, translation, blending and filtering run.
        fraction: for :meth:`wrap`: the share of each batch replaced by synthetic positives.
        oversample: for :meth:`wrap`: candidates made per wanted positive (filters reject some).
        min_intensity: device-side bone-content check on the crops (None to skip).
        dtype: autocast dtype for the translator on CUDA (e.g. ``torch.bfloat16``); None: float32.
        seed: seeds the choice of site per image.
    """

    def __init__(self, translator: torch.nn.Module | str | os.PathLike, *,
                 filter: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
                 blend_n: float = 2.0, device: str | torch.device = "cpu", fraction: float = 0.25,
                 oversample: float = 2.0, min_intensity: float | None = 0.15,
                 dtype: torch.dtype | None = None, seed: int = 0) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
        self.device = torch.device(device)
        if isinstance(translator, (str, os.PathLike)):
            from streamaug.models.checkpoint import load_translator

            translator = load_translator(translator, device=self.device)
        self.translator = translator.to(self.device).eval()
        self.translator_id = _translator_id(self.translator)
        self.patch_size = int(self.translator.patch_size)
        self.filter, self.blend_n, self.fraction, self.oversample = filter, float(blend_n), fraction, oversample
        self.bone = BoneContent(min_intensity) if min_intensity is not None else None
        self.dtype = dtype
        self.generator = torch.Generator().manual_seed(seed)
        self.acceptance = AcceptanceStats()

    # -- the batched core ---------------------------------------------------------------------
    def choose_sites(self, sites: list[torch.Tensor], candidates: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One random site per candidate image -> ``(boxes (K,4) long, source (K,) long)``."""
        boxes, source = [], []
        for i in candidates:
            s = torch.as_tensor(sites[i]).reshape(-1, 4)
            if len(s):
                boxes.append(s[int(torch.randint(len(s), (1,), generator=self.generator))])
                source.append(i)
        if not boxes:
            return torch.zeros(0, 4, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        return torch.stack(boxes).long(), torch.tensor(source, dtype=torch.long)

    @torch.no_grad()
    def synthesize(self, images: torch.Tensor, boxes: torch.Tensor, source: torch.Tensor) -> Synthesized:
        """Crop, translate, blend and filter.

        Args:
            images: ``(B, 1, H, W)`` normal images in ``[0, 1]``.
            boxes: ``(K, 4)`` sites ``x0 y0 x1 y1`` (end-exclusive), one per candidate.
            source: ``(K,)`` index of each candidate's image in ``images``.

        Returns:
            :class:`Synthesized` with ``K' <= K`` candidates (dark crops dropped when
            ``min_intensity`` is set).
        """
        images = images.to(self.device, non_blocking=True)
        boxes, source = boxes.to(self.device).long(), source.to(self.device).long()
        patches = crop_sites(images, boxes, source, self.patch_size)
        if self.bone is not None and len(patches):
            bright = self.bone(patches)
            patches, boxes, source = patches[bright], boxes[bright], source[bright]
        if len(patches) == 0:
            empty = images.new_zeros((0, *images.shape[1:]))
            none = torch.zeros(0, dtype=torch.bool, device=self.device)
            return Synthesized(empty, source, boxes, images.new_zeros(0), none, patches, patches)
        use_amp = self.dtype is not None and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=use_amp):
            translated = self.translator.translate(patches)
        translated = translated.float().clamp(0, 1)
        k = len(source)
        blended = paste_blend(images[source], translated.to(images.dtype), boxes,
                              torch.arange(k, device=self.device), self.blend_n)
        if self.filter is not None:
            keep, scores = self.filter(blended)
            keep, scores = keep.to(self.device), scores.to(self.device, torch.float32)
        else:
            keep = torch.ones(k, dtype=torch.bool, device=self.device)
            scores = torch.full((k,), float("nan"), device=self.device)
        self.acceptance.update(k, int(keep.sum()))
        return Synthesized(blended, source, boxes, scores, keep, translated, patches)

    def provenance(self, result: Synthesized, j: int, source_key: str) -> dict[str, Any]:
        """The provenance record of candidate ``j`` of ``result``."""
        return {"source_key": source_key, "box": [int(v) for v in result.boxes[j].tolist()],
                "translator": self.translator_id, "blend_n": self.blend_n,
                "score": float(result.scores[j])}

    # -- drop-in for an existing DataLoader -----------------------------------------------------
    def apply(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Replace up to ``round(fraction * B)`` normal images of a ``collate_xray`` batch by
        accepted synthetic positives (label 1, ``synthetic`` True, ``boxes`` = the blended site,
        ``provenance`` set). Rejected candidates leave their normal image in place, so the batch
        size never changes. The batch needs ``image``, ``label`` and ``sites``."""
        if "sites" not in batch:
            raise KeyError("SynthesisStage needs batch['sites']: build the stream with sites=True "
                           "(XRayShards(..., sites=True)) or propose them with streamaug.SiteProposer")
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["label"].clone()
        b = len(images)
        want = round(self.fraction * b)
        normals = [i for i in range(b) if int(labels[i]) == 0 and len(batch["sites"][i])]
        order = torch.randperm(len(normals), generator=self.generator).tolist()
        candidates = [normals[i] for i in order[: max(want, math.ceil(want * self.oversample))]]
        synthetic = torch.zeros(b, dtype=torch.bool)
        provenance: list[Any] = list(batch.get("provenance") or [None] * b)
        boxes_out = list(batch.get("boxes") or [torch.zeros(0, 4)] * b)
        images = images.clone()
        if want and candidates:
            boxes, source = self.choose_sites(batch["sites"], candidates)
            result = self.synthesize(images, boxes, source)
            keys = batch.get("key") or [str(i) for i in range(b)]
            for j in torch.nonzero(result.keep).flatten().tolist()[:want]:
                i = int(result.source[j])
                images[i] = result.images[j]
                labels[i], synthetic[i] = 1, True
                boxes_out[i] = result.boxes[j][None].float().cpu()
                provenance[i] = self.provenance(result, j, keys[i])
        return {**batch, "image": images, "label": labels, "synthetic": synthetic,
                "boxes": Ragged.from_list(boxes_out), "provenance": provenance}

    def wrap(self, loader: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Yield the batches of ``loader`` with synthesis applied (see :meth:`apply`)."""
        for batch in loader:
            yield self.apply(batch)

    @property
    def stats(self) -> dict[str, Any]:
        """``generated`` (blended candidates), ``accepted`` (passed the filter), ``rate``, and
        ``dark_crops`` (crops dropped by the bone-content check before translation)."""
        dark = self.bone.stats.generated - self.bone.stats.accepted if self.bone is not None else 0
        return {**self.acceptance.as_dict(), "dark_crops": dark}
