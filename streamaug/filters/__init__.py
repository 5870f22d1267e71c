"""Filters applied to synthetic candidates: bone content and pseudo-labels."""
from streamaug.filters.intensity import BoneContent
from streamaug.filters.pseudo_label import PseudoLabel
from streamaug.filters.stats import AcceptanceStats

__all__ = ["AcceptanceStats", "BoneContent", "PseudoLabel"]
