"""``streamaug-realism``: can a small CNN tell synthetic positives from real ones? (issue 14, item 2)

    python -m streamaug.cli.realism --real shards/btxrd --split train --region lower_limb \\
        --synthesizer copy-paste --out runs/realism/copy-paste

SPEC (``--synthesizer``) is what the synthetic side is made with:

* ``real``: no synthesizer; the control: real positives against held-apart real positives (the
  discriminator AUC should sit at 0.5, and the distances give their floor at this sample count);
* ``copy-paste``: :class:`~streamaug.synth.CopyPaste` with the donor-side real lesions;
* ``copy-paste-mask``: the same, each lesion pasted by its feathered mask (``shape="mask"``);
* ``swap``: ``CopyPaste(onto="lesions", avoid=PatientOf())``: each donor-side positive gets a
  donor-side lesion of another patient (another ``group``; an image without one: another image)
  pasted over its own (a lesion swap: the context stays a real positive's), never its own lesion
  or one of its patient's other images (which would make the "synthetic" sample a real one);
* ``broken``: :class:`NoiseSquare`, uniform noise pasted at the sites with hard edges (the
  discriminator AUC should be near 1: the check that the report can fail);
* ``unchanged``: :class:`Unchanged`, the normals as they are: how well the discriminator tells real
  positives from normals when nothing is pasted at all (the part of any synthesizer's AUC that is
  not about the lesion);
* a checkpoint path, dispatched on its kind (its ``format`` field): a translator checkpoint gives
  :class:`~streamaug.synth.Translate` (lesions on the normals' sites), an inpainter checkpoint
  :class:`~streamaug.synth.Inpaint` (the donor-side real positives, each lesion box kept, new
  surroundings generated). Another kind is one line in :data:`FROM_CHECKPOINT`. A checkpoint trained
  on positives that the report may hold out as its real side (its saved run config's ``positives``,
  else every positive of its ``shards``, ``split`` and ``region``) gets a warning: a generator that
  memorised them would look realistic. ``realism.json``'s ``synthesizer_training_overlap`` says
  whether the held-out real side is among them (true, false or "unknown").

The normals' sites are matched against the train-split lesion boxes of the region less those of the
real side (:func:`~streamaug.eval.realism.realism_report` drops them), so that no synthetic lesion is
placed at a copy of a real-side lesion box.

Writes ``OUT/realism.json`` and ``OUT/grid.png`` (see :func:`streamaug.eval.realism.realism_report`).
"""
from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from streamaug._commands import (
    USER_ERRORS,
    check_at_least,
    check_device,
    check_folder_to_write,
    check_region,
    check_shards,
    fail,
    message,
)
from streamaug.data.select import KeySelect, positive_keys
from streamaug.data.shardlist import expand_urls, find_manifest
from streamaug.eval.realism import realism_report
from streamaug.io.opener import is_url
from streamaug.models.checkpoint import CheckpointError
from streamaug.sites import LesionBoxBank, SiteProposer
from streamaug.synth import CopyPaste, Inpaint, LesionCrops, Made, Synthesizer, Translate

__all__ = ["FROM_CHECKPOINT", "NAMED", "NoiseSquare", "PatientOf", "Unchanged", "build_parser", "check_args",
           "check_real", "check_training_overlap", "checkpoint_kind", "main", "make_synthesizer",
           "training_positives"]

logger = logging.getLogger(__name__)


class NoiseSquare(Synthesizer):
    """Broken on purpose: each site becomes blocky uniform noise, pasted without any blending.

    Args:
        cells: the noise is drawn on a ``cells x cells`` grid and stretched (nearest) over the site.

    Examples:
        >>> made = NoiseSquare()(torch.zeros(1, 1, 16, 16), torch.tensor([[4, 4, 12, 12]]), torch.tensor([0]))
        >>> bool((made.images[0, 0, 4:12, 4:12] > 0).any()), float(made.images[0, 0, :4].abs().sum())
        (True, 0.0)
    """

    name = "noise_square"
    blend_n = 0.0

    def __init__(self, cells: int = 8) -> None:
        self.cells = int(cells)

    def generate_parameters(self, images: torch.Tensor, boxes: torch.Tensor, source: torch.Tensor,
                            generator: torch.Generator | None = None,
                            meta: Sequence[Mapping[str, Any] | None] | None = None) -> dict[str, Any]:
        """``noise``: ``(K, 1, cells, cells)`` uniform in ``[0, 1)``."""
        return {"noise": torch.rand(len(boxes), 1, self.cells, self.cells, generator=generator)}

    def apply(self, images: torch.Tensor, boxes: torch.Tensor, source: torch.Tensor,
              params: dict[str, Any]) -> Made:
        out = images[source.to(images.device)].clone()
        height, width = out.shape[-2:]
        for k, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
            if x1 > x0 and y1 > y0:
                noise = params["noise"][k:k + 1].to(out)
                out[k, :, y0:y1, x0:x1] = F.interpolate(noise, size=(y1 - y0, x1 - x0), mode="nearest")[0]
        return Made(out, params["noise"], None)

    def describe(self) -> dict[str, Any]:
        return {"synthesizer": self.name, "cells": self.cells}


class Unchanged(Synthesizer):
    """The normal image as it is (a reference: the synthetic side is then plain normals)."""

    name = "unchanged"

    def apply(self, images: torch.Tensor, boxes: torch.Tensor, source: torch.Tensor,
              params: dict[str, Any]) -> Made:
        return Made(images[source.to(images.device)].clone(), None, None)


@dataclass(frozen=True)
class PatientOf:
    """``meta -> patient``: the image's ``group`` (its pseudo-patient), else its own ``image_id`` (an
    image without a group is its own patient, as the report's parts and sides take it); None
    without either. What a lesion swap avoids (``CopyPaste(avoid=...)``): never the source's own
    lesion, nor one of its patient's other images.

    Examples:
        >>> PatientOf()({"group": "7", "image_id": "a"}), PatientOf()({"group": "", "image_id": "a"})
        ('group:7', 'image:a')
    """

    def __call__(self, meta: Mapping[str, Any]) -> str | None:
        group, image = meta.get("group"), meta.get("image_id")
        if group not in (None, ""):
            return f"group:{group}"
        return None if image in (None, "") else f"image:{image}"

    def __repr__(self) -> str:
        return "group (else image_id)"


Factory = Callable[[list[dict[str, Any]], argparse.Namespace], Synthesizer]
#: SPEC names; None is the ``real`` control. The factories get the part's donor-side positives.
NAMED: dict[str, Factory | None] = {
    "real": None,
    "copy-paste": lambda donors, args: CopyPaste(crops=LesionCrops.from_samples(donors), device=args.device),
    "copy-paste-mask": lambda donors, args: CopyPaste(crops=LesionCrops.from_samples(donors, shape="mask"),
                                                      device=args.device),
    "swap": lambda donors, args: CopyPaste(crops=LesionCrops.from_samples(donors), onto="lesions",
                                           avoid=PatientOf(), device=args.device),
    "broken": lambda donors, args: NoiseSquare(),
    "unchanged": lambda donors, args: Unchanged(),
}
#: checkpoint kind (``streamaug-<kind>/N`` format) -> synthesizer. An inpainter makes its positives from
#: the donor-side real positives (new surroundings for each lesion box), not from normals.
FROM_CHECKPOINT: dict[str, Callable[[str, argparse.Namespace], Synthesizer]] = {
    "translator": lambda path, args: Translate(path, device=args.device),
    "inpainter": lambda path, args: Inpaint(path, device=args.device),
}


def _header(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's top-level fields, read with ``weights_only=True`` and memory-mapped ({} for any other file)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not a torch zip file: the caller says what SPEC may be
        return {}
    return ckpt if isinstance(ckpt, dict) else {}


def checkpoint_kind(path: str | os.PathLike) -> str | None:
    """The kind of a streamaug checkpoint (``translator``, ``classifier``, ...) from its ``format``
    field (``streamaug-<kind>/N``); None for any other file."""
    fmt = _header(path).get("format") if os.path.isfile(path) else None
    return fmt.split("/")[0].removeprefix("streamaug-") if isinstance(fmt, str) else None


def make_synthesizer(spec: str, args: argparse.Namespace) -> tuple[Callable[[list], Synthesizer] | None, float]:
    """``(donors -> synthesizer or None, site side factor s)`` for a SPEC (see the module docstring).

    ``s`` is ``--s``; else a checkpoint's own ``s`` (the patch-size factor it was trained with);
    else 2, CopyPaste's crop margin, so pasted lesions keep the sizes of the real ones.

    Raises:
        CheckpointError: SPEC is neither a name nor a checkpoint of a kind in :data:`FROM_CHECKPOINT`.
    """
    s = 2.0 if args.s is None else args.s
    if spec in NAMED:
        factory = NAMED[spec]
        return (None if factory is None else (lambda donors: factory(donors, args))), s
    kind = checkpoint_kind(spec)
    if kind not in FROM_CHECKPOINT:
        what = f"a {kind} checkpoint" if kind else ("not a streamaug checkpoint" if os.path.isfile(spec) else "no file")
        raise CheckpointError(f"--synthesizer {spec!r}: {what}; give one of {sorted(NAMED)} or a checkpoint of kind "
                              f"{sorted(FROM_CHECKPOINT)}")
    synth = FROM_CHECKPOINT[kind](spec, args)
    own = _header(spec).get("s")
    if args.s is None and isinstance(own, (int, float)):
        s = float(own)
    return (lambda donors: synth), s


def _urls(real: list[str]) -> str | list[str]:
    """One spec (a folder, manifest or pattern) as it is; several as a list of shard paths."""
    return real[0] if len(real) == 1 else real


def training_positives(path: str | os.PathLike) -> tuple[frozenset[str] | None, str]:
    """``(keys, where)``: the positives a translator or inpainter checkpoint was trained on, from its
    saved run config (``extra["run"]``): its ``positives``, else every positive of its ``shards`` in
    its ``split`` and ``region``; ``where`` says which. ``(None, why)`` when the checkpoint has no run
    config or its shards cannot be read here. A translator's own held-out groups (``holdout``) count as
    trained on: which they were is not saved.
    """
    run = (_header(path).get("extra") or {}).get("run")
    if not isinstance(run, dict):
        return None, "it holds no run config (extra['run'])"
    if run.get("positives") is not None:
        return frozenset(str(k) for k in run["positives"]), f"its --positives ({len(run['positives'])} keys)"
    shards, split, region = run.get("shards"), run.get("split"), run.get("region")
    where = f"every positive of its --shards {shards} (--split {split}, --region {region or 'all'})"
    if not shards:
        return None, "its run config names no shards"
    try:
        return positive_keys(_urls(list(shards)) if isinstance(shards, list) else shards, split, region), where
    except USER_ERRORS as err:
        return None, f"its training data, {where}, cannot be read here ({message(err)})"


def check_training_overlap(args: argparse.Namespace) -> frozenset[str] | None:
    """The positives the synthesizer was trained on, for the report's ``synthesizer_training_overlap``:
    none for a named SPEC (nothing trained), a checkpoint's :func:`training_positives` (None: unknown).

    Logs a warning, before any work, when the positives of ``--split`` and ``--region`` (those the
    report holds out as its real side) could be among them, or when that cannot be told.
    """
    if args.synthesizer in NAMED:
        return frozenset()
    trained, where = training_positives(args.synthesizer)
    if trained is None:
        logger.warning("--synthesizer %s: cannot tell whether it was trained on the positives this report holds "
                       "out as its real side: %s", args.synthesizer, where)
        return None
    ours = positive_keys(_urls(args.real), args.split, args.region)
    shared = ours & trained
    if shared:
        logger.warning("--synthesizer %s was trained on %d of the %d positives of --split %s (--region %s) from "
                       "which this report draws its held-out real side (%s; e.g. %s): a generator that memorised "
                       "them would look realistic. Train the synthesizer on other positives (its --positives), or "
                       "report on another --split", args.synthesizer, len(shared), len(ours), args.split,
                       args.region or "all", where, ", ".join(sorted(shared)[:3]))
    return trained


def site_proposer(args: argparse.Namespace, s: float) -> SiteProposer:
    """Sites matched against the train-split lesion boxes of the region (what the stream's ``sites=True``
    uses); :func:`~streamaug.eval.realism.realism_report` drops the real side's records from the bank."""
    manifest = find_manifest(expand_urls(_urls(args.real), args.split)[0])
    if manifest is None:
        raise ValueError("a synthesizer needs --real shards written by `python -m streamaug.cli.pack` (the sites "
                         "come from its manifest.json)")
    bank = LesionBoxBank.from_manifest(manifest, split="train", select=KeySelect(args.region))
    return SiteProposer(bank, s=s, n=args.n, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    """The command's options (each with help)."""
    p = argparse.ArgumentParser(prog="python -m streamaug.cli.realism", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", nargs="+", required=True, metavar="URL",
                   help="packed shards of real images: a folder with manifest.json, a manifest, shard paths")
    p.add_argument("--split", default="train", help="split of --real (default: %(default)s)")
    p.add_argument("--region", default=None, help="only images of this region, e.g. lower_limb (default: all)")
    p.add_argument("--synthesizer", required=True, metavar="SPEC",
                   help=f"one of {', '.join(NAMED)} (swap: a lesion of another patient over each donor-side "
                   f"positive's own), or a checkpoint of kind {', '.join(FROM_CHECKPOINT)} (warned about when "
                   "trained on the positives held out as the real side)")
    p.add_argument("--out", required=True, help="output folder for realism.json and grid.png")
    p.add_argument("--image-size", type=int, default=128,
                   help="side images are read, synthesized and judged at (default: %(default)s)")
    p.add_argument("--held-out", type=float, default=0.5,
                   help="share of the patient groups held out for scoring (default: %(default)s)")
    p.add_argument("--s", type=float, default=None,
                   help="site side as a multiple of a bank box's larger side (default: a translator's own s, else 2)")
    p.add_argument("--n", type=int, default=7, help="lesion boxes matched per normal image (default: %(default)s)")
    p.add_argument("--arch", default="drn_tiny",
                   help="classifier registry name of the discriminator and feature network (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs of each network (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="images per training step; small sets need the steps (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap samples of the AUC CI (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the parts, sides, sites, synthesis, training and bootstrap (default: %(default)s)")
    p.add_argument("--grid-samples", type=int, default=8, help="real and synthetic columns of grid.png "
                   "(default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device for synthesis and training (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's own; 1 is fastest on a busy shared machine)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse, before any work, options that would fail later: --out a file, counts out of range, a
    device not on this machine.

    Raises:
        ValueError: the message names the option and the fix.
    """
    check_folder_to_write(args.out, "--out")
    if not 0 < args.held_out < 1:
        raise ValueError(f"--held-out must lie between 0 and 1 (share of the patient groups), got {args.held_out}")
    check_at_least(args.image_size, 16, "--image-size", "pixels a side: room for lesion sites")
    check_at_least(args.batch_size, 2, "--batch-size", "a batch of one is dropped: nothing would train")
    for value, option in ((args.epochs, "--epochs"), (args.n_boot, "--n-boot"), (args.n, "--n"),
                          (args.grid_samples, "--grid-samples")):
        check_at_least(value, 1, option)
    if args.s is not None and not args.s > 0:
        raise ValueError(f"--s must be > 0 (site side per box side), got {args.s}")
    check_device(args.device)


def check_real(args: argparse.Namespace) -> None:
    """Refuse, before reading images, a --real that is not there, or a --split or --region its manifest lacks.

    Raises:
        ValueError: no such shard, or no image of ``--region`` in ``--split``.
        ShardError: ``--real`` matches no shard, or its manifest has no ``--split``.
    """
    for spec in args.real:
        check_shards(spec, "--real")
    missing = [u for u in expand_urls(_urls(args.real), args.split) if not is_url(u) and not os.path.exists(u)]
    if missing:
        raise ValueError(f"--real: no such shard {missing[0]}; give shards packed by streamaug-pack")
    check_region(_urls(args.real), args.split, args.region)


def main(argv: Sequence[str] | None = None) -> int:
    """``streamaug-realism``: parse, run :func:`~streamaug.eval.realism.realism_report`, print the numbers.

    Bad input (options, paths, too few positives, a checkpoint of another kind) ends with ``error: ...``
    and exit code 2; the options are checked before any work.
    """
    args = build_parser().parse_args(argv)
    if args.threads is not None and args.threads < 1:
        return fail(f"--threads must be >= 1, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        check_args(args)
        factory, s = make_synthesizer(args.synthesizer, args)
        check_real(args)
        trained_on = check_training_overlap(args)
        sites = None if factory is None else site_proposer(args, s)
        report = realism_report(_urls(args.real), args.out, make_synthesizer=factory, split=args.split,
                                region=args.region, image_size=args.image_size, sites=sites, held_out=args.held_out,
                                arch=args.arch, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                n_boot=args.n_boot, seed=args.seed, device=args.device,
                                grid_samples=args.grid_samples, name=args.synthesizer,
                                settings=None if sites is None else {"site_s": s, "site_n": args.n},
                                trained_on=trained_on)
    except USER_ERRORS as err:  # CheckpointError, ShardError, too few positives, a manifest without lesion boxes
        return fail(err)
    c = report["counts"]["held_out"]
    lo, hi = report["discriminator_auc_ci"]
    print(f"{args.synthesizer}: discriminator AUC {report['discriminator_auc']:.3f} (95% CI {lo:.3f}-{hi:.3f}) on "
          f"{c['real']} real + {c['synthetic']} synthetic held-out images; Frechet {report['frechet']:.4g}, "
          f"KID {report['kid']:.4g}; {report['seconds']}s; report: {os.path.join(args.out, 'realism.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
