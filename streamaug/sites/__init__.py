"""Patch sites (Gupta et al., MIDL 2019, §3.2): where lesion patches are cut and where synthetic ones go.

:class:`SiteProposer` adds ``sites`` to decoded samples on the CPU workers, matching normal images
against a :class:`LesionBoxBank`; :mod:`streamaug.sites.boxes` holds the box geometry.
"""
from streamaug.sites.bank import LesionBoxBank
from streamaug.sites.boxes import box_means, crop_means, direct_is_cheaper, integral_image, lesion_crops, parse_boxes
from streamaug.sites.proposer import SiteProposer, sample_seed

__all__ = ["LesionBoxBank", "SiteProposer", "box_means", "crop_means", "direct_is_cheaper", "integral_image",
           "lesion_crops", "parse_boxes", "sample_seed"]
