"""What devices this machine can put tensors on, said in words a command can print."""
from __future__ import annotations

import torch

__all__ = ["device_problem"]


def device_problem(device: str | torch.device) -> str | None:
    """Why ``device`` cannot hold tensors here (malformed, CUDA/MPS absent, no such index); None if it can."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        return f"not a torch device ({err}); use e.g. cpu, cuda or cuda:0"
    count = torch.cuda.device_count() if dev.type == "cuda" and torch.cuda.is_available() else 0
    if dev.type == "cuda" and (not count or (dev.index or 0) >= count):
        return (f"this machine has {count} CUDA device(s)" + (" (torch.cuda.is_available() is False)" if not count
                else "") + "; use device cpu (--device cpu)" + (f" or cuda:0..{count - 1}" if count else ""))
    if dev.type == "mps" and not torch.backends.mps.is_available():
        return "MPS is not available on this machine; use device cpu (--device cpu)"
    return None
