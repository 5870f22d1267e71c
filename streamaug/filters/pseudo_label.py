"""Pseudo-label filter (Gupta et al. §3.4): a baseline classifier scores the blended candidates.

Two modes:

* ``"threshold"`` (the paper): keep every candidate scoring ``>= threshold``. How many pass depends
  on the translator and the classifier; a strict ``t`` can pass nothing.
* ``"rank"``: keep the ``want`` best candidates of each call (``threshold``, if set, stays a floor).
  The synthesis stage scores a few candidates per wanted sample (several sites per image), so the
  asked number is delivered whatever the score scale.

What is scored (``on``):

* ``"image"`` (the paper): the whole blended image, by a full-image baseline classifier.
* ``"site"``: only the blended site, cropped by :class:`streamaug.SynthesisStage` and resized to
  ``input_size``, by a patch scorer (``python -m streamaug.train scorer``, whose checkpoint says
  ``on: site``): cheaper, and it looks only where synthesis changed the image.

:meth:`PseudoLabel.calibrate` sets the threshold as a quantile of validation real-positive scores
(the classifier's own scale), instead of a fixed number.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from streamaug.filters.rank import select_top
from streamaug.filters.stats import AcceptanceStats

MODES = ("threshold", "rank")
ON = ("image", "site")


class PseudoLabel:
    """Score blended candidates (whole images, or their sites) with a classifier; keep the lesion-like ones.

    Args:
        classifier: a torch module mapping ``(B, 1, H, W)`` to ``(B,)`` logits (or ``(B, 1)``), or
            the path of a checkpoint written by ``python -m streamaug.train classifier``.
        threshold: probability floor ``t`` (paper: chosen on validation; 0.9 for the humerus). None:
            no floor (rank mode only).
        mode: ``"threshold"`` (keep ``score >= t``) or ``"rank"`` (keep the ``want`` best of a call,
            at most one per group, all ``>= t`` when ``t`` is set). Default: ``"threshold"`` with a
            threshold, ``"rank"`` without.
        input_size: ``(H, W)`` the classifier expects; images are resized to it before scoring.
            Read from the checkpoint when a path is given; None scores at the given size.
        on: ``"image"`` (score the blended image) or ``"site"`` (the stage passes the blended sites,
            cropped to ``input_size``, which must then be known). Default: the checkpoint's ``on``,
            else ``"image"``.
        batch_size: images scored per forward pass.
        device: where the classifier runs (default: where it already is).

    ``stats`` holds the running counts (``generated``, ``accepted``, ``rate``,
    ``candidates_per_accepted``).

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(1))
        >>> f = PseudoLabel(net, threshold=None)  # rank mode, no floor
        >>> keep, scores = f(torch.rand(6, 1, 8, 8), want=2)
        >>> int(keep.sum()), f.mode
        (2, 'rank')
    """

    def __init__(self, classifier: torch.nn.Module | str | os.PathLike, threshold: float | None = 0.9, *,
                 mode: str | None = None, input_size: int | tuple[int, int] | None = None,
                 on: str | None = None, batch_size: int = 64, device: str | torch.device | None = None) -> None:
        mode = mode or ("threshold" if threshold is not None else "rank")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "threshold" and threshold is None:
            raise ValueError("mode='threshold' needs a threshold (or use mode='rank')")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        self.source = "module"
        if isinstance(classifier, (str, os.PathLike)):
            from streamaug.models.drn import load_classifier

            loaded = load_classifier(classifier, device=device or "cpu")
            classifier, self.source = loaded.model, str(classifier)
            input_size = input_size or loaded.extra.get("input_size")
            on = on or loaded.extra.get("on")
        elif device is not None:
            classifier = classifier.to(device)
        self.classifier = classifier.eval()
        self.threshold = None if threshold is None else float(threshold)
        self.mode = mode
        self.input_size = (input_size, input_size) if isinstance(input_size, int) else (
            tuple(input_size) if input_size else None)
        self.on = on or "image"
        if self.on not in ON:
            raise ValueError(f"on must be one of {ON}, got {self.on!r}")
        if self.on == "site" and (self.input_size is None or self.input_size[0] != self.input_size[1]):
            raise ValueError(f"on='site' needs a square input_size (the side sites are cropped to, e.g. the "
                             f"scorer's patch size), got {self.input_size}")
        self.batch_size = batch_size
        self.stats = AcceptanceStats()

    @property
    def device(self) -> torch.device:
        """Where the classifier's weights are (the CPU for a module without parameters)."""
        first = next(self.classifier.parameters(), None)  # a module without parameters runs on the CPU
        return first.device if first is not None else torch.device("cpu")

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

    def __call__(self, images: torch.Tensor, want: int | None = None,
                 groups: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Score ``images`` and choose.

        Args:
            images: ``(K, 1, H, W)`` candidates (with ``on="site"``: their blended sites).
            want: rank mode: how many to keep at most (None: all above the floor). Ignored in
                threshold mode.
            groups: rank mode: ``(K,)`` group of each candidate (e.g. its source image); at most one
                is kept per group.

        Returns:
            ``(keep (K,) bool, scores (K,))``; updates :attr:`stats`.
        """
        scores = self.scores(images)
        passed = scores >= self.threshold if self.threshold is not None else None
        if self.mode == "threshold":
            keep = passed
        else:
            keep = select_top(scores, want, eligible=passed, groups=groups)
        self.stats.update(keep.numel(), int(keep.sum()))
        return keep, scores

    def calibrate(self, val_positive_scores: torch.Tensor | Iterable[float], quantile: float = 0.5) -> float:
        """Set the threshold to the ``quantile`` of real positives' scores on validation data.

        A synthetic candidate then passes when the baseline finds it at least as lesion-like as that
        share of real lesions (``quantile=0.5``: the median real positive), on the classifier's own
        score scale, which a fixed ``t`` ignores. Use :meth:`positive_scores` to get the scores.

        Args:
            val_positive_scores: scores (probabilities) of validation images with a lesion.
            quantile: in ``[0, 1]``.

        Returns:
            The new threshold.

        Examples:
            >>> f = PseudoLabel(torch.nn.Linear(1, 1), threshold=None)
            >>> f.calibrate([0.2, 0.4, 0.6, 0.8], quantile=0.5)
            0.5
        """
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must lie in [0, 1], got {quantile}")
        scores = torch.as_tensor(val_positive_scores, dtype=torch.float64).flatten()
        if scores.numel() == 0:
            raise ValueError("calibrate needs at least one real-positive score")
        self.threshold = float(torch.quantile(scores, quantile))
        return self.threshold

    def positive_scores(self, batches: Iterable[dict[str, Any]]) -> torch.Tensor:
        """Scores of the label-1 images of ``collate_xray`` batches (e.g. a validation loader).

        Raises:
            ValueError: a site scorer (``on="site"``): score real lesion patches yourself and pass
                them to :meth:`calibrate`.
        """
        if self.on == "site":
            raise ValueError("positive_scores scores whole images, but this filter scores sites (on='site'): "
                             "calibrate it on scores of real lesion patches instead")
        out = [self.scores(b["image"][b["label"] == 1]).cpu() for b in batches]
        return torch.cat(out) if out else torch.zeros(0)

    def state_dict(self) -> dict[str, Any]:
        """Threshold, mode and counts (not the classifier's weights)."""
        return {"threshold": self.threshold, "mode": self.mode, "stats": self.stats.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.threshold, self.mode = state["threshold"], state["mode"]
        self.stats.load_state_dict(state["stats"])

    def __repr__(self) -> str:
        return f"PseudoLabel({self.source!r}, mode={self.mode!r}, threshold={self.threshold}, on={self.on!r})"

    def describe(self) -> dict[str, Any]:
        """Settings and acceptance counts, JSON-ready (for run logs)."""
        return {"kind": "pseudo_label", "mode": self.mode, "threshold": self.threshold, "on": self.on,
                "source": self.source,
                **self.stats.as_dict()}
