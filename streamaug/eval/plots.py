"""Sample-grid PNGs for eyeballing translations: one row per sample, columns e.g. original / translated / blended."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from streamaug._optional import optional_import

__all__ = ["save_sample_grid"]

Row = torch.Tensor | Sequence[torch.Tensor]


def _images(row: Row) -> list[torch.Tensor]:
    """A row as a list of ``(H, W)`` float32 CPU arrays (sizes may differ between columns)."""
    items = list(row.unbind(0)) if isinstance(row, torch.Tensor) else list(row)
    out = []
    for t in items:
        t = t.detach().float().cpu()
        while t.dim() > 2:
            if t.shape[0] != 1:
                raise ValueError(f"expected single-channel images, got shape {tuple(t.shape)}")
            t = t[0]
        out.append(t)
    return out


def save_sample_grid(
    path: str | os.PathLike,
    rows: Sequence[Row],
    titles: Sequence[str] = ("original", "translated", "blended"),
    *,
    row_titles: Sequence[str] | None = None,
    cell_inches: float = 2.0,
    dpi: int = 100,
) -> Path:
    """Write a PNG grid: row ``r`` shows the images of ``rows[r]`` side by side.

    Images are shown in grey with a fixed ``[0, 1]`` range (so brightness changes are visible),
    each cell keeps its own size (a full image next to a patch is fine).

    Args:
        path: output ``.png`` (parent folders are created).
        rows: one entry per grid row: a ``(B, 1, H, W)`` tensor (its ``B`` images become the
            columns) or a sequence of ``(1, H, W)``/``(H, W)`` tensors of possibly different sizes.
        titles: column titles, one per column (shown on the first row).
        row_titles: optional label per row (e.g. the sample key).
        cell_inches: size of one cell in inches.
        dpi: PNG resolution.

    Returns:
        The written path.

    Examples:
        >>> import tempfile
        >>> x = torch.rand(3, 1, 16, 16)
        >>> p = save_sample_grid(Path(tempfile.mkdtemp()) / "g.png", [x, x], ["a", "b", "c"])
        >>> p.stat().st_size > 0
        True
    """
    matplotlib = optional_import("matplotlib", extra="streamaug[plots]", purpose="sample grids")
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    grid = [_images(r) for r in rows]
    if not grid:
        raise ValueError("save_sample_grid: no rows")
    ncols = max(len(r) for r in grid)
    if titles and len(titles) != ncols:
        raise ValueError(f"{len(titles)} titles for {ncols} columns")
    if row_titles is not None and len(row_titles) != len(grid):
        raise ValueError(f"{len(row_titles)} row titles for {len(grid)} rows")
    fig, axes = plt.subplots(len(grid), ncols, figsize=(cell_inches * ncols, cell_inches * len(grid)),
                             squeeze=False)
    for r, row in enumerate(grid):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(row):
                ax.imshow(row[c].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.axis("off")
            if r == 0 and titles:
                ax.set_title(titles[c], fontsize=9)
        if row_titles is not None:
            axes[r][0].set_ylabel(row_titles[r], fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
