"""Every public name imports, and the doctests in the library run."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import streamaug


@pytest.mark.parametrize("name", [n for n in streamaug.__all__ if n != "__version__"])
def test_public_name_resolves(name):
    assert getattr(streamaug, name) is not None


def _modules():
    for info in pkgutil.walk_packages(streamaug.__path__, "streamaug."):
        if not info.name.endswith("__main__"):
            yield info.name


@pytest.mark.parametrize("module", sorted(_modules()))
def test_doctests(module):
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
