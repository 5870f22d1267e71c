"""streamaug: on-the-fly lesion synthesis for X-ray classifier training.

Public names are imported lazily so ``import streamaug`` stays fast and optional parts
(numba kernels, kornia) load only when used.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "read_xray": "streamaug.io.readers",
    "decode_xray": "streamaug.io.readers",
    "XRayDecodeError": "streamaug.io.readers",
    "ZarrXRays": "streamaug.io.zarr_store",
    "write_zarr": "streamaug.io.zarr_store",
    "XRayShards": "streamaug.stream",
    "collate_xray": "streamaug.collate",
    "SiteProposer": "streamaug.sites",
    "LesionBoxBank": "streamaug.lesion_bank",
    "load_translator": "streamaug.synth.checkpoint",
    "SynthesisStage": "streamaug.synth.stage",
    "LesionStream": "streamaug.synth.lesion_stream",
    "NoAcceptedCandidates": "streamaug.synth.lesion_stream",
    "PseudoLabel": "streamaug.filters.pseudo_label",
    "to_int_label": "streamaug.labels",
    "make_phantom": "streamaug.phantom",
    "write_phantom_dataset": "streamaug.phantom",
    "BoneContent": "streamaug.filters.intensity",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'streamaug' has no attribute {name!r}")
