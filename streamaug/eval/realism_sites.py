"""Sites of the realism report's synthetic positives: a bank without the real side, and the site factor.

The report holds synthetic positives against real-side positives. Normals' sites are matched
against a :class:`~streamaug.sites.LesionBoxBank`; one that holds the real side's own lesion boxes
places synthetic lesions at copies of them (the real side's geometry handed to the synthetic side),
so :func:`sites_without` drops those records first. :func:`site_margin` is how many times a lesion's
side a synthetic sample's site is (what the sample grid divides by to zoom like on a real lesion).
"""
from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - the site and synthesis modules load when a report is made
    from streamaug.sites import LesionBoxBank
    from streamaug.synth.base import Synthesizer

__all__ = ["bank_without", "site_margin", "sites_without"]


def bank_without(bank: LesionBoxBank, keys: Collection[str]) -> LesionBoxBank:
    """``bank`` less the records of images ``keys`` (the other records, boxes and order unchanged).

    Examples:
        >>> from streamaug.sites import LesionBoxBank
        >>> bank = LesionBoxBank.from_records([{"key": "a", "boxes": [[0, 0, 4, 4]]},
        ...                                    {"key": "b", "boxes": [[1, 1, 2, 2], [3, 3, 5, 5]]}])
        >>> kept = bank_without(bank, {"a"})
        >>> kept.keys, kept.boxes.tolist(), kept.offsets.tolist()
        (['b'], [[1.0, 1.0, 2.0, 2.0], [3.0, 3.0, 5.0, 5.0]], [0, 2])
    """
    from streamaug.sites import LesionBoxBank

    keys = {str(k) for k in keys}
    keep = [i for i, k in enumerate(bank.keys) if k not in keys]
    boxes = [bank.boxes[bank.offsets[i]:bank.offsets[i + 1]] for i in keep]
    return LesionBoxBank(keys=[bank.keys[i] for i in keep], regions=[bank.regions[i] for i in keep],
                         views=[bank.views[i] for i in keep], sizes=bank.sizes[keep].reshape(-1, 2),
                         boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4)),
                         offsets=np.r_[0, np.cumsum([len(b) for b in boxes], dtype=np.int64)])


def sites_without(sites: Any, keys: Collection[str]) -> tuple[Any, int]:
    """``(proposer, records dropped)``: a :class:`~streamaug.sites.SiteProposer` like ``sites`` (same
    ``s``, ``n``, thresholds, seed and epoch) whose bank lacks the records of ``keys``; ``sites``
    itself (and 0) when it has no bank (None, or another callable)."""
    from streamaug.sites import SiteProposer

    if not isinstance(sites, SiteProposer) or sites.bank is None:
        return sites, 0
    bank = bank_without(sites.bank, keys)
    out = SiteProposer(bank, s=sites.s, n=sites.n, min_intensity=sites.min_intensity, max_sites=sites.max_sites,
                       min_size=sites.min_size, seed=sites.seed)
    out.set_epoch(sites.epoch)
    return out, len(sites.bank) - len(bank)


def site_margin(synthesizer: Synthesizer | None, sites: Any) -> float:
    """The side of a synthetic sample's site per side of its lesion: 1 without a synthesizer (the
    other side is real positives, their boxes lesion boxes); for one that makes positives from real
    ones, its sites' ``margin`` (a lesion swap's crop margin, 1 for an inpainter); else the site
    proposer's ``s`` (1 when it has none)."""
    from streamaug.synth.sources import source_label, source_sites

    if synthesizer is None:
        return 1.0
    if source_label(synthesizer) == 1:
        return float(getattr(source_sites(synthesizer), "margin", 1.0))
    return float(getattr(sites, "s", 1.0))
