"""Classifiers and a tiny registry (the torchvision/timm habit).

A registry entry is a factory ``(**overrides) -> nn.Module``; tests iterate over
:func:`list_classifiers`, so every registered model is smoke-tested.

Examples:
    >>> from streamaug.models import get_classifier, list_classifiers
    >>> "drn_tiny" in list_classifiers()
    True
    >>> model = get_classifier("drn_tiny")(dropout=0.1)
"""
from __future__ import annotations

import functools
from typing import Callable

from torch import nn

from streamaug.models.drn import (
    CHECKPOINT_FORMAT,
    DRN,
    DRN_PRESETS,
    DRNConfig,
    LoadedClassifier,
    load_classifier,
    save_classifier,
)

ClassifierFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ClassifierFactory] = {}


def register_classifier(name: str, factory: ClassifierFactory) -> ClassifierFactory:
    """Register ``factory`` under ``name``.

    Args:
        name: registry key, e.g. ``"drn_tiny"``.
        factory: callable ``(**overrides) -> nn.Module``.

    Returns:
        ``factory``, so this can wrap a function definition via ``functools.partial``.

    Raises:
        ValueError: ``name`` is already registered.
    """
    if name in _REGISTRY:
        raise ValueError(f"classifier {name!r} is already registered")
    _REGISTRY[name] = factory
    return factory


def get_classifier(name: str) -> ClassifierFactory:
    """The factory registered under ``name``; ``KeyError`` lists the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown classifier {name!r}; registered: {list_classifiers()}") from None


def list_classifiers() -> list[str]:
    """Registered names, sorted."""
    return sorted(_REGISTRY)


def _build_drn(preset: str, **overrides: object) -> DRN:
    return DRN(DRNConfig.preset(preset, **overrides))


for _preset in DRN_PRESETS:
    register_classifier(f"drn_{_preset}", functools.partial(_build_drn, _preset))

__all__ = [
    "CHECKPOINT_FORMAT",
    "DRN",
    "DRN_PRESETS",
    "DRNConfig",
    "LoadedClassifier",
    "get_classifier",
    "list_classifiers",
    "load_classifier",
    "register_classifier",
    "save_classifier",
]
