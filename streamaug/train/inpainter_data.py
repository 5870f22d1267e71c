"""The inpainter trainer's data: the real images with their lesion boxes (and normals), read once,
and the random pairs of a training step (:func:`draw_batch`; Pix2Pix-N's random boxes, :func:`random_boxes`)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from streamaug.data.select import KeySelect, LabelSelect
from streamaug.data.stream import XRayShards
from streamaug.models.pix2pix import box_mask
from streamaug.train.patches import data_fingerprint


@dataclass
class Pairs:
    """What the training pairs are cut from, at the model's image size ``S``.

    Attributes:
        images: ``(N, 1, S, S)`` float16 images in ``[0, 1]``.
        boxes: ``(P, 4)`` float32 real lesion boxes ``x0 y0 x1 y1`` in those pixels.
        owner: ``(P,)`` long, the image of each box.
        normals: ``(M,)`` long, the normal images (empty without ``--normals``).
        keys: the key of each image.
        info: counts and the data fingerprint.
    """

    images: torch.Tensor
    boxes: torch.Tensor
    owner: torch.Tensor
    normals: torch.Tensor
    keys: list[str]
    info: dict[str, Any]


def read_pairs(shards: str | Sequence[str], *, size: int, split: str | None = None, region: str | None = None,
               normals: bool = False, positives: Sequence[str] | None = None, progress: bool = True) -> Pairs:
    """Read the positives with boxes (only those in ``positives`` when given; and with ``normals`` the
    normal images) once, resized to ``size``.

    Raises:
        ValueError: no lesion box, or ``normals`` without a normal image.
    """
    from tqdm.auto import tqdm

    select = KeySelect(region, None if positives is None else frozenset(positives)) \
        if region is not None or positives is not None else None
    stream = XRayShards(shards, split=split, shuffle=False, resize=size, equalize="none",
                        select=select if normals else LabelSelect(1, select))
    images, keys, boxes, owner, normal = [], [], [], [], []
    for x in tqdm(stream, desc="reading images", disable=None if progress else True, unit="img"):
        b = x["boxes"].reshape(-1, 4).clamp(0, size)
        b = b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
        if x["label"] == 1 and len(b):
            boxes.append(b)
            owner += [len(images)] * len(b)
        elif x["label"] == 0 and normals:
            normal.append(len(images))
        else:
            continue
        images.append(x["image"].half())
        keys.append(str(x["key"]))
    if not boxes or (normals and not normal):
        raise ValueError(f"no training pairs: {len(owner)} lesion boxes and {len(normal)} normal images in "
                         f"{shards} (split={split!r}, region={region!r}); inpainting needs positives with boxes, "
                         "and --normals needs normal images")
    info = {"positive_images": len(images) - len(normal), "boxes": len(owner), "normal_images": len(normal),
            "image_size": size, "data_sha256": data_fingerprint(stream.shards)}
    return Pairs(torch.stack(images), torch.cat(boxes).float(), torch.tensor(owner),
                 torch.tensor(normal, dtype=torch.long), keys, info)


def random_boxes(sizes: torch.Tensor, height: int, width: int, n: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` boxes of real sizes at uniform places inside a ``height x width`` image (Pix2Pix-N's masks).

    Each box takes the ``(w, h)`` of a real box drawn uniformly (so the sizes follow the real boxes'
    distribution; one larger than the image is cut to it) and a top-left corner uniform over the
    places that keep it inside.

    Args:
        sizes: ``(P, 2)`` real box widths and heights in pixels.
        height, width: the image size.
        n: boxes to draw.
        generator: the random source.

    Returns:
        ``(n, 4)`` float32 boxes ``x0 y0 x1 y1`` with ``0 <= x0 < x1 <= width``, ``0 <= y0 < y1 <= height``.

    Examples:
        >>> b = random_boxes(torch.tensor([[4.0, 2.0]]), 10, 20, 3, torch.Generator().manual_seed(0))
        >>> inside = bool((b >= 0).all() and (b[:, 2] <= 20).all() and (b[:, 3] <= 10).all())
        >>> (b[:, 2:] - b[:, :2]).round().tolist(), inside
        ([[4.0, 2.0], [4.0, 2.0], [4.0, 2.0]], True)
    """
    limit = torch.tensor([float(width), float(height)])
    wh = torch.minimum(sizes.float()[torch.randint(len(sizes), (n,), generator=generator)], limit)
    corner = torch.rand(n, 2, generator=generator) * (limit - wh)
    return torch.cat([corner, corner + wh], 1)


def draw_batch(pairs: Pairs, n: int, generator: torch.Generator,
               flip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random pairs: ``y`` ``(n, 1, S, S)`` float32 and masks ``(n, 1, S, S)`` bool.

    A pair is drawn uniformly among the real boxes and (with normals) the normal images; a normal
    gets a :func:`random_boxes` box; ``flip`` mirrors half of them left-right, box and all.
    """
    p, s = len(pairs.boxes), pairs.images.shape[-1]
    pick = torch.randint(p + len(pairs.normals), (n,), generator=generator)
    image, boxes = pairs.owner[pick.clamp(max=p - 1)], pairs.boxes[pick.clamp(max=p - 1)]
    if len(pairs.normals):
        normal = pick >= p
        image = torch.where(normal, pairs.normals[(pick - p).clamp(min=0)], image)
        sizes = pairs.boxes[:, 2:] - pairs.boxes[:, :2]
        boxes = torch.where(normal[:, None], random_boxes(sizes, s, s, n, generator), boxes)
    y = pairs.images[image].float()
    if flip:
        mirror = torch.rand(n, generator=generator) < 0.5
        y = torch.where(mirror[:, None, None, None], y.flip(-1), y)
        mirrored = torch.stack([s - boxes[:, 2], boxes[:, 1], s - boxes[:, 0], boxes[:, 3]], 1)
        boxes = torch.where(mirror[:, None], mirrored, boxes)
    return y, box_mask(boxes, s, s)
