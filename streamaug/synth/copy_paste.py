"""``CopyPaste``: paste real lesion crops at proposed normal sites (TumorCP-style, with the cosine blend).

The crops are :class:`streamaug.synth.lesion_bank.LesionCrops`: squares of side ``margin * max(box
w, box h)`` centred on real positives' lesion boxes, with where their image had content (and, with
``shape="mask"``, the lesion's feathered mask). Pasting maps a crop onto the site without changing
its aspect (a non-square site sees the middle of the square), after a random flip, rotation by a
multiple of 90 degrees, scale and contrast, with the lesion's mean intensity matched to the site's,
and blends it with the cosine mask of the site (:func:`streamaug.synth.paste_blend` with the canvas
weight). Only the site's pixels change. ``shape="mask"`` pastes the lesion by its segmentation mask
(TumorCP's way) instead of the whole square: the site keeps its own bone around the lesion, and only
the lesion's contrast to its own surroundings travels (the intensity is still matched over the
whole crop).

Lesions are matched to sites by size: a lesion whose crop side ``c`` lies within ``size_tolerance``
of the site side is drawn (uniformly among them; the nearest one when none is that close), so a
small lesion is not blown up to fill a large site. ``match="bone"`` (a ``meta`` field, or a function
of the ``meta``) also asks the lesion to come from an image of the same kind as the site's (a humerus
lesion for a humerus site, never a hand's); ``avoid="group"`` from another patient than the site's
image (with ``onto="lesions"``: never the source's own lesion). A site whose kind no allowed lesion
shares draws from all allowed ones.

``onto="lesions"`` pastes onto positives instead of normals (a lesion swap): the sources are the
real positives, each site is the square of side ``margin * max(w, h)`` around one of their own lesion
boxes (:class:`streamaug.synth.sources.LesionBoxSites`, not clipped: at the image border the site
reaches past it, so the paste and its mask stay centred on the lesion; only the part inside the image
is written and the intensity is matched over it), and another real lesion of a similar size covers
the original (which shows only where the cosine mask fades). The context stays a real
positive's context, where a paste onto a normal carries the normals' context. A source can draw its
own lesion (then the sample is a flipped, rotated, rescaled copy of itself); the provenance's
``lesion_key`` beside ``source_key`` tells.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from streamaug.synth.base import Made, Synthesizer
from streamaug.synth.lesion_bank import LesionCrops
from streamaug.synth.ops import check_blend_n, crop_coverage, crop_sites, paste_blend
from streamaug.synth.sources import LesionBoxSites


@dataclass(frozen=True)
class _MetaValue:
    """``meta -> value`` of a ``match`` / ``avoid`` setting (a field name or a function of the meta);
    None for no setting, a missing value or an empty one. Picklable with a field name."""

    field: str | Callable[[Mapping[str, Any]], Hashable] | None

    def __call__(self, meta: Mapping[str, Any]) -> Hashable:
        if self.field is None:
            return None
        value = meta.get(self.field) if isinstance(self.field, str) else self.field(meta)
        return None if value in ("", None) else value


def _describe(field: Any) -> Any:
    return field if field is None or isinstance(field, str) else repr(field)


def _by_side(sides: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log sides sorted, their order)`` of a pool of lesion crops."""
    return torch.sort(sides.log())


def _draw(log_sides: torch.Tensor, order: torch.Tensor, target: torch.Tensor, u: torch.Tensor,
          log_tol: float) -> torch.Tensor:
    """One lesion per site from a pool (``log_sides`` sorted, ``order`` their crop indices): uniform
    (by ``u`` in ``[0, 1)``) among those within ``log_tol`` of the site's log side ``target``, else the
    nearest in size."""
    lo = torch.searchsorted(log_sides, target - log_tol)
    count = torch.searchsorted(log_sides, target + log_tol, right=True) - lo
    if len(log_sides) > 1:
        at = torch.searchsorted(log_sides, target).clamp(1, len(log_sides) - 1)
        nearest = torch.where((log_sides[at] - target).abs() < (log_sides[at - 1] - target).abs(), at, at - 1)
    else:
        nearest = torch.zeros(len(target), dtype=torch.long)
    pick = torch.where(count > 0, lo + (u * count).long().clamp(max=(count - 1).clamp(min=0)), nearest)
    return order[pick]


def _room(boxes: torch.Tensor, scale: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    """``(K, 2)`` the largest lesion offset (x, y) along the site's axes, in canvas units, that keeps
    the lesion (half-size ``extent``) inside the site: the canvas spans the square of the site's larger
    side at ``scale`` 1, so an axis of ``w`` pixels covers ``w / side / scale`` canvas half-widths."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1)
    side = wh.amax(1, keepdim=True)
    return (wh / side / scale[:, None] - extent[:, None]).clamp(min=0)


def _to_canvas(offset: torch.Tensor, rot: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """``(K, 2)`` offsets along the site's axes turned into canvas axes: the rotation by ``rot``
    quarter turns and the flip that :meth:`CopyPaste.apply` applies to the site's coordinates."""
    cos = torch.tensor([1.0, 0.0, -1.0, 0.0])[rot]
    sin = torch.tensor([0.0, 1.0, 0.0, -1.0])[rot]
    x, y = cos * offset[:, 0] - sin * offset[:, 1], sin * offset[:, 0] + cos * offset[:, 1]
    return torch.stack([torch.where(flip, -x, x), y], 1)


def _site_mean(weight: torch.Tensor, site: torch.Tensor, coverage: torch.Tensor,
               fallback: torch.Tensor) -> torch.Tensor:
    """``(K, 1, 1, 1)`` mean of the site crop ``(K, 1, R, R)`` under the paste ``weight``, over the
    image's pixels only (``coverage``: the crop reads 0 past the border); ``fallback`` where the
    weight has no pixel in the image."""
    inside = (weight * coverage).sum((1, 2, 3))[:, None, None, None]
    mean = (weight * site).sum((1, 2, 3))[:, None, None, None] / inside.clamp(min=1e-6)
    return torch.where(inside > 1e-6, mean, fallback)


class CopyPaste(Synthesizer):
    """Paste a real lesion crop, randomly flipped, rotated, scaled and contrast-jittered, at each site.

    Args:
        lesion_shards: packed shards whose label-1 images with boxes give the lesions (None with ``crops``).
        split: split of ``lesion_shards`` (use the training split: no test lesion may leak).
        select: ``select(key, meta)`` on ``lesion_shards`` (e.g. one region, the kept rare positives).
        resize: the stream's ``resize``: lesions must be cut at the size the sites are proposed at.
        crops: ready :class:`LesionCrops` instead of reading shards.
        margin: crop side as a multiple of the lesion box's larger side (the ``s`` of the paper); with
            ``onto="lesions"`` also the site's (give the margin ``crops`` were cut with).
        size: canvas side ``R`` the crops are kept at.
        center: keep the lesion at the site's centre (where the cosine mask is 1); False draws an
            offset that keeps it inside the site along each of its axes (the mask fades it).
        flip, rot90: random horizontal flip; random rotation by ``k * 90`` degrees.
        scale: range of the lesion's size relative to a crop that fills the site.
        contrast: range of the gain applied around the lesion's mean.
        match_intensity: shift the lesion's mean to the site's mean (over the pasted area).
        size_tolerance: a lesion matches a site when ``1 / tol <= site side / c <= tol``.
        match: draw each site's lesion among those whose source image has the same value of this
            ``meta`` field (or of ``match(meta)``) as the site's image; needs ``meta`` in the call
            (the stage passes the batch's). None: any lesion of a similar size.
        avoid: never draw a lesion whose image has the same value of this ``meta`` field (or of
            ``avoid(meta)``) as the site's image (``"group"``: a patient id); unless no lesion is left.
        blend_n: exponent of the cosine mask, ``> 0``.
        shape: ``"box"``: paste the whole crop (lesion and its surroundings); ``"mask"``: only the
            lesion, by the shards' ``mask`` widened and feathered by ``feather`` (a crop whose image has
            no mask pixel in the box pastes its feathered box; :attr:`LesionCrops.unmasked` counts them).
            With ``crops``, theirs. Not with ``onto="lesions"`` (the paste must cover the source's lesion).
        feather: ``shape="mask"``: rim width and softness as a share of the lesion box's larger side.
        onto: ``"normals"``: sites proposed in normal images; ``"lesions"``: the sources are positives
            and the sites their own lesion boxes widened by ``margin`` (``source_label = 1``).
        device: where the canvases live.

    Examples:
        >>> lesion = {"key": "L1", "label": 1, "image": torch.rand(1, 64, 64),
        ...           "boxes": torch.tensor([[20., 20., 36., 36.]])}
        >>> cp = CopyPaste(crops=LesionCrops.from_samples([lesion], size=16))
        >>> made = cp(torch.rand(1, 1, 64, 64), torch.tensor([[8, 8, 40, 40]]), torch.tensor([0]),
        ...           torch.Generator().manual_seed(0))
        >>> made.images.shape, cp.provenance(cp.generate_parameters(None, torch.tensor([[8, 8, 40, 40]]),
        ...                                  torch.tensor([0])), 0)["lesion_key"]
        (torch.Size([1, 1, 64, 64]), 'L1')
    """

    name = "copy_paste"

    def __init__(self, lesion_shards: str | Sequence[str] | None = None, *, split: str | None = None,
                 select: Callable[[str, dict], bool] | None = None, resize: int | tuple[int, int] | None = None,
                 crops: LesionCrops | None = None, margin: float = 2.0, size: int = 64, center: bool = True,
                 flip: bool = True, rot90: bool = True, scale: tuple[float, float] = (0.8, 1.25),
                 contrast: tuple[float, float] = (0.8, 1.2), match_intensity: bool = True,
                 size_tolerance: float = 1.5, blend_n: float = 2.0,
                 match: str | Callable[[Mapping[str, Any]], Hashable] | None = None,
                 avoid: str | Callable[[Mapping[str, Any]], Hashable] | None = None,
                 onto: Literal["normals", "lesions"] = "normals", shape: Literal["box", "mask"] = "box",
                 feather: float = 0.15, device: str | torch.device = "cpu") -> None:
        if onto not in ("normals", "lesions"):
            raise ValueError(f"onto must be 'normals' or 'lesions', got {onto!r}")
        shape = crops.shape if crops is not None else shape
        if shape == "mask" and onto == "lesions":
            raise ValueError("shape='mask' pastes only the lesion, which would leave the source's own lesion "
                             "showing around it: a lesion swap (onto='lesions') needs shape='box'")
        self.onto = onto
        blend_n = check_blend_n(blend_n)
        if onto == "lesions":  # new positives from real ones, each at its own (widened, unclipped) lesion boxes
            self.source_label, self.source_sites = 1, LesionBoxSites(margin, clip=False)
        if crops is None:
            if lesion_shards is None:
                raise ValueError("CopyPaste needs lesion_shards or crops")
            crops = LesionCrops.from_shards(lesion_shards, split=split, select=select, resize=resize,
                                            margin=margin, size=size, shape=shape, feather=feather)
        if size_tolerance < 1 or not 0 < scale[0] <= scale[1] or not 0 <= contrast[0] <= contrast[1]:
            raise ValueError("need size_tolerance >= 1, 0 < scale[0] <= scale[1], 0 <= contrast[0] <= contrast[1]")
        self.crops, self.resize = crops, resize
        self.center, self.flip, self.rot90 = center, flip, rot90
        self.scale, self.contrast = (float(scale[0]), float(scale[1])), (float(contrast[0]), float(contrast[1]))
        self.match_intensity, self.log_tol, self.blend_n = match_intensity, math.log(size_tolerance), blend_n
        self.match, self.avoid = match, avoid
        self._match, self._avoid = _MetaValue(match), _MetaValue(avoid)
        metas = crops.metas or [{}] * len(crops)
        self._crop_match = [self._match(m) for m in metas]
        self._crop_avoid = [self._avoid(m) for m in metas]
        self._pools: dict[tuple[Hashable, Hashable], tuple[torch.Tensor, torch.Tensor]] = {}
        self.to(device)

    def to(self, device: str | torch.device) -> CopyPaste:
        self.crops.to(device)
        return self

    def _pool(self, match: Hashable, avoid: Hashable) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log sides sorted, crop indices)`` of the lesions a site may draw: those of its kind
        ``match`` and not of its ``avoid`` value; all allowed ones when none is of its kind; all
        when none is allowed. ``None`` matches or avoids nothing."""
        if (match, avoid) not in self._pools:
            allowed = [i for i, a in enumerate(self._crop_avoid) if avoid is None or a != avoid]
            same = [i for i in allowed if match is None or self._crop_match[i] == match]
            members = torch.tensor(same or allowed or range(len(self.crops)), dtype=torch.long)
            log_sides, order = _by_side(self.crops.sides[members])
            self._pools[match, avoid] = log_sides, members[order]
        return self._pools[match, avoid]

    def generate_parameters(self, images: torch.Tensor, boxes: torch.Tensor, source: torch.Tensor,
                            generator: torch.Generator | None = None,
                            meta: Sequence[Mapping[str, Any] | None] | None = None) -> dict[str, Any]:
        """``lesion`` (K,) crop index, ``flip`` (K,) bool, ``rot`` (K,) quarter turns, ``scale`` (K,),
        ``gain`` (K,), ``shift`` (K, 2) lesion offset in canvas units."""
        k = len(boxes)
        b = boxes.detach().cpu().float().reshape(-1, 4)
        target = torch.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]).clamp(min=1).log()
        u = torch.rand(k, generator=generator)
        if self.match is None and self.avoid is None:
            lesion = _draw(*self._pool(None, None), target, u, self.log_tol)
        else:
            if meta is None:
                raise ValueError(f"CopyPaste(match={self.match!r}, avoid={self.avoid!r}) needs the sources' meta: "
                                 "pass meta= (one record per image; SynthesisStage and LesionStream pass the "
                                 "batch's), or drop match and avoid")
            sites = [(self._match(meta[i] or {}), self._avoid(meta[i] or {})) for i in source.detach().cpu().tolist()]
            lesion = torch.empty(k, dtype=torch.long)
            for kind in set(sites):
                at = torch.tensor([j for j, h in enumerate(sites) if h == kind], dtype=torch.long)
                lesion[at] = _draw(*self._pool(*kind), target[at], u[at], self.log_tol)
        flip = torch.rand(k, generator=generator) < 0.5 if self.flip else torch.zeros(k, dtype=torch.bool)
        rot = torch.randint(4, (k,), generator=generator) if self.rot90 else torch.zeros(k, dtype=torch.long)
        scale = self.scale[0] + (self.scale[1] - self.scale[0]) * torch.rand(k, generator=generator)
        gain = self.contrast[0] + (self.contrast[1] - self.contrast[0]) * torch.rand(k, generator=generator)
        if self.center:
            shift = torch.zeros(k, 2)
        else:
            room = _room(b, scale, self.crops.extent[lesion])
            shift = _to_canvas((torch.rand(k, 2, generator=generator) * 2 - 1) * room, rot, flip)
        return {"lesion": lesion, "flip": flip, "rot": rot, "scale": scale, "gain": gain, "shift": shift}

    @torch.no_grad()
    def apply(self, images: torch.Tensor, boxes: torch.Tensor, source: torch.Tensor,
              params: dict[str, Any]) -> Made:
        """Warp each drawn canvas onto its site (one ``grid_sample``), match intensity, blend."""
        dev, k, r = images.device, len(boxes), self.crops.canvases.shape[-1]
        p = {name: t.to(dev) for name, t in params.items()}
        b = boxes.to(dev).float().reshape(-1, 4)
        h, w = b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]
        side = torch.maximum(h, w)
        # patch coordinates run corner to corner over the site (paste_blend's convention); the canvas
        # spans the square of the site's larger side at scale 1, so neither is stretched
        t = torch.linspace(-1.0, 1.0, r, device=dev)
        v = (t[None, :, None] * ((h - 1) / side / p["scale"])[:, None, None]).expand(k, r, r)
        u = (t[None, None, :] * ((w - 1) / side / p["scale"])[:, None, None]).expand(k, r, r)
        cos = torch.tensor([1.0, 0.0, -1.0, 0.0], device=dev)[p["rot"]][:, None, None]
        sin = torch.tensor([0.0, 1.0, 0.0, -1.0], device=dev)[p["rot"]][:, None, None]
        u, v = cos * u - sin * v, sin * u + cos * v
        u = torch.where(p["flip"][:, None, None], -u, u)
        offset = p["shift"] + self.crops.centre.to(dev)[p["lesion"]]
        grid = torch.stack([u + offset[:, 0, None, None], v + offset[:, 1, None, None]], dim=-1)
        canvas = self.crops.canvases[p["lesion"]].float()
        warped = F.grid_sample(canvas, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        weight = warped[:, 1:2].clamp(0, 1)
        value = warped[:, :1] / weight.clamp(min=1e-6)  # the canvas is premultiplied by its content mask
        total = weight.sum((1, 2, 3)).clamp(min=1e-6)
        mean = (warped[:, :1].sum((1, 2, 3)) / total)[:, None, None, None]
        site = crop_sites(images, boxes, source, r).float()
        target = _site_mean(weight, site, crop_coverage(b, *images.shape[-2:], r), mean) \
            if self.match_intensity else mean
        lesion = ((value - mean) * p["gain"][:, None, None, None] + target).clamp(0, 1) * (weight > 0)
        paste = weight * warped[:, 2:].clamp(0, 1) if warped.shape[1] > 2 else weight  # shape="mask": the lesion
        blended = paste_blend(images[source], lesion.to(images.dtype), boxes, torch.arange(k, device=dev),
                              self.blend_n, weight=paste.to(images.dtype))
        return Made(blended, lesion, site)

    def provenance(self, params: dict[str, Any], j: int) -> dict[str, Any]:
        i = int(params["lesion"][j])
        return {"synthesizer": self.name, "blend_n": self.blend_n, "lesion_key": self.crops.keys[i],
                "lesion_box": [round(float(x), 2) for x in self.crops.boxes[i]], "flip": bool(params["flip"][j]),
                "rot90": int(params["rot"][j]), "scale": float(params["scale"][j]), "gain": float(params["gain"][j]),
                "shift": [float(x) for x in params["shift"][j]]}

    def describe(self) -> dict[str, Any]:
        return {"synthesizer": self.name, "lesions": len(self.crops), "canvas": int(self.crops.canvases.shape[-1]),
                "center": self.center, "flip": self.flip, "rot90": self.rot90, "scale": list(self.scale),
                "contrast": list(self.contrast), "match_intensity": self.match_intensity,
                "size_tolerance": math.exp(self.log_tol), "blend_n": self.blend_n, "resize": self.resize,
                "match": _describe(self.match), "avoid": _describe(self.avoid),
                "onto": self.onto, "shape": self.crops.shape, "unmasked": self.crops.unmasked}
