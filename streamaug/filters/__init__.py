"""Filters applied to synthetic candidates: bone content and pseudo-labels."""
from .intensity import BoneContent
from .pseudo_label import PseudoLabel
from .stats import AcceptanceStats

__all__ = ["AcceptanceStats", "BoneContent", "PseudoLabel"]
