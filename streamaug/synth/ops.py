"""Crop patch sites, and paste translated patches back with cosine alpha blending (Gupta et al. §3.3).

Conventions (see ``docs/ARCHITECTURE.md``): a site/box is ``x0 y0 x1 y1`` in image pixels with ``x1``,
``y1`` exclusive, so its pixels are ``image[..., y0:y1, x0:x1]``. ``batch_index[k]`` says which image of
the batch site ``k`` belongs to.

Resampling convention. Both directions map *pixel centres corner to corner* (``align_corners=True``):
the first/last pixel of a site land on the first/last pixel of the ``P x P`` patch. With this choice the
normalized in-site coordinate ``i = -1 + 2 r / (h - 1)`` of site row ``r`` is at the same time

* the ``grid_sample`` coordinate that reads patch row ``r (P - 1) / (h - 1)``, and
* the ``i`` of :func:`cosine_alpha` (``torch.linspace(-1, 1, h)[r]``),

so ``paste_blend`` needs one ``grid_sample`` per slot and no per-site Python work. A crop of size
``P == h`` followed by a paste is an exact round trip.

Half precision. Coordinates are computed in float32 (bfloat16 cannot represent pixel positions
above 256 exactly) and the sampled, blended values are cast back to the image dtype.

Sites past the border. A site may reach past its image (a lesion swap's square around a lesion at
the border): :func:`crop_sites` reads 0 there (:func:`crop_coverage` says how much of each patch pixel
lies inside) and :func:`paste_blend` writes only the pixels inside, with the mask of the whole site.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["check_blend_n", "clip_sites", "cosine_alpha", "crop_coverage", "crop_sites", "paste_blend"]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types (accurate coordinates/interpolation), else the dtype itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check_blend_n(n: float, name: str = "blend_n") -> float:
    """``n`` as a float when it is a valid exponent of the cosine mask (``n > 0``), else ValueError.

    ``n <= 0`` would give a mask that is 0 everywhere (nothing pasted: the "synthetic" positive is
    its unchanged source) or, below 0, only a stray pixel; NaN a mask of NaN.

    Args:
        n: the exponent.
        name: the parameter's name, for the message.

    Examples:
        >>> check_blend_n(2)
        2.0
        >>> check_blend_n(0.0)
        Traceback (most recent call last):
        ...
        ValueError: blend_n must be a number > 0 (the cosine mask's exponent; 2.0 is the default), got 0.0
    """
    value = float(n)
    if not value > 0:  # also NaN
        raise ValueError(f"{name} must be a number > 0 (the cosine mask's exponent; 2.0 is the default), got {n!r}")
    return value


def _alpha_1d(t: torch.Tensor, n: float) -> torch.Tensor:
    """One factor of the separable cosine mask: ``cos(|t|^n pi/2)``, written as ``sin((1 - |t|^n) pi/2)``.

    The sine form is exactly 0 at the border (``cos(pi/2)`` is ~-4e-8 in float32) and exactly 1 at 0.
    :func:`cosine_alpha` and :func:`paste_blend` both build the mask from it (rows times columns).
    """
    return torch.sin((1 - t.abs().pow(n)) * (math.pi / 2)).clamp(0.0, 1.0)


def cosine_alpha(
    height: int,
    width: int,
    n: float,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""Locally varying blending factor of Gupta et al. §3.3.

    .. math:: \alpha_{ij} = \cos(|i|^n \tfrac{\pi}{2}) \cos(|j|^n \tfrac{\pi}{2})

    with ``i = torch.linspace(-1, 1, height)`` along rows and ``j = torch.linspace(-1, 1, width)``
    along columns. Larger ``n`` gives a flatter plateau with sharper fall-off at the border; for
    ``n >= 1`` the border is 0 (the patch fades into the image) and the centre (odd sizes) is 1.
    Values are clamped to ``[0, 1]``.

    Args:
        height: rows ``H`` of the patch.
        width: columns ``W`` of the patch.
        n: exponent, ``n > 0``.
        device: device of the result.
        dtype: floating dtype of the result (default: torch default dtype). Computed in float32 or
            higher and cast.

    Returns:
        Tensor of shape ``(H, W)``.

    Examples:
        >>> a = cosine_alpha(5, 5, 2.0)
        >>> a.shape
        torch.Size([5, 5])
        >>> float(a[2, 2]), float(a[0, 2]), float(a[2, 4])
        (1.0, 0.0, 0.0)
        >>> bool(torch.equal(a, a.T)) and bool(torch.equal(a, a.flip(0)))
        True
        >>> cosine_alpha(3, 3, 1.0)
        tensor([[0., 0., 0.],
                [0., 1., 0.],
                [0., 0., 0.]])
    """
    n = check_blend_n(n, "cosine_alpha: n")
    out_dtype = dtype or torch.get_default_dtype()
    cdt = _compute_dtype(out_dtype)
    i = torch.linspace(-1.0, 1.0, height, device=device, dtype=cdt)
    j = torch.linspace(-1.0, 1.0, width, device=device, dtype=cdt)
    return (_alpha_1d(i, n)[:, None] * _alpha_1d(j, n)[None, :]).to(out_dtype)


def _check_sites(images: torch.Tensor, boxes: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
    """Validate shapes and return integer boxes ``(K, 4)`` int64 on the image device."""
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (K, 4) x0 y0 x1 y1, got shape {tuple(boxes.shape)}")
    if batch_index.shape != (boxes.shape[0],):
        raise ValueError(f"batch_index must be ({boxes.shape[0]},), got {tuple(batch_index.shape)}")
    b = boxes.to(images.device).round().long()
    if b.numel() and bool(((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any()):
        raise ValueError("every box needs x1 > x0 and y1 > y0 (end-exclusive pixels)")
    return b


def _site_positions(lo: torch.Tensor, hi: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
    """Image positions ``(K, P)`` of the ``P`` patch pixels along one axis of sites ``[lo, hi)``: the
    first and last pixel centres corner to corner (a 1 pixel thick site repeats its pixel; ``P == 1``
    reads the site's centre)."""
    t = torch.linspace(0.0, 1.0, size, device=lo.device, dtype=dtype) if size > 1 \
        else torch.full((1,), 0.5, device=lo.device, dtype=dtype)
    lo, hi = lo.to(dtype)[:, None], hi.to(dtype)[:, None]
    return lo + t[None, :] * (hi - 1 - lo)


def crop_sites(
    images: torch.Tensor, boxes: torch.Tensor, batch_index: torch.Tensor, size: int
) -> torch.Tensor:
    """Crop every site and resize it to ``size x size`` in one batched ``grid_sample``.

    The site's first and last pixel centres map to the patch's (``align_corners=True``), so the
    end-exclusive box ``x0 y0 x1 y1`` is read from ``x0`` to ``x1 - 1`` and ``y0`` to ``y1 - 1``. With
    ``size`` equal to the site size the result is ``image[..., y0:y1, x0:x1]`` up to float rounding of
    the coordinates (~1e-7 relative). Non-square sites are stretched to the square; a site 1 pixel
    thick gives its row or column repeated. Pixels past the image border read 0 (bilinear, zero
    padding; :func:`crop_coverage` gives the share that lies inside).

    Args:
        images: ``(B, C, H, W)`` images.
        boxes: ``(K, 4)`` sites ``x0 y0 x1 y1`` (pixels, end-exclusive; float values are rounded).
        batch_index: ``(K,)`` int, image of each site.
        size: output patch side ``P``.

    Returns:
        ``(K, C, P, P)`` patches in the dtype of ``images``.

    Examples:
        >>> img = torch.arange(64.).view(1, 1, 8, 8)
        >>> p = crop_sites(img, torch.tensor([[2, 1, 5, 4]]), torch.tensor([0]), 3)
        >>> torch.allclose(p[0], img[0, :, 1:4, 2:5], atol=1e-5)
        True
        >>> crop_sites(img, torch.tensor([[2, 1, 3, 4]]), torch.tensor([0]), 3)[0, 0]  # 1 px wide
        tensor([[10., 10., 10.],
                [18., 18., 18.],
                [26., 26., 26.]])
    """
    b = _check_sites(images, boxes, batch_index)
    k = b.shape[0]
    if k == 0:
        return images.new_zeros((0, images.shape[1], size, size))
    height, width = images.shape[-2:]
    cdt = _compute_dtype(images.dtype)
    xs = _site_positions(b[:, 0], b[:, 2], size, cdt)  # (K, P) image columns
    ys = _site_positions(b[:, 1], b[:, 3], size, cdt)  # (K, P) image rows
    # grid_sample coordinates of pixel centres with align_corners=False: exact for any H, W >= 1
    gx, gy = (2 * xs + 1) / width - 1, (2 * ys + 1) / height - 1
    grid = torch.stack([gx[:, None, :].expand(k, size, size), gy[:, :, None].expand(k, size, size)], dim=-1)
    src = images[batch_index.to(images.device).long()].to(cdt)  # (K, C, H, W)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.to(images.dtype)


def _axis_coverage(pos: torch.Tensor, limit: int) -> torch.Tensor:
    """Bilinear weight on the pixels inside ``[0, limit)`` of each position (1 inside, 0 a pixel or more out)."""
    return (1 - (-pos).clamp(min=0) - (pos - (limit - 1)).clamp(min=0)).clamp(0.0, 1.0)


def crop_coverage(boxes: torch.Tensor, height: int, width: int, size: int) -> torch.Tensor:
    """The share of each pixel of :func:`crop_sites`' patches that lies inside the ``H x W`` image.

    1 where the patch pixel reads only image pixels, 0 where it reads only padding past the border,
    in between in the half-pixel rim: ``crop_sites`` of an all-ones image, without reading it.
    Means of a crop over the image only are ``(w * patch).sum() / (w * coverage).sum()``.

    Args:
        boxes: ``(K, 4)`` sites ``x0 y0 x1 y1`` (pixels, end-exclusive; float values are rounded).
        height: image rows ``H``.
        width: image columns ``W``.
        size: patch side ``P``.

    Returns:
        ``(K, 1, P, P)`` float32 in ``[0, 1]``, on the device of ``boxes``.

    Examples:
        >>> crop_coverage(torch.tensor([[-2, 0, 3, 5]]), 8, 8, 5)[0, 0, 0].tolist()  # 2 columns past x = 0
        [0.0, 0.0, 1.0, 1.0, 1.0]
    """
    b = boxes.reshape(-1, 4).round().long()
    cx = _axis_coverage(_site_positions(b[:, 0], b[:, 2], size, torch.float32), width)
    cy = _axis_coverage(_site_positions(b[:, 1], b[:, 3], size, torch.float32), height)
    return (cy[:, :, None] * cx[:, None, :])[:, None]


def clip_sites(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The part of each site inside the ``H x W`` image: ``(K, 4)`` like ``boxes`` (x clamped to
    ``[0, W]``, y to ``[0, H]``; a site wholly outside becomes empty).

    Examples:
        >>> clip_sites(torch.tensor([[-6, 14, 18, 38]]), 32, 16).tolist()
        [[0, 14, 16, 32]]
    """
    limit = torch.tensor([width, height, width, height], device=boxes.device, dtype=boxes.dtype)
    return torch.minimum(boxes.clamp(min=0), limit)


def _slots(batch_index: torch.Tensor) -> torch.Tensor:
    """Rank of each site among the sites of its image, in the given order (0, 1, ...)."""
    k = batch_index.shape[0]
    order = torch.argsort(batch_index, stable=True)
    sorted_b = batch_index[order]
    pos = torch.arange(k, device=batch_index.device)
    is_start = torch.ones(k, dtype=torch.bool, device=batch_index.device)
    is_start[1:] = sorted_b[1:] != sorted_b[:-1]
    group_start = torch.cummax(torch.where(is_start, pos, torch.zeros_like(pos)), 0).values
    slot = torch.empty_like(pos)
    slot[order] = pos - group_start
    return slot


def paste_blend(
    images: torch.Tensor,
    translated: torch.Tensor,
    boxes: torch.Tensor,
    batch_index: torch.Tensor,
    n: float,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Resize translated patches to their sites and alpha-blend them into a copy of the images.

    Inside site ``k`` of image ``b``: ``out = a * x_{h->l} + (1 - a) * x`` with
    ``a = cosine_alpha(h_k, w_k, n)`` and ``x_{h->l}`` the patch resized (bilinear, corner to corner)
    to the site size. Pixels outside every site are bit-identical to the input. Overlapping sites of
    one image are composited in the given order (site ``k`` is blended over the result of the earlier
    sites) - the same as pasting one site after another.

    Implementation: sites are grouped into *slots* (the j-th site of each image is in slot j). One
    slot has at most one site per image, so it is done with a single ``grid_sample`` over a canvas of
    the largest site size and one scatter; the Python loop runs over slots (max sites per image),
    never over sites. Memory is ``O(K * h_max * w_max)``, not ``O(K * H * W)``. Boxes reaching past
    the image border are clipped (their alpha still follows the full box).

    ``weight`` multiplies the mask where part of a patch has no content (a lesion crop that ran past
    its image's border, see :class:`streamaug.synth.CopyPaste`): it is resampled with the patch, in the
    same ``grid_sample`` call, so ``out = a * w * x_{h->l} + (1 - a * w) * x``.

    Args:
        images: ``(B, C, H, W)`` originals ``x_h``.
        translated: ``(K, C, P, P)`` translated patches ``x_{h->l}`` (any ``P``; non-square allowed).
        boxes: ``(K, 4)`` sites ``x0 y0 x1 y1`` (pixels, end-exclusive).
        batch_index: ``(K,)`` image of each site.
        n: blending exponent (Gupta et al. use the "default mask"; ``n`` is a hyper-parameter).
        weight: optional ``(K, 1, P, P)`` factor in ``[0, 1]`` on the mask (None: 1 everywhere).

    Returns:
        ``(B, C, H, W)`` blended images, same dtype/device as ``images``.

    Raises:
        ValueError: bad shapes, an empty box, or ``n <= 0`` (:func:`check_blend_n`).

    Examples:
        >>> img = torch.zeros(1, 1, 6, 6)
        >>> out = paste_blend(img, torch.ones(1, 1, 3, 3), torch.tensor([[1, 1, 4, 4]]),
        ...                   torch.tensor([0]), n=2.0)
        >>> out[0, 0, 1:4, 1:4]
        tensor([[0., 0., 0.],
                [0., 1., 0.],
                [0., 0., 0.]])
        >>> float(out.sum())
        1.0
    """
    n = check_blend_n(n, "n")
    b = _check_sites(images, boxes, batch_index)
    if translated.dim() != 4 or translated.shape[0] != b.shape[0] or translated.shape[1] != images.shape[1]:
        raise ValueError(
            f"translated must be (K={b.shape[0]}, C={images.shape[1]}, P, P), got {tuple(translated.shape)}"
        )
    if weight is not None and weight.shape != (translated.shape[0], 1, *translated.shape[2:]):
        raise ValueError(f"weight must be (K, 1, P, P) like translated, got {tuple(weight.shape)}")
    out = images.clone()
    if b.shape[0] == 0:
        return out
    device = images.device
    bsz, ch, height, width = images.shape
    cdt = _compute_dtype(images.dtype)
    bidx = batch_index.to(device).long()
    slot = _slots(bidx)
    hs, ws = b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]
    hm, wm = int(hs.max()), int(ws.max())
    r = torch.arange(hm, device=device)
    c = torch.arange(wm, device=device)
    flat = out.view(-1)  # out is a fresh contiguous clone
    chan = torch.arange(ch, device=device)
    for s in range(int(slot.max()) + 1):
        sel = (slot == s).nonzero().squeeze(1)
        bk, hk, wk, x0, y0 = bidx[sel], hs[sel], ws[sel], b[sel, 0], b[sel, 1]
        # normalized in-site coordinates == grid_sample coords (align_corners=True) == alpha's i, j
        i = -1.0 + 2.0 * r[None, :].to(cdt) / (hk[:, None] - 1).clamp(min=1).to(cdt)  # (k, hm)
        j = -1.0 + 2.0 * c[None, :].to(cdt) / (wk[:, None] - 1).clamp(min=1).to(cdt)  # (k, wm)
        grid = torch.stack([j[:, None, :].expand(-1, hm, wm), i[:, :, None].expand(-1, hm, wm)], dim=-1)
        src_k = translated[sel] if weight is None else torch.cat([translated[sel], weight[sel].to(translated)], 1)
        patch = F.grid_sample(src_k.to(cdt), grid, mode="bilinear",
                              padding_mode="border", align_corners=True)  # (k, C (+1), hm, wm)
        if weight is not None:
            patch, wgt = patch[:, :ch].contiguous(), patch[:, ch]
        ai, aj = _alpha_1d(i, n), _alpha_1d(j, n)  # (k, hm), (k, wm): the separable mask's factors
        yy = y0[:, None] + r[None, :]  # (k, hm) image rows
        xx = x0[:, None] + c[None, :]
        valid = ((r[None, :] < hk[:, None]) & (yy >= 0) & (yy < height))[:, :, None] & (
            (c[None, :] < wk[:, None]) & (xx >= 0) & (xx < width)
        )[:, None, :]  # (k, hm, wm)
        kk, rr, cc = valid.nonzero(as_tuple=True)
        # 1-D indices into the contiguous (B, C, H, W) output and (k, C, hm, wm) patch, shape (N, C)
        dst = (bk[kk] * ch)[:, None] * (height * width) + chan[None, :] * (height * width) \
            + (yy[kk, rr] * width + xx[kk, cc])[:, None]
        src = ((kk * ch)[:, None] + chan[None, :]) * (hm * wm) + (rr * wm + cc)[:, None]
        a = (ai[kk, rr] * aj[kk, cc])[:, None]  # (N, 1)
        if weight is not None:
            a = a * wgt[kk, rr, cc][:, None]
        base = flat[dst].to(cdt)
        flat[dst] = (a * patch.reshape(-1)[src] + (1 - a) * base).to(images.dtype)
    return out
