"""``streamaug-phantom --out DIR --n-normal N --n-lesion N [--size 256] [--format png|dcm]``
(also ``python -m streamaug.cli.phantom``)."""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from streamaug._commands import USER_ERRORS, check_at_least, check_file_to_write, check_folder_to_write, fail
from streamaug.phantom import REGIONS, contact_sheet, write_phantom_dataset
from streamaug.phantom.writer import MIN_SIDE


def _size(text: str) -> tuple[int, int]:
    """``--size``: ``N`` or ``HxW`` in pixels, each side at least :data:`MIN_SIDE`."""
    h, _, w = text.lower().partition("x")
    try:
        size = int(h), int(w or h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a side or HxW in pixels (e.g. 256 or 256x192)") from None
    if min(size) < MIN_SIDE:
        raise argparse.ArgumentTypeError(f"{text!r}: each side must be >= {MIN_SIDE} px (smaller lesions fall "
                                         "between pixels and lose their boxes)")
    return size


def build_parser() -> argparse.ArgumentParser:
    """The command's options (each with help)."""
    p = argparse.ArgumentParser(prog="streamaug-phantom", description=__doc__)
    p.add_argument("--out", required=True, help="dataset folder to write (BTXRD layout)")
    p.add_argument("--n-normal", type=int, required=True, help="images without a lesion (>= 0)")
    p.add_argument("--n-lesion", type=int, required=True, help="images with lytic lesions (>= 0; not both 0)")
    p.add_argument("--size", type=_size, default=(256, 256), help=f"side or HxW, each >= {MIN_SIDE} (default 256)")
    p.add_argument("--format", choices=("png", "dcm"), default="png", help="image files (default png)")
    p.add_argument("--bits", type=int, default=None, help="PNG 8|16 (default 8); DICOM 12|16 (default 16)")
    p.add_argument("--photometric", choices=("MONOCHROME2", "MONOCHROME1"), default="MONOCHROME2",
                   help="DICOM only: MONOCHROME2 (high = bright, default) or MONOCHROME1")
    p.add_argument("--regions", nargs="+", choices=REGIONS, default=list(REGIONS), help="regions drawn per patient")
    p.add_argument("--splits", type=float, nargs=3, default=(0.6, 0.2, 0.2), metavar=("TRAIN", "VAL", "TEST"),
                   help="train/val/test shares of the patient groups (default 0.6 0.2 0.2)")
    p.add_argument("--seed", type=int, default=0, help="the whole folder is a function of the options and this")
    p.add_argument("--sheet", default=None, help="also save a PNG contact sheet (8 normals + 8 lesions) here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, write the dataset (and optionally a contact sheet); returns the exit code.

    Bad options (a count below 0, no image at all, --out a file, ...) end with ``error: ...`` and exit
    code 2 before anything is written.
    """
    a = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        check_at_least(a.n_normal, 0, "--n-normal")
        check_at_least(a.n_lesion, 0, "--n-lesion")
        if a.n_normal + a.n_lesion < 1:
            raise ValueError("--n-normal 0 --n-lesion 0 writes no image; ask for at least one")
        check_folder_to_write(a.out, "--out")
        check_file_to_write(a.sheet, "--sheet")
        if a.sheet and not a.sheet.lower().endswith(".png"):
            raise ValueError(f"--sheet {a.sheet}: the contact sheet is a PNG; give a file name ending in .png")
        out = write_phantom_dataset(a.out, a.n_normal, a.n_lesion, size=a.size, seed=a.seed, splits=a.splits,
                                    regions=a.regions, fmt=a.format, bits=a.bits, photometric=a.photometric,
                                    progress=True)
        print(f"wrote {a.n_normal + a.n_lesion} images to {out} in {time.perf_counter() - t0:.1f}s")
        if a.sheet:
            contact_sheet(seed=a.seed).save(a.sheet)
            print(f"contact sheet: {a.sheet}")
    except USER_ERRORS as err:  # ValueError: --bits, --splits, ...; OSError: --out, --sheet
        return fail(err)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
