"""``Translate``: translate each site's patch (UNIT, Gupta et al. §3.1) and blend it back (§3.3)."""
from __future__ import annotations

import os
from typing import Any

import torch

from streamaug.synth.base import Made, Synthesizer
from streamaug.synth.ops import check_blend_n, crop_sites, paste_blend


class Translate(Synthesizer):
    """Crop every site to ``P x P``, translate it normal -> lesion, paste it back with the cosine blend.

    No random parameters: the translator uses the latent mean.

    Args:
        translator: a module with ``patch_size`` and ``translate((K,1,P,P)) -> (K,1,P,P)``, or a
            checkpoint path for :func:`streamaug.load_translator`.
        blend_n: exponent ``n > 0`` of the cosine blending mask.
        dtype: autocast dtype for the translator on CUDA (e.g. ``torch.bfloat16``); None: float32.
        device: where the translator runs (the images' device must match).

    Examples:
        >>> from streamaug.models.registry import IdentityConfig, IdentityTranslator
        >>> synth = Translate(IdentityTranslator(IdentityConfig(patch_size=8)))
        >>> made = synth(torch.rand(2, 1, 32, 32), torch.tensor([[4, 4, 20, 20]]), torch.tensor([1]))
        >>> made.images.shape, made.translated.shape
        (torch.Size([1, 1, 32, 32]), torch.Size([1, 1, 8, 8]))
    """

    name = "translate"

    def __init__(self, translator: torch.nn.Module | str | os.PathLike, *, blend_n: float = 2.0,
                 dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> None:
        blend_n = check_blend_n(blend_n)  # before a checkpoint is loaded
        if isinstance(translator, (str, os.PathLike)):
            from streamaug.models.checkpoint import load_translator

            translator = load_translator(translator, device=device)
        self.translator = translator.eval()
        self.id = str(getattr(translator, "id", None) or type(translator).__name__)
        self.patch_size = int(translator.patch_size)
        self.blend_n, self.dtype = blend_n, dtype
        self.to(device)

    def to(self, device: str | torch.device) -> Translate:
        self.device = torch.device(device)
        self.translator.to(self.device)
        return self

    @torch.no_grad()
    def apply(self, images: torch.Tensor, boxes: torch.Tensor, source: torch.Tensor,
              params: dict[str, Any] | None = None) -> Made:
        """Crop ``(K, 1, P, P)`` patches, translate, clamp to ``[0, 1]``, paste into ``images[source]``."""
        patches = crop_sites(images, boxes, source, self.patch_size)
        use_amp = self.dtype is not None and images.device.type == "cuda"
        with torch.autocast(images.device.type, dtype=self.dtype or torch.float32, enabled=use_amp):
            translated = self.translator.translate(patches)
        translated = translated.float().clamp(0, 1)
        k = len(boxes)
        blended = paste_blend(images[source], translated.to(images.dtype), boxes,
                              torch.arange(k, device=images.device), self.blend_n)
        return Made(blended, translated, patches)

    def provenance(self, params: dict[str, Any], j: int) -> dict[str, Any]:
        return {"synthesizer": self.name, "translator": self.id, "blend_n": self.blend_n}

    def describe(self) -> dict[str, Any]:
        return {"synthesizer": self.name, "translator": self.id, "patch_size": self.patch_size,
                "blend_n": self.blend_n}
