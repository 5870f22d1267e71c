"""Procedural X-ray phantoms: the embedded default data of streamaug.

``make_phantom`` draws one limb radiograph (optionally with lytic lesions, exact masks and boxes);
``write_phantom_dataset`` writes a folder laid out like BTXRD (PNG 8/16-bit or DICOM);
``streamaug-phantom --out DIR --n-normal N --n-lesion N`` does the same from the shell.
"""
from __future__ import annotations

from streamaug.phantom.generator import REGIONS, VIEWS, components, make_phantom
from streamaug.phantom.writer import COLUMNS, write_dicom, write_phantom_dataset, write_png

__all__ = ["COLUMNS", "REGIONS", "VIEWS", "components", "contact_sheet", "make_phantom", "write_dicom",
           "write_phantom_dataset", "write_png"]


def contact_sheet(n_normal: int = 8, n_lesion: int = 8, *, seed: int = 0, size: int = 256, cols: int = 8):
    """RGB grid of phantoms (normals first) with lesion boxes drawn in red, as a PIL image.

    Args:
        n_normal, n_lesion: tiles of each kind.
        seed: first seed; tile ``i`` uses ``seed + i`` and cycles regions and views.
        size: tile side in pixels.
        cols: tiles per row.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    n = n_normal + n_lesion
    sheet = Image.new("RGB", (cols * size, -(-n // cols) * size))
    for i in range(n):
        ph = make_phantom(seed + i, size=(size, size), lesion=i >= n_normal, region=REGIONS[i % 2],
                          view=VIEWS[i % 3])
        tile = Image.fromarray(np.rint(ph["image"] * 255).astype(np.uint8)).convert("RGB")
        draw = ImageDraw.Draw(tile)
        for x0, y0, x1, y1 in ph["boxes"]:
            draw.rectangle([x0 - 1, y0 - 1, x1, y1], outline=(255, 40, 40))
        sheet.paste(tile, ((i % cols) * size, (i // cols) * size))
    return sheet
