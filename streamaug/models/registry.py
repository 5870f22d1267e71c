"""One small registry (the torchvision/timm habit): ``register``, ``get``, ``list``.

:class:`Registry` maps names to objects; a duplicate name is an error and an unknown name lists the
known ones. Three instances use it:

* translators (:func:`register_translator`, :func:`get_translator`, :func:`list_translators`,
  :func:`build_translator`): an entry is an ``nn.Module`` class with

  * ``config_cls``: a dataclass with ``patch_size``, ``to_dict()`` and ``from_dict(dict)``;
  * ``__init__(config)``;
  * attribute ``patch_size`` and ``translate(patches (B, C, P, P) in [0, 1]) -> (B, C, P, P) in [0, 1]``.

* classifiers (:func:`register_classifier`, :func:`get_classifier`, :func:`list_classifiers`): an
  entry is a factory ``(**overrides) -> nn.Module`` mapping ``(B, 1, H, W)`` images to ``(B,)``
  logits. ``get_classifier("drn_small")`` returns the factory; call it to get the model.
  ``"drn"`` takes a full :class:`~streamaug.models.drn.DRNConfig` as keywords (what classifier
  checkpoints are rebuilt with); ``"drn_paper"``, ``"drn_small"``, ``"drn_tiny"`` are its presets.

* inpainters (:func:`register_inpainter`, :func:`get_inpainter`, :func:`list_inpainters`): an entry
  is an ``nn.Module`` class with ``config_cls`` (a dataclass with ``image_size``, ``to_dict()``,
  ``from_dict(dict)``), ``__init__(config)``, attribute ``image_size`` and
  ``generate(images (B, C, S, S) in [0, 1], masks (B, 1, S, S), seeds (B,) | None) -> (B, C, S, S)``
  (the image the box is composited into, see :mod:`streamaug.models.pix2pix`).

Built-in entries (``"unit"``, ``"identity"``, ``"pix2pix"``, the DRNs) are registered on first lookup, so importing
this module stays cheap and free of import cycles. Tests iterate :func:`list_translators`,
:func:`list_classifiers` and :func:`list_inpainters`, so every registered model is smoke-tested.

Examples:
    >>> "drn_tiny" in list_classifiers()
    True
    >>> model = get_classifier("drn_tiny")(dropout=0.1)
    >>> model.config.dropout
    0.1
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
import torch.nn as nn

__all__ = [
    "Registry",
    "register_translator",
    "get_translator",
    "list_translators",
    "build_translator",
    "register_classifier",
    "get_classifier",
    "list_classifiers",
    "ClassifierFactory",
    "register_inpainter",
    "get_inpainter",
    "list_inpainters",
    "IdentityConfig",
    "IdentityTranslator",
]

V = TypeVar("V")
T = TypeVar("T", bound=type)
ClassifierFactory = Callable[..., nn.Module]


class Registry(Generic[V]):
    """Names to entries; a duplicate name is an error, an unknown one lists the known names.

    Args:
        kind: what the entries are, for messages (``"translator"``).
        builtins: modules that register the built-in entries when imported; they are imported on
            the first :meth:`get` / :meth:`names`, so this registry's module imports none of them.

    Examples:
        >>> r = Registry("colour")
        >>> r.register("red", 1)
        1
        >>> r.get("red"), r.names()
        (1, ['red'])
        >>> r.get("blue")
        Traceback (most recent call last):
        KeyError: "unknown colour 'blue'; registered: ['red']"
    """

    def __init__(self, kind: str, builtins: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._builtins = builtins
        self._entries: dict[str, V] = {}

    def register(self, name: str, entry: V) -> V:
        """Add ``entry`` under ``name`` and return it.

        Raises:
            ValueError: ``name`` is already registered.
        """
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered ({self._entries[name]!r}); "
                             "pick another name")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> V:
        """The entry registered under ``name``.

        Raises:
            KeyError: unknown name (the message lists the known ones).
        """
        self._load_builtins()
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {self.names()}") from None

    def names(self) -> list[str]:
        """Sorted registered names."""
        self._load_builtins()
        return sorted(self._entries)

    def _load_builtins(self) -> None:
        for module in self._builtins:
            importlib.import_module(module)  # registers on first import; later calls are dict lookups


_TRANSLATORS: Registry[type[nn.Module]] = Registry("translator", ("streamaug.models.unit",))
_CLASSIFIERS: Registry[ClassifierFactory] = Registry("classifier", ("streamaug.models.drn",))
_INPAINTERS: Registry[type[nn.Module]] = Registry("inpainter", ("streamaug.models.pix2pix",))


def _class_decorator(registry: Registry[type[nn.Module]], name: str, needs: tuple[str, ...]) -> Callable[[T], T]:
    """A class decorator registering under ``name`` a class that has every attribute in ``needs``."""

    def deco(cls: T) -> T:
        for attr in needs:
            if not hasattr(cls, attr):
                raise TypeError(f"{registry.kind} {name!r}: class {cls.__qualname__} lacks {attr!r}")
        registry.register(name, cls)
        cls.name = name  # type: ignore[attr-defined]
        return cls

    return deco


def register_translator(name: str) -> Callable[[T], T]:
    """Class decorator that registers a translator under ``name``.

    Args:
        name: registry key, also the ``model`` field of checkpoints.

    Returns:
        The decorator; it sets ``cls.name = name`` and returns the class unchanged.

    Raises:
        ValueError: when ``name`` is already registered.
        TypeError: the class lacks ``config_cls`` or ``translate``.
    """
    return _class_decorator(_TRANSLATORS, name, ("config_cls", "translate"))


def register_inpainter(name: str) -> Callable[[T], T]:
    """Class decorator that registers an inpainter under ``name`` (the ``model`` field of its
    checkpoints); like :func:`register_translator`, for classes with ``config_cls`` and ``generate``."""
    return _class_decorator(_INPAINTERS, name, ("config_cls", "generate"))


def get_inpainter(name: str) -> type[nn.Module]:
    """The inpainter class registered as ``name`` (``KeyError`` naming the known ones if none is)."""
    return _INPAINTERS.get(name)


def list_inpainters() -> list[str]:
    """Sorted names of all registered inpainters, e.g. ``["pix2pix"]``."""
    return _INPAINTERS.names()


def get_translator(name: str) -> type[nn.Module]:
    """The translator class registered as ``name``.

    Raises:
        KeyError: unknown name (the message lists the known ones).

    Examples:
        >>> get_translator("identity").__name__
        'IdentityTranslator'
    """
    return _TRANSLATORS.get(name)


def list_translators() -> list[str]:
    """Sorted names of all registered translators.

    Examples:
        >>> {"identity", "unit"} <= set(list_translators())
        True
    """
    return _TRANSLATORS.names()


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


def register_classifier(name: str, factory: ClassifierFactory) -> ClassifierFactory:
    """Register ``factory`` (``(**overrides) -> nn.Module``) under ``name``; returns ``factory``.

    Raises:
        ValueError: ``name`` is already registered.
    """
    return _CLASSIFIERS.register(name, factory)


def get_classifier(name: str) -> ClassifierFactory:
    """The factory registered under ``name``; call it (with overrides) to get the model.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    return _CLASSIFIERS.get(name)


def list_classifiers() -> list[str]:
    """Sorted names of all registered classifiers."""
    return _CLASSIFIERS.names()


@dataclass
class IdentityConfig:
    """Config of :class:`IdentityTranslator` (only the patch size)."""

    patch_size: int = 64

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IdentityConfig:
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
