"""Score a classifier checkpoint on a split of shards: the one place that builds that stream.

Used by ``python -m streamaug.eval score``, the demo and the BTXRD experiment.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from streamaug.eval.stats import score_loader

__all__ = ["score_checkpoint"]


def score_checkpoint(checkpoint: str | os.PathLike, shards: str | os.PathLike | Sequence[str], *,
                     split: str | None, region: str | None = None, image_size: int | None = None,
                     device: str | torch.device = "cpu", workers: int = 0
                     ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Scores of a classifier checkpoint on every (region-selected) sample of ``shards``, in order.

    Args:
        checkpoint: a classifier checkpoint (``best.pt`` of ``streamaug-train classifier``).
        shards: shard spec for :class:`~streamaug.data.stream.XRayShards` (a packed folder with ``split``).
        split: split of a packed folder / manifest; None for plain shard lists.
        region: only images of this region; None: all.
        image_size: side images are resized to; None: the checkpoint's ``input_size``.
        device: where the model runs.
        workers: DataLoader worker processes.

    Returns:
        ``(y, scores, keys)``: labels ``(N,)`` int64 in {0, 1}, P(lesion) ``(N,)`` float64, ``N`` keys.
        Samples with an unknown label (-1) are left out.

    Raises:
        CheckpointError: ``checkpoint`` is not a whole-image classifier checkpoint (a patch scorer,
            ``on: site``, is refused; the message names the fix).
    """
    from streamaug.data.collate import collate_xray
    from streamaug.data.select import KeySelect
    from streamaug.data.stream import XRayShards
    from streamaug.models.checkpoint import CheckpointError, load_classifier

    loaded = load_classifier(checkpoint, device=device)
    if loaded.extra.get("on") == "site" or loaded.extra.get("kind") == "patch_scorer":
        raise CheckpointError(
            f"{checkpoint}: a patch scorer (on: site; `streamaug-train scorer`), trained on lesion-sized crops "
            f"at {loaded.extra.get('input_size')} px, not on whole images: scoring images with it would shrink "
            "each to a patch; give a whole-image classifier (best.pt of `streamaug-train classifier`)")
    size = image_size or loaded.extra.get("input_size")
    spec = os.fspath(shards) if isinstance(shards, (str, os.PathLike)) else list(shards)
    ds = XRayShards(spec, split=split, shuffle=False, resize=size, equalize="none",
                    select=KeySelect(region) if region else None, distributed=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=workers, collate_fn=collate_xray)
    y, s, keys = score_loader(loaded.model, loader, device)
    keep = y >= 0  # unknown labels (-1) are not scored against
    return y[keep], s[keep], [k for k, m in zip(keys, keep) if m]
