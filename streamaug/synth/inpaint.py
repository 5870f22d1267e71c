"""``Inpaint``: new context around a real lesion (Xing et al. 2019, §2): a positive becomes a new positive.

Unlike :class:`~streamaug.synth.Translate` and :class:`~streamaug.synth.CopyPaste`, which put a lesion
into a normal image, ``Inpaint`` keeps a real positive's lesion box and generates everything around
it with a pix2pix inpainter (:mod:`streamaug.models.pix2pix`, trained by ``python -m
streamaug.train inpainter``). Its sources are therefore positives: it sets ``source_label = 1``, and
:class:`~streamaug.synth.LesionStream` / :class:`~streamaug.synth.SynthesisStage` then read label-1
images and use their own lesion boxes as the sites (:func:`streamaug.synth.stage.lesion_box_sites`).

The inpainter works at its own ``S x S``: the source is resized to it (as the trainer's images
were), the box scaled with it, and the composite at ``S`` (the resized source inside the box's whole
pixels, the generated context outside, as the trainer's losses see it) resized back to the stream's
``H x W``. The final composite is made at the stream's resolution, so the box's pixels are the
source's, bit for bit, and no output of the generator from inside the box (which no loss trains)
reaches the pixels around it.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from streamaug.models.pix2pix import box_mask, composite
from streamaug.synth.base import Made, Synthesizer


class Inpaint(Synthesizer):
    """Keep each site (a real lesion box) of a positive, generate its surroundings.

    Random parameters: one dropout seed per candidate (pix2pix's test-time dropout, its only noise),
    so each candidate gets its own context and can be made again from its seed.

    Args:
        inpainter: a module with ``image_size`` and ``generate(images, masks, seeds)`` (e.g.
            :class:`~streamaug.models.pix2pix.Pix2Pix`), or a checkpoint path for
            :func:`streamaug.models.checkpoint.load_inpainter`.
        noise: draw a dropout seed per candidate; False: no dropout, one fixed context per lesion.
        dtype: autocast dtype of the inpainter on CUDA (e.g. ``torch.bfloat16``); None: float32.
        device: where the inpainter runs (the images' device must match).

    Examples:
        >>> from streamaug.models.pix2pix import Pix2Pix, pix2pix_preset
        >>> synth = Inpaint(Pix2Pix(pix2pix_preset("tiny", image_size=32, depth=4)))
        >>> images, boxes = torch.rand(2, 1, 48, 48), torch.tensor([[10, 12, 26, 30]])
        >>> params = synth.generate_parameters(images, boxes, torch.tensor([1]), torch.Generator().manual_seed(0))
        >>> made = synth.apply(images, boxes, torch.tensor([1]), params)
        >>> made.images.shape, torch.equal(made.images[0, :, 12:30, 10:26], images[1, :, 12:30, 10:26])
        (torch.Size([1, 1, 48, 48]), True)
        >>> sorted(synth.provenance(params, 0))
        ['blend_n', 'inpainter', 'noise_seed', 'synthesizer']
    """

    name = "inpaint"
    source_label = 1
    keeps_site = True  # the site (a real lesion box) is the source's, bit for bit: a site filter has nothing to score
    blend_n = None  # no blending: the box is kept, the rest generated

    def __init__(self, inpainter: torch.nn.Module | str | os.PathLike, *, noise: bool = True,
                 dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> None:
        self.noise, self.dtype = bool(noise), dtype
        if isinstance(inpainter, (str, os.PathLike)):  # a checkpoint: its id names the weights in provenance
            from streamaug.models.checkpoint import load_inpainter

            inpainter = load_inpainter(inpainter, device=device)
        self.inpainter, self.image_size = inpainter.eval(), int(inpainter.image_size)
        self.id = str(getattr(inpainter, "id", None) or type(inpainter).__name__)
        self.to(device)

    def to(self, device: str | torch.device) -> Inpaint:
        self.device = torch.device(device)
        self.inpainter.to(self.device)
        return self

    def generate_parameters(self, images: torch.Tensor, boxes: torch.Tensor, source: torch.Tensor,
                            generator: torch.Generator | None = None,
                            meta: Sequence[Mapping[str, Any] | None] | None = None) -> dict[str, Any]:
        """``seed`` (K,) int64 dropout seeds (none without ``noise``)."""
        if not self.noise:
            return {}
        return {"seed": torch.randint(2**62, (len(boxes),), generator=generator)}

    @torch.no_grad()
    def apply(self, images: torch.Tensor, boxes: torch.Tensor, source: torch.Tensor,
              params: dict[str, Any]) -> Made:
        """Inpaint around each box at the inpainter's size, composite at the images' size.

        Args:
            images: ``(B, C, H, W)`` images in ``[0, 1]`` (the positives).
            boxes: ``(K, 4)`` kept boxes ``x0 y0 x1 y1`` in image pixels (end-exclusive).
            source: ``(K,)`` image of each box.
            params: from :meth:`generate_parameters`.

        Returns:
            :class:`Made` with ``images`` ``(K, C, H, W)``: ``images[source]`` inside each box,
            generated outside; no ``translated`` or ``patches``.
        """
        y = images[source.to(images.device)]
        (h, w), s = y.shape[-2:], self.image_size
        if not len(y):
            return Made(y, None, None)
        b = boxes.to(images.device).reshape(-1, 4).float()
        small = y.float() if (h, w) == (s, s) else F.interpolate(
            y.float(), size=(s, s), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
        scale = torch.tensor([s / w, s / h, s / w, s / h], device=b.device)
        use_amp = self.dtype is not None and images.device.type == "cuda"
        small_mask = box_mask(b * scale, s, s)
        with torch.autocast(images.device.type, dtype=self.dtype or torch.float32, enabled=use_amp):
            generated = self.inpainter.generate(small, small_mask, params.get("seed"))
        # The composite at S first, as the trainer's losses see it: G's output inside its mask is never
        # trained, and resizing it up would bleed it into a band around the box.
        generated = composite(small, generated.float().clamp(0, 1), small_mask)
        if (h, w) != (s, s):
            generated = F.interpolate(generated, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
        return Made(composite(y, generated, box_mask(b, h, w)), None, None)

    def provenance(self, params: dict[str, Any], j: int) -> dict[str, Any]:
        seed = int(params["seed"][j]) if "seed" in params else None
        return {"synthesizer": self.name, "inpainter": self.id, "blend_n": self.blend_n, "noise_seed": seed}

    def describe(self) -> dict[str, Any]:
        return {"synthesizer": self.name, "inpainter": self.id, "image_size": self.image_size, "noise": self.noise}
