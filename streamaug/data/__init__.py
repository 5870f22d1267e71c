"""Datasets: shard listing and the rank/worker plan, :class:`XRayShards`, the zarr source, batching.

Data path position: shards -> **split by rank/worker -> read -> decode -> (sites) -> batch**.
"""
from streamaug.data.collate import Ragged, collate_xray, unbatch
from streamaug.data.select import KeySelect, LabelSelect, rare_positive_select
from streamaug.data.stream import XRayShards

__all__ = ["KeySelect", "LabelSelect", "Ragged", "XRayShards", "collate_xray", "rare_positive_select", "unbatch"]
