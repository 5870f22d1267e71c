"""Checks of a trainer's input data, made before training, from the shards' metadata and manifest.

Each refuses a command line that would train on the wrong data, or on data that cannot give what
the run promises, with a one-line message that names the option and the fix:

* :func:`check_positives`: ``--positives`` keys that match no lesion image (translator, inpainter, scorer);
* :func:`check_synthesis_options`: synthesis options without ``--stream lesion`` (classifier);
* :func:`check_splits`: a packed folder without its split option, and a training stream that
  holds validation or test images (classifier);
* :func:`check_training_classes`: a kept training set without positives or without normals, and a
  note when ``--positive-ratio`` asks for more positives than there are (classifier);
* :func:`validation_counts` / :func:`check_validation`: a validation set without both classes, whose
  AUC (and so ``best.pt``) would be undefined (classifier);
* :func:`check_calibration_positives`: ``--filter-quantile`` without validation positives (classifier);
* :func:`check_workers`: more ``--workers`` than the training shards can feed (classifier);
* :func:`lesion_box_records`: the manifest's lesion boxes of the images the training stream reads
  (what ``--stream lesion`` matches sites to), refused when none are left.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamaug.data.select import positive_keys, rare_positive_select
from streamaug.data.shardlist import MANIFEST, expand_urls, find_manifest, load_manifest, shard_infos
from streamaug.train.runconfig import option_name

if TYPE_CHECKING:
    from streamaug.train.classifier_data import RunConfig

logger = logging.getLogger(__name__)

#: the classifier options that only the lesion stream uses (all but the site-proposal ones, s, n and
#: blend_n, which the experiment and the demo give every arm alike)
SYNTHESIS_OPTIONS = ("translator", "synthesizer", "inpainter", "paste_rot90", "paste_match", "paste_avoid",
                     "paste_shape", "filter_classifier", "filter_mode", "filter_threshold", "filter_quantile",
                     "synthetic_fraction", "synthetic_per_positive", "match_sources")
TEST_SPLIT = "test"


def spec(shards: Sequence[str]) -> str | list[str]:
    """A shard option's values as a shard spec: the one path, or the list."""
    return shards[0] if len(shards) == 1 else list(shards)


def _where(option: str, shards: Sequence[str], split_option: str, split: str | None, region: str | None) -> str:
    """``--train-shards X (--train-split train, --region lower_limb)``: where samples were looked for."""
    extra = [f"{split_option} {split}"] if split else []
    extra += [f"--region {region}"] if region else []
    return f"{option} {_listed(shards)}" + (f" ({', '.join(extra)})" if extra else "")


def _listed(shards: Sequence[str]) -> str:
    """The values of a shard option, the first three of a long list."""
    return " ".join(shards[:3]) + (f" (and {len(shards) - 3} more)" if len(shards) > 3 else "")


def check_positives(shards: str | Sequence[str], split: str | None, region: str | None,
                    positives: Sequence[str] | None) -> None:
    """Refuse ``--positives`` keys that name no lesion image of the shards (split, region).

    Raises:
        ValueError: naming the keys (the first ten) and where they were looked for.
    """
    if positives is None:
        return
    lesions = positive_keys(shards, split, region)
    missing = [k for k in dict.fromkeys(positives) if k not in lesions]
    if missing:
        names = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        listed = [shards] if isinstance(shards, str) else list(shards)
        raise ValueError(f"--positives: {len(missing)} of {len(set(positives))} keys match no lesion image of "
                         f"{_where('--shards', listed, '--split', split, region)}: {names}; pass keys of positive "
                         "images (their image ids), or leave --positives out to use every positive")


def check_synthesis_options(cfg: RunConfig) -> None:
    """Refuse synthesis options (:data:`SYNTHESIS_OPTIONS` changed from their defaults) without
    ``--stream lesion``: the plain stream would ignore them.

    Raises:
        ValueError: naming the options.
    """
    if cfg.stream == "lesion":
        return
    defaults = {f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING}
    given = [option_name(k) for k in SYNTHESIS_OPTIONS if getattr(cfg, k) != defaults.get(k)]
    if given:
        raise ValueError(f"{', '.join(given)} only apply to synthesis, with --stream lesion, and this run uses "
                         f"--stream {cfg.stream}: add --stream lesion, or leave {'them' if len(given) > 1 else 'it'} "
                         "out")


def _packed_without_split(option: str, shards: Sequence[str], split_option: str, split: str | None) -> None:
    """Refuse a packed folder given without its split (its shards lie in the split folders)."""
    if split is None and len(shards) == 1 and (Path(shards[0]) / MANIFEST).is_file():
        splits = sorted(load_manifest(Path(shards[0]) / MANIFEST)["splits"])
        raise ValueError(f"{option} {shards[0]} is a packed folder: pass {split_option} (one of {', '.join(splits)})")


def _splits_of(urls: Sequence[str]) -> dict[str, str | None]:
    """``{resolved shard path: the manifest split that lists it, or None}``."""
    names: dict[Path, dict[str, str]] = {}
    out: dict[str, str | None] = {}
    for url in urls:
        path = str(Path(url).resolve())
        manifest = find_manifest(url)
        if manifest is not None and manifest not in names:
            root = manifest.parent
            names[manifest] = {str((root / s["name"]).resolve()): split
                               for split, v in load_manifest(manifest)["splits"].items() for s in v["shards"]}
        out[path] = names[manifest].get(path) if manifest is not None else None
    return out


def check_splits(cfg: RunConfig) -> None:
    """Refuse a packed folder without its ``--train-split`` / ``--val-split``, and a training stream
    that reads validation shards or a split named ``test`` (a manifest.json read whole, a list of
    .tar files of several splits): the classifier would train on the images that judge it.

    Raises:
        ValueError: naming the splits (or files) and the fix.
    """
    _packed_without_split("--train-shards", cfg.train_shards, "--train-split", cfg.train_split)
    _packed_without_split("--val-shards", cfg.val_shards, "--val-split", cfg.val_split)
    train = _splits_of(expand_urls(spec(cfg.train_shards), cfg.train_split))
    val = _splits_of(expand_urls(spec(cfg.val_shards), cfg.val_split))
    train_splits = sorted({s for s in train.values() if s is not None})
    val_splits = {s for s in val.values() if s is not None}
    held = [f"the validation split {s}" for s in sorted(val_splits) if s in train_splits] + \
        [f"the test split {TEST_SPLIT}"] * (TEST_SPLIT in train_splits)
    shared = sorted(set(train) & set(val))
    if held or shared:
        if not held:
            what = f"{len(shared)} shard(s) of --val-shards, e.g. {shared[0]}"
        elif len(train_splits) == 1:
            what = f"{' and '.join(held)}"
        else:
            what = f"the splits {', '.join(train_splits)}, among them {' and '.join(held)}"
        fix = ("pass a --val-split other than --train-split" if cfg.train_split is not None and
               cfg.train_split in val_splits else "pass --train-split train (or only the training .tar files)")
        raise ValueError(f"--train-shards {_listed(cfg.train_shards)} reads {what}: the classifier would train on "
                         f"the images that validate or test it; {fix}")


def check_training_classes(cfg: RunConfig, counts: dict[str, int]) -> None:
    """Refuse a kept training set without positives or without normals; note a capped ``--positive-ratio``.

    Args:
        cfg: the run config.
        counts: :func:`~streamaug.data.select.rare_positive_select`'s counts (``positives``,
            ``normals``, ``positives_available``).

    Raises:
        ValueError: naming the counts and the options that chose them.
    """
    where = _where("--train-shards", cfg.train_shards, "--train-split", cfg.train_split, cfg.region)
    pos, neg, available = counts["positives"], counts["normals"], counts["positives_available"]
    if neg == 0 or available == 0:
        raise ValueError(f"{where} hold {available} positive and {neg} normal images: the classifier needs both "
                         "classes; check --region and the shards")
    if pos == 0:
        raise ValueError(f"--positive-ratio {cfg.positive_ratio:g} keeps no positive: round({cfg.positive_ratio:g} x "
                         f"{neg} normals) = 0 of the {available} positives of {where}; raise --positive-ratio above "
                         f"{0.5 / neg:.3g}")
    if cfg.positive_ratio is not None and round(cfg.positive_ratio * neg) > available:
        ratio = cfg.positive_ratio
        logger.warning("note: --positive-ratio %g asks for %d positives (%g x %d normals) but %s hold %d: training on "
                       "all %d (%.3g per normal)", ratio, round(ratio * neg), ratio, neg, where, available, available,
                       available / neg)


def validation_counts(cfg: RunConfig) -> dict[str, int]:
    """``{"positives", "normals", "unknown"}`` among the validation images of ``--region`` (from
    their metadata; ``unknown``: images whose label is unknown, which validation leaves out)."""
    _packed_without_split("--val-shards", cfg.val_shards, "--val-split", cfg.val_split)
    _, counts = rare_positive_select(spec(cfg.val_shards), cfg.val_split, cfg.region, None, 0)
    return {"positives": counts["positives"], "normals": counts["normals"], "unknown": counts["unknown"]}


def check_validation(cfg: RunConfig) -> dict[str, int]:
    """Refuse a validation set without both classes: its AUC, which picks ``best.pt``, is undefined.

    Returns:
        The validation counts (:func:`validation_counts`).

    Raises:
        ValueError: naming the counts and the options that chose them.
    """
    counts = validation_counts(cfg)
    if not counts["positives"] or not counts["normals"]:
        where = _where("--val-shards", cfg.val_shards, "--val-split", cfg.val_split, cfg.region)
        raise ValueError(f"{where} hold {counts['positives']} positive and {counts['normals']} normal images: the "
                         "validation AUC that chooses best.pt needs both; validate on a split with both classes")
    return counts


def check_calibration_positives(cfg: RunConfig) -> None:
    """Refuse ``--filter-quantile`` when the validation set has no positive to calibrate on.

    Raises:
        ValueError: naming the validation shards and the fix.
    """
    if not validation_counts(cfg)["positives"]:
        where = _where("--val-shards", cfg.val_shards, "--val-split", cfg.val_split, cfg.region)
        raise ValueError(f"--filter-quantile calibrates the filter on the validation positives, but {where} hold "
                         "none: validate on a split with positives, or use --filter-threshold")


def check_workers(cfg: RunConfig, select: Callable[[str, dict], bool], world: int) -> None:
    """Refuse more ``--workers`` (times the ranks) than the training shards holding kept samples:
    the stream's readers would fail when the first epoch starts, inside a worker.

    Raises:
        ValueError: naming the shard count and the largest ``--workers`` that works.
    """
    if cfg.workers < 1:
        return
    urls = expand_urls(spec(cfg.train_shards), cfg.train_split)
    filled = sum(bool(i.selected) for i in shard_infos(urls, select=select))
    if filled < world * cfg.workers:
        ranks = f" per rank ({world} ranks)" if world > 1 else ""
        raise ValueError(f"--workers {cfg.workers}: the training stream has {filled} shards with kept samples, too "
                         f"few to give each worker{ranks} one; pass --workers {max(0, filled // world)} or fewer, "
                         "or re-pack with a smaller --shard-size")


def lesion_box_records(cfg: RunConfig, manifest: Path, select: Callable[[str, dict], bool]) -> list[dict[str, Any]]:
    """The manifest's lesion-box records of the images the training stream reads (by their shard;
    by split for a manifest without shard names) that ``select`` keeps: what sites are matched to.

    Raises:
        ValueError: none left, for a synthesizer that places lesions on normals (it needs sites).
    """
    urls = {str(Path(u).resolve()) for u in expand_urls(spec(cfg.train_shards), cfg.train_split)}
    root = manifest.parent
    boxes = load_manifest(manifest).get("lesion_boxes") or []

    def read(r: dict[str, Any]) -> bool:
        if r.get("shard"):
            return str((root / r["shard"]).resolve()) in urls
        return r.get("split") in (cfg.train_split, None)

    records = [r for r in boxes if read(r)
               and select(r["key"], {"region": r.get("region"), "label": r.get("label", "tumor")})]
    if not records and cfg.synthesizer in ("translate", "copy_paste", "mix"):
        where = _where("--train-shards", cfg.train_shards, "--train-split", cfg.train_split, cfg.region)
        raise ValueError(f"--stream lesion places lesions at sites matched to the kept training positives' lesion "
                         f"boxes, but {manifest} lists none for {where} ({len(boxes)} boxes in all); pass the "
                         "packed folder with --train-split train, and check that the positives have boxes")
    return records
