"""On-the-fly augmentation for translator training, random parameters drawn apart from their use.

Each augmentation is a pair (the kornia habit): ``*_params(..., generator)`` draws the random
parameters from a ``torch.Generator`` (CPU), ``apply_*(x, params)`` applies them. A batch is
therefore replayed exactly from its parameters, and a run resumed with its generator's saved state
draws the same ones as the uninterrupted run.

* Patch augmentation of the training batches (both domains alike), on patches in ``[0, 1]``:
  ``"hflip"`` random horizontal flips (the original recipe); ``"all"`` a random element of the
  square's 8 symmetries (rot90 ``k`` in 0..3, then a horizontal flip) and a mild intensity jitter,
  contrast about the patch mean times ``U(1 - j, 1 + j)`` plus brightness ``U(-j/2, j/2)``.
* DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training"):
  the same kinds of random transforms applied to real and translated patches alike before a
  discriminator (in the generator step too), differentiable in the images. Policies as in the
  official code, for one channel: ``"color"`` brightness ``+U(-0.5, 0.5)`` and contrast about the
  mean ``x U(0.5, 1.5)`` (no saturation: grey images), ``"translation"`` by up to 1/8 of the side
  with zero padding, ``"cutout"`` of a zeroed square half the side. Works in the trainer's
  ``[-1, 1]`` range, so zero is mid grey, as in the official code.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["AUGMENT_MODES", "DIFFAUG_POLICIES", "patch_aug_params", "apply_patch_aug", "draw_patches",
           "diffaug_params", "apply_diffaug", "diff_augment"]

AUGMENT_MODES = ("none", "hflip", "all")
DIFFAUG_POLICIES = ("color", "translation", "cutout")


def patch_aug_params(n: int, mode: str, jitter: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random parameters of :func:`apply_patch_aug` for ``n`` patches.

    Args:
        n: batch size.
        mode: ``"none"``, ``"hflip"`` or ``"all"`` (see the module docstring).
        jitter: intensity jitter amplitude ``j`` (``"all"`` only; 0: none).
        generator: CPU generator the parameters are drawn from (in this order: flips, rotations,
            contrast, brightness).

    Returns:
        ``hflip`` ``(n,)`` bool; with ``"all"`` also ``rot`` ``(n,)`` int64 in ``0..3``,
        ``contrast`` and ``brightness`` ``(n,)`` float32.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> sorted(patch_aug_params(4, "all", 0.1, g))
        ['brightness', 'contrast', 'hflip', 'rot']
    """
    if mode not in AUGMENT_MODES:
        raise ValueError(f"augmentation mode must be one of {AUGMENT_MODES}, got {mode!r}")
    if mode == "none":
        return {"hflip": torch.zeros(n, dtype=torch.bool)}
    params = {"hflip": torch.rand(n, generator=generator) < 0.5}
    if mode == "all":
        params["rot"] = torch.randint(4, (n,), generator=generator)
        params["contrast"] = 1 + (torch.rand(n, generator=generator) * 2 - 1) * jitter
        params["brightness"] = (torch.rand(n, generator=generator) - 0.5) * jitter
    return params


def apply_patch_aug(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Apply :func:`patch_aug_params`' parameters: rot90, horizontal flip, then the intensity jitter.

    Args:
        x: ``(B, C, P, P)`` patches in ``[0, 1]``.
        params: from :func:`patch_aug_params` with ``n == B``.

    Returns:
        ``(B, C, P, P)`` new tensor in ``[0, 1]``.
    """
    x = x.clone()
    rot = params.get("rot")
    if rot is not None:
        for k in (1, 2, 3):
            sel = (rot == k).to(x.device)
            if sel.any():
                x[sel] = torch.rot90(x[sel], k, (-2, -1))
    flip = params["hflip"].to(x.device)
    x[flip] = x[flip].flip(-1)
    if "contrast" in params:
        c = params["contrast"].to(x)[:, None, None, None]
        b = params["brightness"].to(x)[:, None, None, None]
        mean = x.mean((-2, -1), keepdim=True)
        x = ((x - mean) * c + mean + b).clamp(0, 1)
    return x


def draw_patches(patches: torch.Tensor, size: int, generator: torch.Generator, device: torch.device | str,
                 augment: str = "hflip", jitter: float = 0.0) -> torch.Tensor:
    """A random minibatch of ``patches``, augmented: ``(size, C, P, P)`` on ``device``.

    The indices (uniform, with replacement) and then the augmentation are drawn from ``generator``.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> draw_patches(torch.rand(10, 1, 8, 8), 4, g, "cpu", "all", 0.1).shape
        torch.Size([4, 1, 8, 8])
    """
    idx = torch.randint(len(patches), (size,), generator=generator)
    return apply_patch_aug(patches[idx], patch_aug_params(size, augment, jitter, generator)).to(device)


def diffaug_params(shape: Sequence[int], policy: Sequence[str], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random parameters of :func:`apply_diffaug` for a batch of shape ``(B, C, H, W)``.

    Args:
        shape: the batch shape.
        policy: any of :data:`DIFFAUG_POLICIES`, applied in that order.
        generator: CPU generator the parameters are drawn from.

    Returns:
        per policy: ``brightness``, ``contrast`` ``(B,)``; ``shift`` ``(B, 2)`` int64 (dy, dx);
        ``cutout`` ``(B, 2)`` int64 (centre y, x).
    """
    unknown = set(policy) - set(DIFFAUG_POLICIES)
    if unknown:
        raise ValueError(f"unknown DiffAugment policies {sorted(unknown)}; choose from {DIFFAUG_POLICIES}")
    b, _, h, w = shape
    params: dict[str, torch.Tensor] = {}
    for name in DIFFAUG_POLICIES:  # a fixed order, whatever the order given
        if name not in policy:
            continue
        if name == "color":
            params["brightness"] = torch.rand(b, generator=generator) - 0.5
            params["contrast"] = torch.rand(b, generator=generator) + 0.5
        elif name == "translation":
            sy, sx = int(h / 8 + 0.5), int(w / 8 + 0.5)
            params["shift"] = torch.stack([torch.randint(-sy, sy + 1, (b,), generator=generator),
                                           torch.randint(-sx, sx + 1, (b,), generator=generator)], 1)
        else:
            params["cutout"] = torch.stack([torch.randint(h, (b,), generator=generator),
                                            torch.randint(w, (b,), generator=generator)], 1)
    return params


def apply_diffaug(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Apply :func:`diffaug_params`' parameters; differentiable in ``x``.

    Args:
        x: ``(B, C, H, W)`` images in ``[-1, 1]``.
        params: from :func:`diffaug_params` for ``x.shape``.

    Returns:
        ``(B, C, H, W)``, same dtype and device.
    """
    b, _, h, w = x.shape
    if "brightness" in params:
        x = x + params["brightness"].to(x)[:, None, None, None]
        mean = x.mean((1, 2, 3), keepdim=True)
        x = (x - mean) * params["contrast"].to(x)[:, None, None, None] + mean
    if "shift" in params:  # out[i, j] = x[i - dy, j - dx], zero outside
        shift = params["shift"].to(x.device)
        sy, sx = int(h / 8 + 0.5), int(w / 8 + 0.5)
        rows = torch.arange(h, device=x.device)[None] - shift[:, :1] + sy  # (B, H) into the padded image
        cols = torch.arange(w, device=x.device)[None] - shift[:, 1:] + sx  # (B, W)
        padded = F.pad(x, (sx, sx, sy, sy))
        x = padded[torch.arange(b, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        x = x.permute(0, 3, 1, 2)  # advanced indexing put the channels last
    if "cutout" in params:  # a square of side (h/2, w/2) around the centre is zeroed, clipped to the image
        ch, cw = int(h / 2 + 0.5), int(w / 2 + 0.5)
        centre = params["cutout"].to(x.device)
        ys = torch.arange(h, device=x.device)[None] - centre[:, :1] + ch // 2  # (B, H): 0..ch-1 inside
        xs = torch.arange(w, device=x.device)[None] - centre[:, 1:] + cw // 2
        inside = ((ys >= 0) & (ys < ch))[:, :, None] & ((xs >= 0) & (xs < cw))[:, None, :]
        x = x * (~inside)[:, None].to(x)
    return x


def diff_augment(x: torch.Tensor, policy: Sequence[str], generator: torch.Generator) -> torch.Tensor:
    """DiffAugment ``x`` with fresh parameters from ``generator`` (:func:`diffaug_params` then :func:`apply_diffaug`).

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> diff_augment(torch.zeros(2, 1, 16, 16), ("translation", "cutout"), g).shape
        torch.Size([2, 1, 16, 16])
    """
    if not policy:
        return x
    return apply_diffaug(x, diffaug_params(x.shape, policy, generator))
