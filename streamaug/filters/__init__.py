"""Filters applied to synthetic candidates: bone content, pseudo-labels (threshold or ranked)."""
from streamaug.filters.intensity import BoneContent, box_means
from streamaug.filters.pseudo_label import PseudoLabel
from streamaug.filters.rank import select_top
from streamaug.filters.stats import AcceptanceStats

__all__ = ["AcceptanceStats", "BoneContent", "PseudoLabel", "box_means", "select_top"]
