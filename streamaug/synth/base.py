"""The synthesizer interface: random parameters are drawn apart from their application.

A synthesizer turns normal images and one site box per candidate into blended candidates::

    params = synth.generate_parameters(images, boxes, source, generator, meta)  # every draw, on the CPU
    made = synth.apply(images, boxes, source, params)                            # deterministic given params
    record = synth.provenance(params, j)                                         # JSON-able record of candidate j

so a candidate can be made again from its parameters (the kornia habit), and a resumed stream
replays the same draws from the same generator state. ``images`` are ``(B, C, H, W)``; ``boxes`` are
the ``(K, 4)`` sites themselves (``x0 y0 x1 y1`` pixels, end-exclusive), not patches resized to a
fixed size, so a synthesizer can match what it pastes to a site's size; ``source`` ``(K,)`` is the
image of each site; ``meta`` (optional, one record per image: what the shards say of it) lets a
synthesizer match what it pastes to its source (``CopyPaste(match="bone")``). Implementations:
:class:`streamaug.synth.Translate` (UNIT), :class:`streamaug.synth.CopyPaste` (real lesion crops),
:class:`streamaug.synth.Mix` (several, weighted).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Made:
    """What a synthesizer made from ``K`` sites.

    Attributes:
        images: ``(K, C, H, W)`` blended full images (image ``source[k]`` with site ``k`` changed).
        translated: ``(K, C, P, P)`` what was pasted into each site (None when the sizes differ).
        patches: ``(K, C, P, P)`` the sites' original content (None when not made).
    """

    images: torch.Tensor
    translated: torch.Tensor | None
    patches: torch.Tensor | None


class Synthesizer:
    """Base of the synthesizers: ``__call__`` draws parameters, then applies them.

    Subclasses set :attr:`name` and :attr:`blend_n` and define :meth:`apply`; those with randomness
    override :meth:`generate_parameters` (keeping its ``meta=None`` parameter: the stage passes the
    batch's records), those with tensors or modules override :meth:`to`.
    """

    name = "synthesizer"
    blend_n: float = 2.0

    def generate_parameters(self, images: torch.Tensor, boxes: torch.Tensor, source: torch.Tensor,
                            generator: torch.Generator | None = None,
                            meta: Sequence[Mapping[str, Any] | None] | None = None) -> dict[str, Any]:
        """Every random draw for the ``K`` candidates (CPU tensors); none by default. ``meta``: one
        record per image of ``images`` (``meta[source[k]]`` describes site ``k``'s image), or None."""
        return {}

    def apply(self, images: torch.Tensor, boxes: torch.Tensor, source: torch.Tensor,
              params: dict[str, Any]) -> Made:
        """Blend the candidates; deterministic given ``params``."""
        raise NotImplementedError

    def provenance(self, params: dict[str, Any], j: int) -> dict[str, Any]:
        """JSON-able record of candidate ``j``: at least ``synthesizer`` and ``blend_n``."""
        return {"synthesizer": self.name, "blend_n": self.blend_n}

    def to(self, device: str | torch.device) -> Synthesizer:
        """Move tensors and modules to ``device``; returns self."""
        return self

    def describe(self) -> dict[str, Any]:
        """The settings, for logs and run records."""
        return {"synthesizer": self.name, "blend_n": self.blend_n}

    def __call__(self, images: torch.Tensor, boxes: torch.Tensor, source: torch.Tensor,
                 generator: torch.Generator | None = None,
                 meta: Sequence[Mapping[str, Any] | None] | None = None) -> Made:
        return self.apply(images, boxes, source, self.generate_parameters(images, boxes, source, generator, meta))
