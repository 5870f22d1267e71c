"""streamaug: on-the-fly lesion synthesis for X-ray classifier training.

Public names are imported lazily so ``import streamaug`` stays fast and optional parts
(numba kernels, kornia) load only when used; the ``TYPE_CHECKING`` imports below let editors and
type checkers see them.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover - for editors and type checkers only
    from streamaug.data.collate import collate_xray, unbatch
    from streamaug.data.oversample import oversample, oversample_batches, oversample_gap
    from streamaug.data.stream import XRayShards
    from streamaug.data.zarr_source import ZarrXRays, write_zarr
    from streamaug.filters.intensity import BoneContent
    from streamaug.filters.pseudo_label import PseudoLabel
    from streamaug.io.errors import MissingCodecError, SampleError, ShardError, XRayDecodeError
    from streamaug.io.labels import to_int_label
    from streamaug.io.readers import decode_xray, read_xray
    from streamaug.models.checkpoint import load_inpainter, load_translator
    from streamaug.phantom import make_phantom, write_phantom_dataset
    from streamaug.sites.bank import LesionBoxBank
    from streamaug.sites.proposer import SiteProposer
    from streamaug.synth.copy_paste import CopyPaste
    from streamaug.synth.inpaint import Inpaint
    from streamaug.synth.lesion_stream import LesionStream, NoAcceptedCandidates
    from streamaug.synth.mix import Mix
    from streamaug.synth.ops import cosine_alpha
    from streamaug.synth.stage import SynthesisStage
    from streamaug.synth.translate import Translate

_PUBLIC = {
    "read_xray": "streamaug.io.readers",
    "decode_xray": "streamaug.io.readers",
    "XRayDecodeError": "streamaug.io.errors",
    "MissingCodecError": "streamaug.io.errors",
    "ShardError": "streamaug.io.errors",
    "SampleError": "streamaug.io.errors",
    "to_int_label": "streamaug.io.labels",
    "ZarrXRays": "streamaug.data.zarr_source",
    "write_zarr": "streamaug.data.zarr_source",
    "XRayShards": "streamaug.data.stream",
    "collate_xray": "streamaug.data.collate",
    "unbatch": "streamaug.data.collate",
    "oversample": "streamaug.data.oversample",
    "oversample_batches": "streamaug.data.oversample",
    "oversample_gap": "streamaug.data.oversample",
    "SiteProposer": "streamaug.sites.proposer",
    "LesionBoxBank": "streamaug.sites.bank",
    "load_translator": "streamaug.models.checkpoint",
    "load_inpainter": "streamaug.models.checkpoint",
    "cosine_alpha": "streamaug.synth.ops",
    "SynthesisStage": "streamaug.synth.stage",
    "Translate": "streamaug.synth.translate",
    "CopyPaste": "streamaug.synth.copy_paste",
    "Mix": "streamaug.synth.mix",
    "Inpaint": "streamaug.synth.inpaint",
    "LesionStream": "streamaug.synth.lesion_stream",
    "NoAcceptedCandidates": "streamaug.synth.lesion_stream",
    "PseudoLabel": "streamaug.filters.pseudo_label",
    "BoneContent": "streamaug.filters.intensity",
    "make_phantom": "streamaug.phantom",
    "write_phantom_dataset": "streamaug.phantom",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'streamaug' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
