"""Synthesis on the device: sites -> synthesize -> blend -> filter -> mix.

* :mod:`streamaug.synth.ops`: ``cosine_alpha``, ``crop_sites``, ``paste_blend`` (batched tensor ops);
* :mod:`streamaug.synth.base`: the synthesizer interface (parameters drawn apart from their use);
* :mod:`streamaug.synth.translate`: :class:`Translate` (UNIT patch translation, Gupta et al.);
* :mod:`streamaug.synth.copy_paste`: :class:`CopyPaste` (real lesion crops, TumorCP-style);
* :mod:`streamaug.synth.lesion_bank`: :class:`LesionCrops` (the real lesions it pastes, cut once);
* :mod:`streamaug.synth.inpaint`: :class:`Inpaint` (new context around a kept lesion box, Xing et al.);
* :mod:`streamaug.synth.mix`: :class:`Mix` (several synthesizers, weighted);
* :mod:`streamaug.synth.sources`: what a synthesizer starts from (normals, or positives at their lesion boxes);
* :mod:`streamaug.synth.stage`: :class:`SynthesisStage` (wraps an existing ``DataLoader``);
* :mod:`streamaug.synth.lesion_stream`: :class:`LesionStream` (real and synthetic samples, mixed).
"""
from streamaug.synth.base import Made, Synthesizer
from streamaug.synth.copy_paste import CopyPaste
from streamaug.synth.inpaint import Inpaint
from streamaug.synth.lesion_bank import LesionCrops
from streamaug.synth.lesion_stream import LesionStream, NoAcceptedCandidates
from streamaug.synth.mix import Mix
from streamaug.synth.ops import cosine_alpha, crop_sites, paste_blend
from streamaug.synth.sources import LesionBoxSites, lesion_box_sites, source_label, source_sites
from streamaug.synth.stage import SynthesisLoader, SynthesisStage, Synthesized
from streamaug.synth.translate import Translate

__all__ = ["CopyPaste", "Inpaint", "LesionBoxSites", "LesionCrops", "LesionStream", "Made", "Mix",
           "NoAcceptedCandidates", "SynthesisLoader", "SynthesisStage", "Synthesized", "Synthesizer", "Translate",
           "cosine_alpha", "crop_sites", "lesion_box_sites", "paste_blend", "source_label", "source_sites"]
