"""What a synthesizer makes its positives from: the label of its source images, and their sites.

Most synthesizers put a lesion into a normal image (label 0; the workers' site proposer picks the
sites). One that declares ``source_label = 1`` makes a new positive from a real one, at that
positive's own lesion boxes: :class:`streamaug.synth.Inpaint` keeps the box and repaints around it,
``CopyPaste(onto="lesions")`` pastes another real lesion over it. Such a synthesizer may say how
far around the box its site reaches with a ``source_sites`` attribute (a :class:`LesionBoxSites`);
:func:`source_sites` reads it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from streamaug.synth.base import Synthesizer
from streamaug.synth.ops import clip_sites


def _parts(synthesizer: Synthesizer) -> list[Synthesizer]:
    return list(getattr(synthesizer, "synthesizers", [synthesizer]))


def source_label(synthesizer: Synthesizer) -> int:
    """The label of the images ``synthesizer`` makes positives from: its ``source_label`` attribute,
    0 (normals) when it has none. The parts of a :class:`~streamaug.synth.Mix` must agree.

    Raises:
        ValueError: a :class:`~streamaug.synth.Mix` of synthesizers with different source labels.
    """
    labels = {int(getattr(s, "source_label", 0)) for s in _parts(synthesizer)}
    if len(labels) != 1:
        raise ValueError(f"the synthesizers of a Mix take sources of different labels ({sorted(labels)}): mix "
                         "only those that make positives from the same images (e.g. Translate with CopyPaste)")
    return labels.pop()


def keeps_site(synthesizer: Synthesizer) -> bool:
    """Whether ``synthesizer`` (or a part of a :class:`~streamaug.synth.Mix`) keeps its site as the
    source had it and changes only the rest (its ``keeps_site`` attribute: :class:`~streamaug.synth.Inpaint`),
    so that a filter of the blended site has nothing to score."""
    return any(getattr(s, "keeps_site", False) for s in _parts(synthesizer))


@dataclass(frozen=True)
class LesionBoxSites:
    """``sample["sites"]``: the sample's own lesion boxes as sites (the sites of positive sources;
    picklable, so DataLoader workers can run it).

    Each box becomes the square of side ``margin * max(w, h)`` centred on it (``margin=1``: the box
    itself), widened to whole pixels. With ``clip`` it is clipped to the image (a box at the border
    gives a clipped, non-square site, no longer centred on the box); without, it stays the square and
    may reach past the border (what :class:`streamaug.synth.CopyPaste` needs to keep its paste and
    mask centred on the lesion it covers; :func:`streamaug.synth.crop_sites` and
    :func:`streamaug.synth.paste_blend` handle the part outside). A site with no pixel in the image
    is dropped.

    Args:
        margin: the site's side as a multiple of the box's larger side (>= 1 keeps the whole box).
        clip: clip the sites to the image.

    Examples:
        >>> sample = {"image": torch.zeros(1, 10, 10), "boxes": torch.tensor([[1.5, 2., 4.2, 12.]])}
        >>> LesionBoxSites()(dict(sample))["sites"].tolist()
        [[1, 2, 5, 10]]
        >>> sample["boxes"] = torch.tensor([[4., 4., 6., 5.]])
        >>> LesionBoxSites(margin=2.0)(dict(sample))["sites"].tolist()
        [[3, 2, 7, 7]]
        >>> sample["boxes"] = torch.tensor([[0., 4., 2., 6.]])
        >>> [LesionBoxSites(2.0, clip=c)(dict(sample))["sites"].tolist() for c in (True, False)]
        [[[0, 3, 3, 7]], [[-1, 3, 3, 7]]]
    """

    margin: float = 1.0
    clip: bool = True

    def __post_init__(self) -> None:
        if self.margin < 1:
            raise ValueError(f"margin must be >= 1 (the site holds the whole lesion box), got {self.margin}")

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        _, h, w = sample["image"].shape
        b = torch.as_tensor(sample["boxes"], dtype=torch.float64).reshape(-1, 4)
        if self.margin != 1:
            centre, half = (b[:, :2] + b[:, 2:]) / 2, (b[:, 2:] - b[:, :2]).amax(1, keepdim=True) * self.margin / 2
            b = torch.cat([centre - half, centre + half], 1)
        sites = torch.cat([b[:, :2].floor(), b[:, 2:].ceil()], 1).long()
        inside = clip_sites(sites, h, w)
        keep = (inside[:, 2] > inside[:, 0]) & (inside[:, 3] > inside[:, 1])
        sample["sites"] = (inside if self.clip else sites)[keep]
        return sample


lesion_box_sites = LesionBoxSites()
"""The lesion boxes themselves, widened to whole pixels (:class:`LesionBoxSites` with ``margin=1``)."""


def source_sites(synthesizer: Synthesizer) -> LesionBoxSites:
    """The site maker for the positive sources of ``synthesizer`` (``source_label == 1``): its
    ``source_sites`` attribute, :data:`lesion_box_sites` when it has none. The parts of a
    :class:`~streamaug.synth.Mix` must agree.

    Raises:
        ValueError: the parts of a Mix want different sites.
    """
    makers = {getattr(s, "source_sites", lesion_box_sites) for s in _parts(synthesizer)}
    if len(makers) != 1:
        raise ValueError(f"the synthesizers of a Mix want different sites around the lesion boxes ({makers}): "
                         "mix only synthesizers with the same source_sites")
    return makers.pop()
