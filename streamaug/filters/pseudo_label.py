"""Pseudo-label filter: a baseline classifier keeps synthetic images it scores >= t (§3.4)."""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

from streamaug.filters.stats import AcceptanceStats


class PseudoLabel:
    """Score blended full images with a baseline classifier; keep those with ``score >= threshold``.

    Args:
        classifier: a torch module mapping ``(B, 1, H, W)`` to ``(B,)`` logits (or ``(B, 1)``), or
            the path of a checkpoint written by ``python -m streamaug.train classifier``.
        threshold: keep images whose probability is ``>= threshold`` (paper: chosen on validation;
            0.9 for the humerus).
        input_size: ``(H, W)`` the classifier expects; images are resized to it before scoring.
            Read from the checkpoint when a path is given; None scores at the given size.
        batch_size: images scored per forward pass.
        device: where the classifier runs (default: where it already is).

    ``stats`` holds the running acceptance counts (``generated``, ``accepted``, ``rate``).
    """

    def __init__(self, classifier: torch.nn.Module | str | os.PathLike, threshold: float = 0.9, *,
                 input_size: int | tuple[int, int] | None = None, batch_size: int = 64,
                 device: str | torch.device | None = None) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        self.source = "module"
        if isinstance(classifier, (str, os.PathLike)):
            from streamaug.models.drn import load_classifier

            loaded = load_classifier(classifier, device=device or "cpu")
            classifier, self.source = loaded.model, str(classifier)
            input_size = input_size or loaded.extra.get("input_size")
        elif device is not None:
            classifier = classifier.to(device)
        self.classifier = classifier.eval()
        self.threshold = float(threshold)
        self.input_size = (input_size, input_size) if isinstance(input_size, int) else (
            tuple(input_size) if input_size else None)
        self.batch_size = batch_size
        self.stats = AcceptanceStats()

    @property
    def device(self) -> torch.device:
        return next(self.classifier.parameters()).device

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` images in ``[0, 1]`` -> ``(B,)`` float32 lesion probabilities."""
        out = []
        for chunk in images.split(self.batch_size):
            x = chunk.to(self.device, torch.float32)
            if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
                x = F.interpolate(x, size=self.input_size, mode="bilinear", antialias=True, align_corners=False)
            out.append(torch.sigmoid(self.classifier(x).reshape(len(x), -1)[:, 0].float()))
        return torch.cat(out) if out else images.new_zeros(0, dtype=torch.float32)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(keep (B,) bool, scores (B,))``; updates :attr:`stats`."""
        scores = self.scores(images)
        keep = scores >= self.threshold
        self.stats.update(keep.numel(), int(keep.sum()))
        return keep, scores

    def describe(self) -> dict[str, Any]:
        return {"kind": "pseudo_label", "threshold": self.threshold, "source": self.source, **self.stats.as_dict()}
