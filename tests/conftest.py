"""Shared fixtures. Tests make their own data; real-data checks skip when ../shared is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("STREAMAUG_SHARED_DATA", _REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$STREAMAUG_SHARED_DATA``); skips the test when it is absent."""
    if not (SHARED_DATA / "btxrd" / "metadata.csv").exists():
        pytest.skip(f"real data not found at {SHARED_DATA} (set STREAMAUG_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _few_threads():
    """One torch thread: CI has 2 cores and tests run beside DataLoader workers; oversubscribed
    threads slowed the tiny models' steps by an order of magnitude here."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
