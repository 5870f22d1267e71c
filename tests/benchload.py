"""Import a script of ``benchmarks/`` (not a package) as a module, for tests that drive it."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as the module ``name`` (registered in ``sys.modules``, so its
    dataclasses and forked workers resolve it); ``benchmarks/`` joins ``sys.path`` as it does for a
    script run as ``python benchmarks/<name>.py``."""
    if str(ROOT / "benchmarks") not in sys.path:  # a script's sibling modules (btxrd_arms, ...) import as when run
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
