"""A tiny translator registry (the torchvision/timm habit): ``register``, ``get``, ``list``.

A translator is an ``nn.Module`` class with

* ``config_cls``: a dataclass with ``patch_size``, ``to_dict()`` and ``from_dict(dict)``;
* ``__init__(config)``;
* attribute ``patch_size`` and ``translate(patches (B, C, P, P) in [0, 1]) -> (B, C, P, P) in [0, 1]``.

Built-in translators (``"unit"``, ``"identity"``) are registered on first lookup, so importing this
module stays cheap and free of import cycles. Tests iterate :func:`list_translators`, so every
registered translator is smoke-tested.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.nn as nn

__all__ = [
    "register_translator",
    "get_translator",
    "list_translators",
    "build_translator",
    "IdentityConfig",
    "IdentityTranslator",
]

_REGISTRY: dict[str, type[nn.Module]] = {}
_BUILTIN_MODULES = ("streamaug.models.unit",)
T = TypeVar("T", bound=type)


def register_translator(name: str) -> Callable[[T], T]:
    """Class decorator that registers a translator under ``name``.

    Args:
        name: registry key, also the ``model`` field of checkpoints.

    Returns:
        The decorator; it sets ``cls.name = name`` and returns the class unchanged.

    Raises:
        ValueError: when ``name`` is already registered.
    """

    def deco(cls: T) -> T:
        if name in _REGISTRY:
            raise ValueError(f"translator {name!r} is already registered ({_REGISTRY[name].__qualname__})")
        for attr in ("config_cls", "translate"):
            if not hasattr(cls, attr):
                raise TypeError(f"translator {name!r}: class {cls.__qualname__} lacks {attr!r}")
        cls.name = name  # type: ignore[attr-defined]
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_builtins() -> None:
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)


def get_translator(name: str) -> type[nn.Module]:
    """The translator class registered as ``name``.

    Raises:
        KeyError: unknown name (the message lists the known ones).

    Examples:
        >>> get_translator("identity").__name__
        'IdentityTranslator'
    """
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown translator {name!r}; registered: {list_translators()}") from None


def list_translators() -> list[str]:
    """Sorted names of all registered translators.

    Examples:
        >>> {"identity", "unit"} <= set(list_translators())
        True
    """
    _load_builtins()
    return sorted(_REGISTRY)


def build_translator(name: str, config: Any = None, **overrides: Any) -> nn.Module:
    """Instantiate translator ``name`` from a config object, a dict, or defaults + ``overrides``.

    Examples:
        >>> build_translator("identity", patch_size=16).patch_size
        16
    """
    cls = get_translator(name)
    cfg_cls = cls.config_cls  # type: ignore[attr-defined]
    if config is None:
        config = cfg_cls(**overrides)
    elif isinstance(config, dict):
        config = cfg_cls.from_dict({**config, **overrides})
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    return cls(config)


@dataclass
class IdentityConfig:
    """Config of :class:`IdentityTranslator` (only the patch size)."""

    patch_size: int = 64

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IdentityConfig":
        return cls(**d)


@register_translator("identity")
class IdentityTranslator(nn.Module):
    """Returns its input: a baseline (blending alone) and a test double for the synthesis path.

    Examples:
        >>> t = IdentityTranslator(IdentityConfig(patch_size=8))
        >>> x = torch.rand(2, 1, 8, 8)
        >>> torch.equal(t.translate(x), x)
        True
    """

    config_cls = IdentityConfig

    def __init__(self, config: IdentityConfig | None = None) -> None:
        super().__init__()
        self.config = config or IdentityConfig()
        self.patch_size = self.config.patch_size

    def translate(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, P, P) -> (B, C, P, P)``, the same tensor values (a copy-free passthrough)."""
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.translate(x)
