"""Sites of the realism report's synthetic positives: a bank without the real side, and the site factor.

The report holds synthetic positives against real-side positives. Normals' sites are matched
against a :class:`~streamaug.sites.LesionBoxBank`; one that holds the real side's own lesion boxes
places synthetic lesions at copies of them (the real side's geometry handed to the synthetic side),
so :func:`sites_without` drops those records first (:meth:`~streamaug.sites.LesionBoxBank.without`).
:func:`site_margin` is how many times a lesion's side a synthetic sample's site is (what the sample
grid divides by to zoom like on a real lesion).
"""
from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - the site and synthesis modules load when a report is made
    from streamaug.synth.base import Synthesizer

__all__ = ["site_margin", "sites_without"]


def sites_without(sites: Any, keys: Collection[str]) -> tuple[Any, int]:
    """``(proposer, records dropped)``: a :class:`~streamaug.sites.SiteProposer` like ``sites`` (same
    ``s``, ``n``, thresholds, seed and epoch) whose bank lacks the records of ``keys``; ``sites``
    itself (and 0) when it has no bank (None, or another callable)."""
    from streamaug.sites import SiteProposer

    if not isinstance(sites, SiteProposer) or sites.bank is None:
        return sites, 0
    bank = sites.bank.without(keys)
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
