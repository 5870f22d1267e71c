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


def test_editors_see_every_lazy_name():
    """The ``TYPE_CHECKING`` imports of ``streamaug/__init__.py`` name exactly the lazy public names,
    each from the module ``__getattr__`` loads it from."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(streamaug.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    seen = {alias.name: node.module for node in block.body if isinstance(node, ast.ImportFrom)
            for alias in node.names}
    assert seen == streamaug._PUBLIC


@pytest.mark.parametrize("name,module", [("cosine_alpha", "streamaug.synth"), ("SynthesisStage", "streamaug.synth"),
                                         ("LesionStream", "streamaug.synth"), ("unbatch", "streamaug")])
def test_names_users_look_for(name, module):
    assert callable(getattr(importlib.import_module(module), name))


def test_unbatch_inverts_collate():
    import torch

    samples = [{"key": f"k{i}", "image": torch.full((1, 4, 4), float(i)), "label": i % 2,
                "boxes": torch.ones(i, 4), "meta": {"i": i}} for i in range(3)]
    back = streamaug.unbatch(streamaug.collate_xray(samples))
    assert [s["key"] for s in back] == ["k0", "k1", "k2"] and [s["label"] for s in back] == [0, 1, 0]
    for want, got in zip(samples, back):
        assert torch.equal(want["image"], got["image"]) and torch.equal(want["boxes"], got["boxes"])
        assert got["meta"] == want["meta"]


def test_missing_optional_parts_name_their_extra(monkeypatch):
    import sys

    from streamaug.data.zarr_source import ZarrXRays
    from streamaug.eval.plots import save_sample_grid

    monkeypatch.setitem(sys.modules, "zarr", None)  # import fails as if the extra were not installed
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install streamaug\[zarr\]"):
        ZarrXRays("/nonexistent.zarr")
    with pytest.raises(ImportError, match=r"pip install streamaug\[plots\]"):
        save_sample_grid("/nonexistent.png", [])


def test_ruff_is_clean():
    """The ruff configuration in pyproject.toml passes on the whole tree (skipped without ruff)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    # the venv's ruff also when the venv is not activated (python called by its path)
    ruff = shutil.which("ruff") or shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]' brings it)")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([ruff, "check", "--no-cache", "."], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]
