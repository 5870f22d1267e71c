"""Models: the DRN classifier, the UNIT translator, one registry and one checkpoint format per kind.

Classifiers (the torchvision/timm habit): :func:`get_classifier` returns a *factory*
``(**overrides) -> nn.Module``; call it to get the model, e.g. ``get_classifier("drn_small")()``
or ``get_classifier("drn_tiny")(dropout=0.1)``. :func:`list_classifiers` names them all and
:func:`register_classifier` adds one (a duplicate name is an error). Translators are classes:
:func:`get_translator`, :func:`list_translators`, :func:`build_translator` and the
:func:`register_translator` class decorator (see :mod:`streamaug.models.registry`).

Checkpoints (:mod:`streamaug.models.checkpoint`): :func:`save_classifier` / :func:`load_classifier`
and :func:`save_translator` / :func:`load_translator`; every refusal is a :class:`CheckpointError`
(a ``ValueError``) naming the file and the fix.

Examples:
    >>> from streamaug.models import get_classifier, list_classifiers
    >>> "drn_tiny" in list_classifiers()
    True
    >>> model = get_classifier("drn_tiny")(dropout=0.1)
    >>> model.config.dropout
    0.1
"""
from __future__ import annotations

from streamaug.models.checkpoint import (
    CLASSIFIER_FORMAT,
    CheckpointError,
    LoadedClassifier,
    load_classifier,
    load_translator,
    read_checkpoint,
    save_classifier,
    save_translator,
)
from streamaug.models.drn import DRN, DRN_PRESETS, DRNConfig
from streamaug.models.registry import (
    ClassifierFactory,
    Registry,
    build_translator,
    get_classifier,
    get_translator,
    list_classifiers,
    list_translators,
    register_classifier,
    register_translator,
)

CHECKPOINT_FORMAT = CLASSIFIER_FORMAT  # the classifier format's older name

__all__ = [
    "CHECKPOINT_FORMAT",
    "CLASSIFIER_FORMAT",
    "CheckpointError",
    "ClassifierFactory",
    "DRN",
    "DRN_PRESETS",
    "DRNConfig",
    "LoadedClassifier",
    "Registry",
    "build_translator",
    "get_classifier",
    "get_translator",
    "list_classifiers",
    "list_translators",
    "load_classifier",
    "load_translator",
    "read_checkpoint",
    "register_classifier",
    "register_translator",
    "save_classifier",
    "save_translator",
]
