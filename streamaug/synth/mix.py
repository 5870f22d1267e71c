"""``Mix``: several synthesizers, each candidate made by one drawn with the given weights."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from streamaug.synth.base import Made, Synthesizer


class Mix(Synthesizer):
    """Draw a synthesizer per candidate (weights), then let each make its share.

    Args:
        synthesizers: the synthesizers, or ``(synthesizer, weight)`` pairs.
        weights: relative weights (default: equal, or those given in pairs).

    Examples:
        >>> from streamaug.models.registry import IdentityConfig, IdentityTranslator
        >>> from streamaug.synth.translate import Translate
        >>> a = Translate(IdentityTranslator(IdentityConfig(patch_size=8)), blend_n=2.0)
        >>> b = Translate(IdentityTranslator(IdentityConfig(patch_size=8)), blend_n=4.0)
        >>> mix = Mix([(a, 3.0), (b, 1.0)])
        >>> p = mix.generate_parameters(None, torch.tensor([[0, 0, 8, 8]] * 4), torch.zeros(4, dtype=torch.long),
        ...                             torch.Generator().manual_seed(0))
        >>> sorted({mix.provenance(p, j)["blend_n"] for j in range(4)}) <= [2.0, 4.0]
        True
    """

    name = "mix"

    def __init__(self, synthesizers: Sequence[Synthesizer | tuple[Synthesizer, float]],
                 weights: Sequence[float] | None = None) -> None:
        pairs = [s if isinstance(s, tuple) else (s, 1.0) for s in synthesizers]
        if not pairs:
            raise ValueError("Mix needs at least one synthesizer")
        self.synthesizers = [s for s, _ in pairs]
        w = torch.as_tensor(list(weights) if weights is not None else [float(w) for _, w in pairs],
                            dtype=torch.float64)
        if len(w) != len(pairs) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"weights must be >= 0, one per synthesizer, not all 0; got {w.tolist()}")
        self.weights = w / w.sum()

    @property
    def blend_n(self) -> float:  # type: ignore[override]
        """The first synthesizer's blending exponent (what the mix reports as its own)."""
        return self.synthesizers[0].blend_n

    def to(self, device: str | torch.device) -> Mix:
        for s in self.synthesizers:
            s.to(device)
        return self

    def generate_parameters(self, images: torch.Tensor, boxes: torch.Tensor, source: torch.Tensor,
                            generator: torch.Generator | None = None,
                            meta: Sequence[Mapping[str, Any] | None] | None = None) -> dict[str, Any]:
        """``choice`` (K,) synthesizer per candidate, ``local`` (K,) its index there, ``parts`` their params."""
        k = len(boxes)
        choice = torch.multinomial(self.weights.float(), k, replacement=True, generator=generator) if k else \
            torch.zeros(0, dtype=torch.long)
        local = torch.zeros(k, dtype=torch.long)
        parts = []
        for i, synth in enumerate(self.synthesizers):
            idx = (choice == i).nonzero().flatten()
            local[idx] = torch.arange(len(idx))
            sel = idx.to(boxes.device)
            parts.append(synth.generate_parameters(images, boxes[sel], source[sel], generator, meta))
        return {"choice": choice, "local": local, "parts": parts}

    def apply(self, images: torch.Tensor, boxes: torch.Tensor, source: torch.Tensor,
              params: dict[str, Any]) -> Made:
        k = len(boxes)
        out = images.new_empty((k, *images.shape[1:]))
        made: dict[int, tuple[torch.Tensor, Made]] = {}
        for i, synth in enumerate(self.synthesizers):
            idx = (params["choice"] == i).nonzero().flatten().to(images.device)
            if len(idx):
                made[i] = idx, synth.apply(images, boxes[idx.to(boxes.device)], source[idx.to(source.device)],
                                           params["parts"][i])
                out[idx] = made[i][1].images

        def gather(field: str) -> torch.Tensor | None:
            parts = [(idx, getattr(m, field)) for idx, m in made.values()]
            if not parts or any(t is None for _, t in parts) or len({tuple(t.shape[1:]) for _, t in parts}) > 1:
                return None
            full = parts[0][1].new_empty((k, *parts[0][1].shape[1:]))
            for idx, t in parts:
                full[idx] = t
            return full

        return Made(out, gather("translated"), gather("patches"))

    def provenance(self, params: dict[str, Any], j: int) -> dict[str, Any]:
        i = int(params["choice"][j])
        return self.synthesizers[i].provenance(params["parts"][i], int(params["local"][j]))

    def describe(self) -> dict[str, Any]:
        return {"synthesizer": self.name, "weights": self.weights.tolist(),
                "parts": [s.describe() for s in self.synthesizers]}
