"""``LesionCrops``: the bank of real lesions that :class:`streamaug.synth.CopyPaste` pastes.

A lesion crop is a square of side ``c = margin * max(box w, box h)`` centred on a real positive's
lesion box, kept in a canvas of ``size x size`` pixels with a second channel saying where the source
image had content: a crop that ran past its image's border stays a clipped square (weight 0 there),
never a stretched one. With ``shape="mask"`` a third channel holds the lesion's own mask, widened
and feathered (:func:`lesion_alpha`), so only the lesion is pasted.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from streamaug.data.select import LabelSelect

__all__ = ["LesionCrops", "lesion_alpha"]


@dataclass
class LesionCrops:
    """Square crops centred on real lesions, at one canvas size.

    Attributes:
        canvases: ``(N, 2, R, R)`` float16: the image crop, and where it had content (1) or not (0);
            ``(N, 3, R, R)`` with ``shape="mask"``: and the feathered lesion mask in ``[0, 1]``.
        keys: the source image key of each crop.
        boxes: ``(N, 4)`` float32 lesion box in its image (pixels of the stream's image size).
        sides: ``(N,)`` float32 crop side ``c`` in those pixels.
        extent: ``(N,)`` float32 the lesion's half-size in canvas units (``max(w, h) / c``).
        centre: ``(N, 2)`` float32 the lesion centre in canvas units (0 up to rounding).
        metas: what the shards say of each crop's source image (its ``meta``; ``{}`` when it had none).
        shape: ``"box"`` (the whole crop is pasted) or ``"mask"`` (the lesion by its mask).
        unmasked: with ``shape="mask"``, crops whose image had no mask pixel in the box (their mask
            is the box itself, feathered); 0 otherwise.
    """

    canvases: torch.Tensor
    keys: list[str]
    boxes: torch.Tensor
    sides: torch.Tensor
    extent: torch.Tensor
    centre: torch.Tensor
    metas: list[dict[str, Any]] = field(default_factory=list)
    shape: str = "box"
    unmasked: int = 0

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def from_samples(cls, samples: Iterable[dict[str, Any]], *, margin: float = 2.0, size: int = 64,
                     max_lesions: int | None = None, shape: Literal["box", "mask"] = "box",
                     feather: float = 0.15) -> LesionCrops:
        """Crop every box of every label-1 sample (``image`` ``(1, H, W)``, ``boxes`` ``(k, 4)``, ``key``,
        optional ``meta``; ``mask`` ``(1, H, W)`` for ``shape="mask"``, see :func:`lesion_alpha`)."""
        if margin < 1:
            raise ValueError(f"margin must be >= 1 (the crop holds the whole lesion), got {margin}")
        if shape not in ("box", "mask"):
            raise ValueError(f"shape must be 'box' or 'mask', got {shape!r}")
        canvases, keys, boxes, sides, extent, centre, metas = [], [], [], [], [], [], []
        unmasked = 0
        for sample in samples:
            if int(sample.get("label", 0)) != 1:
                continue
            image = sample["image"].float()
            height, width = image.shape[-2:]
            content = torch.cat([image.reshape(1, height, width), torch.ones(1, height, width)])
            for x0, y0, x1, y1 in torch.as_tensor(sample["boxes"], dtype=torch.float32).reshape(-1, 4).tolist():
                w, h = x1 - x0, y1 - y0
                if w <= 0 or h <= 0 or (max_lesions is not None and len(keys) >= max_lesions):
                    continue
                c = max(2, round(margin * max(w, h)))
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                xs, ys = round(cx - c / 2), round(cy - c / 2)
                lx0, ly0, lx1, ly1 = max(xs, 0), max(ys, 0), min(xs + c, width), min(ys + c, height)
                if lx1 <= lx0 or ly1 <= ly0:
                    continue
                if shape == "mask":  # only for boxes that are cropped
                    mask = sample.get("mask")
                    alpha = None if mask is None else lesion_alpha(mask, (x0, y0, x1, y1), (height, width), feather)
                    unmasked += int(alpha is None)
                    if alpha is None:  # no mask, or no mask pixel in the box: the box itself, feathered
                        alpha = lesion_alpha(None, (x0, y0, x1, y1), (height, width), feather)
                    content = torch.cat([content[:2], alpha])
                canvas = torch.zeros(len(content), c, c)
                canvas[:, ly0 - ys:ly1 - ys, lx0 - xs:lx1 - xs] = content[:, ly0:ly1, lx0:lx1]
                canvases.append(F.interpolate(canvas[None], size=(size, size), mode="bilinear", antialias=True,
                                              align_corners=False)[0].half())
                keys.append(str(sample["key"]))
                boxes.append([x0, y0, x1, y1])
                sides.append(float(c))
                extent.append(max(w, h) / c)
                centre.append([(cx - (xs + c / 2)) / (c / 2), (cy - (ys + c / 2)) / (c / 2)])
                metas.append(dict(sample.get("meta") or {}))
        if not keys:
            raise ValueError("no lesion box found: CopyPaste needs label-1 samples with boxes")
        return cls(torch.stack(canvases), keys, torch.tensor(boxes), torch.tensor(sides), torch.tensor(extent),
                   torch.tensor(centre), metas, shape, unmasked)

    @classmethod
    def from_shards(cls, urls: str | Sequence[str], *, split: str | None = None,
                    select: Callable[[str, dict], bool] | None = None, resize: int | tuple[int, int] | None = None,
                    margin: float = 2.0, size: int = 64, max_lesions: int | None = None,
                    on_error: str = "raise", shape: Literal["box", "mask"] = "box",
                    feather: float = 0.15) -> LesionCrops:
        """Read the lesion images of packed shards once (``select`` and label 1 decided before decoding)."""
        from streamaug.data.stream import XRayShards

        shards = XRayShards(urls, split=split, shuffle=False, resize=resize, select=LabelSelect(1, select),
                            equalize="none", distributed=False, on_error=on_error)
        return cls.from_samples(shards, margin=margin, size=size, max_lesions=max_lesions, shape=shape,
                                feather=feather)

    def to(self, device: str | torch.device) -> LesionCrops:
        self.canvases = self.canvases.to(device)
        return self


def lesion_alpha(mask: torch.Tensor | None, box: Sequence[float], size: tuple[int, int],
                 feather: float = 0.15) -> torch.Tensor | None:
    """The paste weight of one lesion: its mask pixels inside ``box``, widened and feathered.

    The mask (``(1, H, W)``, values in {0, 1}) is cut to the box (another lesion of the image stays
    out), dilated by ``r = feather * max(w, h)`` pixels (at least 1) and smoothed by a Gaussian of
    sigma ``r / 2`` (:func:`kornia.filters.gaussian_blur2d`), so the paste fades into the site over a
    rim about ``r`` wide. ``mask=None`` gives the box itself, feathered the same way.

    Returns:
        ``(1, H, W)`` float in ``[0, 1]``, or None when the mask has no pixel in the box.

    Examples:
        >>> m = torch.zeros(1, 32, 32); m[:, 10:20, 12:18] = 1
        >>> a = lesion_alpha(m, (12, 10, 18, 20), (32, 32))
        >>> bool(a[0, 15, 15] > 0.9), float(a[0, 0, 0]), bool(a[0, 15, 19] > 0)
        (True, 0.0, True)
        >>> lesion_alpha(m, (0, 0, 5, 5), (32, 32)) is None
        True
    """
    from kornia.filters import gaussian_blur2d

    height, width = size
    x0, y0, x1, y1 = (int(math.floor(box[0])), int(math.floor(box[1])), int(math.ceil(box[2])),
                      int(math.ceil(box[3])))
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    inside = torch.zeros(1, 1, height, width)
    if mask is None:
        inside[..., y0:y1, x0:x1] = 1.0
    else:
        inside[..., y0:y1, x0:x1] = (mask.reshape(1, 1, height, width)[..., y0:y1, x0:x1] > 0.5).float()
        if not bool(inside.any()):
            return None
    reach = max(1.0, feather * max(box[2] - box[0], box[3] - box[1]))
    grow = int(round(reach))
    if grow:
        inside = F.max_pool2d(inside, 2 * grow + 1, stride=1, padding=grow)
    k = 2 * int(math.ceil(2 * reach)) + 1
    return gaussian_blur2d(inside, (k, k), (reach / 2, reach / 2), border_type="constant")[0].clamp(0, 1)
