"""Synthesis on the device: crop sites -> translate -> blend -> filter -> mix.

* :mod:`streamaug.synth.ops`: ``cosine_alpha``, ``crop_sites``, ``paste_blend`` (batched tensor ops);
* :mod:`streamaug.synth.stage`: :class:`SynthesisStage` (wraps an existing ``DataLoader``);
* :mod:`streamaug.synth.lesion_stream`: :class:`LesionStream` (real and synthetic samples, mixed).
"""
from streamaug.synth.lesion_stream import LesionStream, NoAcceptedCandidates
from streamaug.synth.ops import cosine_alpha, crop_sites, paste_blend
from streamaug.synth.stage import SynthesisStage, Synthesized

__all__ = ["LesionStream", "NoAcceptedCandidates", "SynthesisStage", "Synthesized", "cosine_alpha", "crop_sites",
           "paste_blend"]
