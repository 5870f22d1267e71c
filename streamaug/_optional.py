"""Lazy imports of optional dependencies with an install hint (the MONAI habit)."""
from __future__ import annotations

import importlib
from types import ModuleType


def optional_import(module: str, *, extra: str | None = None, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise an ``ImportError`` that says what to install.

    Args:
        module: dotted module name, e.g. ``"pylibjpeg"``.
        extra: the pip requirement to suggest; defaults to the top-level package name.
        purpose: what the module is needed for, shown in the message.

    Returns:
        The imported module.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - message path tested via callers
        what = f" for {purpose}" if purpose else ""
        pkg = extra or module.split(".")[0]
        raise ImportError(f"streamaug needs '{module}'{what}: pip install {pkg}") from err
