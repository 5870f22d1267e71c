"""torch's global random states, which a trainer saves in ``last.pt`` for an exact ``--resume``.

On CUDA the device has its own generator (``torch.randn_like`` of a device tensor draws from it, as
UNIT's latent noise and pix2pix's dropout do), so it is saved beside the CPU's.
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["global_rng_state", "set_global_rng_state"]


def global_rng_state(device: torch.device) -> dict[str, Any]:
    """``{"torch_rng": ..., "cuda_rng": ...}``: the CPU generator's state and, on CUDA, ``device``'s (else None)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"torch_rng": torch.get_rng_state(), "cuda_rng": cuda}


def set_global_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore :func:`global_rng_state` (a state saved without ``cuda_rng``, or on the CPU, leaves CUDA's as it is).

    Examples:
        >>> state = global_rng_state(torch.device("cpu"))
        >>> a = torch.rand(3)
        >>> set_global_rng_state(state, torch.device("cpu"))
        >>> torch.equal(a, torch.rand(3))
        True
    """
    torch.set_rng_state(state["torch_rng"].cpu())
    if state.get("cuda_rng") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
