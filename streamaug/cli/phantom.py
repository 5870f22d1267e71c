"""``streamaug-phantom --out DIR --n-normal N --n-lesion N [--size 256] [--format png|dcm]``
(also ``python -m streamaug.cli.phantom``)."""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from streamaug.phantom import REGIONS, contact_sheet, write_phantom_dataset


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, write the dataset (and optionally a contact sheet); returns the exit code."""
    p = argparse.ArgumentParser(prog="streamaug-phantom", description=__doc__)
    p.add_argument("--out", required=True, help="dataset folder to write (BTXRD layout)")
    p.add_argument("--n-normal", type=int, required=True)
    p.add_argument("--n-lesion", type=int, required=True)
    p.add_argument("--size", type=_size, default=(256, 256), help="side or HxW (default 256)")
    p.add_argument("--format", choices=("png", "dcm"), default="png")
    p.add_argument("--bits", type=int, default=None, help="PNG 8|16 (default 8); DICOM 12|16 (default 16)")
    p.add_argument("--photometric", choices=("MONOCHROME2", "MONOCHROME1"), default="MONOCHROME2")
    p.add_argument("--regions", nargs="+", choices=REGIONS, default=list(REGIONS))
    p.add_argument("--splits", type=float, nargs=3, default=(0.6, 0.2, 0.2), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sheet", default=None, help="also save a PNG contact sheet (8 normals + 8 lesions) here")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    out = write_phantom_dataset(a.out, a.n_normal, a.n_lesion, size=a.size, seed=a.seed, splits=a.splits,
                                regions=a.regions, fmt=a.format, bits=a.bits, photometric=a.photometric,
                                progress=True)
    n = a.n_normal + a.n_lesion
    print(f"wrote {n} images to {out} in {time.perf_counter() - t0:.1f}s")
    if a.sheet:
        contact_sheet(seed=a.seed).save(a.sheet)
        print(f"contact sheet: {a.sheet}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
