"""Filters applied to synthetic candidates: bone content, pseudo-labels (threshold or ranked)."""
from streamaug.filters.intensity import BoneContent, site_means
from streamaug.filters.pseudo_label import PseudoLabel
from streamaug.filters.rank import select_top
from streamaug.filters.stats import AcceptanceStats

__all__ = ["AcceptanceStats", "BoneContent", "PseudoLabel", "select_top", "site_means"]
