"""``collate_xray``: batch sample dicts whose boxes and sites differ in number."""
from __future__ import annotations

from typing import Any, Sequence

import torch

_STACKED = ("image", "mask")


def collate_xray(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples from :class:`streamaug.XRayShards` or :class:`streamaug.LesionStream`.

    ``image`` (and ``mask`` when every sample has one) are stacked to ``(B, 1, H, W)``;
    ``label`` becomes a ``(B,)`` long tensor and ``synthetic`` a ``(B,)`` bool tensor;
    everything else (``key``, ``boxes``, ``sites``, ``meta``, ``provenance``) stays a list.

    Raises:
        ValueError: when images differ in size (pass ``resize=`` to the stream).
    """
    if not samples:
        raise ValueError("collate_xray got an empty batch")
    sizes = {tuple(s["image"].shape) for s in samples}
    if len(sizes) > 1:
        raise ValueError(f"images in one batch differ in size {sorted(sizes)}; pass resize=(H, W) to the stream")
    batch: dict[str, Any] = {}
    for name in samples[0]:
        values = [s.get(name) for s in samples]
        if name in _STACKED:
            if all(v is not None for v in values):
                batch[name] = torch.stack(values)
        elif name == "label":
            batch[name] = torch.tensor(values, dtype=torch.long)
        elif name == "synthetic":
            batch[name] = torch.tensor([bool(v) for v in values])
        else:
            batch[name] = values
    if "synthetic" not in batch and any("synthetic" in s for s in samples):
        batch["synthetic"] = torch.tensor([bool(s.get("synthetic", False)) for s in samples])
    return batch
