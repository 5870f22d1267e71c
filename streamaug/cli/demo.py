"""``python -m streamaug.cli.demo``: the whole method, end to end, in a few minutes on a laptop CPU.

1. write a procedural phantom set laid out like BTXRD (or use ``--data DIR``), pack it to shards;
2. make positives rare (1 lesion : 10 normals, drawn with the seed); the synthetic positives come
   from the KEPT positives only (no lesion the classifiers cannot see): by default copy-paste, crops
   of their lesion boxes pasted at sites of normal images with the cosine blend (``--synthesizer
   translate`` trains a tiny UNIT translator on their patches instead, ``mix`` uses both);
3. train a baseline classifier on the rare-positive training set, every kept positive shown
   ``1 + r`` times per epoch (oversampling, the copies spread over the epoch);
4. train the same classifier (same preset, epochs, batch size, learning rate, seed and real data) on
   the on-the-fly lesion stream: each epoch every real sample once plus ``r`` synthetic positives per
   kept positive, so both arms see the same number of samples and of positives per epoch and differ
   only in what the extra positives are (copies or synthetic); the baseline is the pseudo-label filter
   in rank mode (the best-scored candidates of each synthesis round, as many as asked);
5. report test AUC (bootstrap 95 % CI, resampling patients: the phantom's images come in pseudo-patients
   of 1-3) of both, the paired difference, what each arm trained on, and
   write a ROC curve and a sample grid (original / synthesized / blended).

Why copy-paste by default: the tiny UNIT translator that trains on a CPU in the demo's minutes paints
no lytic lesion on these phantoms (its patches are blotchy squares), and at 96 px its synthetic
positives made the classifier worse than repeating the real ones. The translator needs a GPU budget.

Why 16 epochs: with 8, the baseline often stayed near chance (test AUC 0.49-0.69 over seeds 0-9 on one
machine, 0.64-0.69 at seeds 0-2 on another: the single run swings with the machine's float
arithmetic) and copy-paste's gain was significant at 7 of 10 seeds; with 16 the baseline is stronger
(+0.057 AUC on average) and the gain, +0.09 to +0.31, significant at all ten (``benchmarks/RESULTS.md``).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)
SYNTHESIZERS = ("translate", "copy_paste", "mix")


def _sample_grid(path: Path, synthesizer: Any, shards: Path, size: int, select: Any = None, n: int = 6) -> Path:
    """Original / synthesized / blended for ``n`` test normals, through the device stage with the
    augmented arm's ``synthesizer`` (sites matched to the lesion boxes that ``select`` keeps)."""
    from streamaug.data.collate import collate_xray
    from streamaug.data.stream import XRayShards
    from streamaug.eval.plots import save_sample_grid
    from streamaug.synth.ops import paste_blend
    from streamaug.synth.stage import SynthesisStage

    normals = [s for s in XRayShards(shards, split="test", shuffle=False, resize=size, sites=True, select=select,
                                     equalize="none") if s["label"] == 0 and len(s["sites"])][:n]
    batch = collate_xray(normals)
    stage = SynthesisStage(synthesizer=synthesizer, min_intensity=None)
    boxes, source = stage.choose_sites(batch["sites"], list(range(len(normals))))
    result = stage.synthesize(batch["image"], boxes, source)
    if result.translated is None:  # a Mix of synthesizers with different patch sizes keeps no patches
        rows = [torch.stack([batch["image"][i], result.images[j]]) for j, i in enumerate(result.source.tolist())]
        return save_sample_grid(path, rows, titles=("original", "blended"))
    # the raw synthesized patch pasted with a (near) flat mask, beside the cosine-blended result
    flat_n = 1e6  # cos(|i|^n * pi/2) -> 1 inside the site for large n
    translated = paste_blend(batch["image"][result.source], result.translated, result.boxes,
                             torch.arange(len(result.boxes)), n=flat_n)
    rows = [torch.stack([batch["image"][i], translated[j], result.images[j]])
            for j, i in enumerate(result.source.tolist())]
    return save_sample_grid(path, rows, titles=("original", "synthesized", "blended"))


def _both_labels(counts: dict[str, dict[int, int]], where: str, fix: str) -> None:
    """Refuse data whose train, val or test split lacks normal or lesion images (``counts``: split ->
    label -> images)."""
    for split in ("train", "val", "test"):
        got = counts.get(split, {})
        lacking = [name for label, name in ((0, "normal"), (1, "lesion")) if not got.get(label)]
        if lacking:
            raise ValueError(f"{where} leaves the {split} split without {' or '.join(lacking)} images "
                             f"({got.get(0, 0)} normal, {got.get(1, 0)} lesion); the demo trains on train, picks "
                             f"on val and scores test, each with both: {fix}")


def _kept(positives: int, normals: int, ratio: float, where: str) -> None:
    """Refuse a ``--positive-ratio`` that keeps no training positive (``round(ratio x normals)``)."""
    if min(positives, round(ratio * normals)) < 1:
        raise ValueError(f"--positive-ratio {ratio:g} keeps round({ratio:g} x {normals} training normals) = "
                         f"{round(ratio * normals)} of the {positives} training positives of {where}; raise "
                         "--positive-ratio or the number of normals")


def check_demo(out: Path, data: Path | None, *, n_normal: int, n_lesion: int, image_size: int, epochs: int,
               translator_steps: int, positive_ratio: float, synthetic_per_positive: float, synthesizer: str,
               paste_shape: str, seed: int, device: str) -> None:
    """Check every argument of :func:`run_demo` before any work (a phantom set: its splits too).

    Raises:
        ValueError: the message names the option (``--n-normal``, ...) and the fix.
    """
    from streamaug._commands import check_at_least, check_device, check_folder_to_write
    from streamaug.phantom.writer import split_counts

    if synthesizer not in SYNTHESIZERS:
        raise ValueError(f"--synthesizer must be one of {SYNTHESIZERS}, got {synthesizer!r}")
    if paste_shape not in ("box", "mask"):
        raise ValueError(f"--paste-shape must be box or mask, got {paste_shape!r}")
    if int(synthetic_per_positive) != synthetic_per_positive or synthetic_per_positive < 1:
        raise ValueError(f"--synthetic-per-positive must be a whole number >= 1 (the baseline shows each positive "
                         f"1 + r times), got {synthetic_per_positive}")
    check_at_least(image_size, 32, "--image-size", "pixels a side; smaller lesions fall between pixels")
    check_at_least(epochs, 1, "--epochs")
    check_at_least(translator_steps, 1, "--translator-steps")
    if not 0 < positive_ratio < float("inf"):
        raise ValueError(f"--positive-ratio must be > 0 (training positives kept per normal), got {positive_ratio}")
    check_device(device)
    check_folder_to_write(out, "--out")
    if data is not None:
        if not data.is_dir():
            raise ValueError(f"--data {data}: {'a file' if data.exists() else 'no such folder'}; give a folder "
                             "laid out like BTXRD (metadata.csv, images/), or leave --data out for phantoms")
        if not (data / "metadata.csv").is_file():
            raise ValueError(f"--data {data} has no metadata.csv; give a folder laid out like BTXRD (metadata.csv "
                             "with image and label columns, images/)")
        return
    check_at_least(n_normal, 0, "--n-normal")
    check_at_least(n_lesion, 0, "--n-lesion")
    where = f"--n-normal {n_normal} --n-lesion {n_lesion} (--seed {seed})"
    counts = split_counts(n_normal, n_lesion, seed=seed)
    _both_labels(counts, where, "ask for more images (the defaults are 600 and 300)")
    _kept(counts["train"][1], counts["train"][0], positive_ratio, where)


def run_demo(out: Path, data: Path | None = None, *, n_normal: int = 600, n_lesion: int = 300,
             image_size: int = 96, epochs: int = 16, translator_steps: int = 300, positive_ratio: float = 0.1,
             synthetic_per_positive: float = 3.0, synthesizer: str = "copy_paste", paste_shape: str = "box",
             seed: int = 0, device: str = "cpu") -> dict:
    """Run the demo into ``out``; returns the summary dict (also written to ``out/summary.json``).

    Raises:
        ValueError: a bad argument (see :func:`check_demo`, run before any work), or ``data`` whose
            packed splits lack a label or keep no training positive.
    """
    check_demo(out, data, n_normal=n_normal, n_lesion=n_lesion, image_size=image_size, epochs=epochs,
               translator_steps=translator_steps, positive_ratio=positive_ratio,
               synthetic_per_positive=synthetic_per_positive, synthesizer=synthesizer, paste_shape=paste_shape,
               seed=seed, device=device)
    from streamaug.cli.pack import pack
    from streamaug.data.select import rare_positive_select
    from streamaug.eval import bootstrap_auc, is_significant, paired_bootstrap, plot_roc
    from streamaug.eval.experiment import groups_of_keys, patient_groups, training_makeup
    from streamaug.eval.scoring import score_checkpoint
    from streamaug.io.labels import to_int_label
    from streamaug.models.checkpoint import load_classifier
    from streamaug.phantom import write_phantom_dataset
    from streamaug.train.classifier import train_classifier
    from streamaug.train.classifier_data import RunConfig, build_synthesizer
    from streamaug.train.translator import TranslatorRun, chosen_checkpoint, train_translator

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    for run in ("translator", "baseline", "augmented"):  # the demo's own runs: a re-run starts them afresh
        shutil.rmtree(out / run, ignore_errors=True)
    bars = sys.stderr.isatty()  # progress bars only on a terminal, never into a log file
    if data is None:
        logger.info("[1/5] writing %d normal + %d lesion phantom radiographs", n_normal, n_lesion)
        data = write_phantom_dataset(out / "phantom", n_normal, n_lesion, size=(128, 128), seed=seed, progress=bars)
    shards = out / "shards"
    logger.info("[1/5] packing %s -> %s", data, shards)
    manifest = pack(data, Path(data) / "metadata.csv", shards, shard_size=64, overwrite=True, progress=bars)
    counts = {name: {label: sum(n for lab, n in split["labels"].items() if to_int_label(lab) == label)
                     for label in (0, 1)} for name, split in manifest["splits"].items()}
    _both_labels(counts, f"--data {data}", "give --data whose metadata.csv has a split column "
                 "with train, val and test, each with normal and lesion images")
    select, kept = rare_positive_select(str(shards), "train", None, positive_ratio, seed)
    _kept(kept["positives_available"], kept["normals"], positive_ratio, f"--data {data}")
    translator = None
    if synthesizer in ("translate", "mix"):
        logger.info("[2/5] training a tiny UNIT translator (normal -> lesion patches) on the %d kept positives "
                    "(of %d) and %d normals", kept["positives"], kept["positives_available"], kept["normals"])
        translator = train_translator(TranslatorRun(
            shards=[str(shards)], out=str(out / "translator"), preset="tiny", steps=translator_steps, s=1.5, n=5,
            split="train", seed=seed, device=device, sample_every=max(1, translator_steps // 3),
            positives=sorted(select.positives or ())))
        translator = chosen_checkpoint(translator.parent)  # its best held-out step
    else:
        logger.info("[2/5] copy-paste: crops of the %d kept positives (of %d) pasted at sites of the %d normals",
                    kept["positives"], kept["positives_available"], kept["normals"])
    # one classifier recipe for both arms: they differ only in what the extra positives are
    extra = int(synthetic_per_positive)
    common = dict(train_shards=[str(shards)], val_shards=[str(shards)], train_split="train", val_split="val",
                  image_size=image_size, epochs=epochs, batch_size=32, positive_ratio=positive_ratio, seed=seed,
                  device=device, lr=1e-3, s=1.5, n=5)
    logger.info("[3/5] baseline classifier, positives cut to %g per normal, each shown %d times per epoch",
                positive_ratio, 1 + extra)
    base = train_classifier(RunConfig(out=str(out / "baseline"), oversample=1 + extra, **common))
    base_extra = load_classifier(base).extra
    logger.info("[4/5] classifier on the lesion stream (%d synthetic positives per kept positive and epoch; "
                "the baseline ranks the candidates)", extra)
    aug_cfg = RunConfig(out=str(out / "augmented"), stream="lesion", synthesizer=synthesizer,
                        translator=str(translator) if translator else None, filter_classifier=str(base),
                        filter_mode="rank", synthetic_per_positive=float(extra), paste_shape=paste_shape, **common)
    aug = train_classifier(aug_cfg)
    logger.info("[5/5] scoring the test split")
    y, s_base, keys = score_checkpoint(base, shards, split="test", image_size=image_size, device=device)
    _, s_aug, _ = score_checkpoint(aug, shards, split="test", image_size=image_size, device=device)
    groups = groups_of_keys(keys, patient_groups(shards, "test"))  # a patient's images are resampled together
    auc_b, auc_a = (bootstrap_auc(y, s, seed=seed, groups=groups) for s in (s_base, s_aug))
    delta = paired_bootstrap(y, s_base, s_aug, seed=seed, groups=groups)
    roc = plot_roc(out / "roc.png", {"baseline": (y, s_base), "augmented": (y, s_aug)}, title="demo test ROC")
    grid = _sample_grid(out / "samples.png", build_synthesizer(aug_cfg, select, device), shards, image_size, select)
    trained = {name: training_makeup(load_classifier(out / name / "last.pt").extra.get("history", []))
               for name in ("baseline", "augmented")}
    summary = {
        "test_images": len(y), "test_positives": int(y.sum()), "positive_ratio": positive_ratio,
        "test_patients": len(set(groups)) if groups else None,
        "kept_positives": kept["positives"], "normals": kept["normals"],
        "baseline_auc": auc_b, "augmented_auc": auc_a, "delta": delta, "significant": is_significant(delta),
        "synthesizer": synthesizer, "paste_shape": paste_shape, "filter": "rank", "trained_on": trained,
        "baseline_val_auc": base_extra.get("val_auc"),
        "roc_png": str(roc), "samples_png": str(grid), "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    fmt = lambda a: f"{a[0]:.3f} (95% CI {a[1]:.3f}-{a[2]:.3f})"  # noqa: E731
    print("\n=== streamaug demo ===")
    print(f"test set: {len(y)} images" + (f" of {summary['test_patients']} patients" if groups else "")
          + f", {int(y.sum())} with lesions; training positives cut to "
          f"{positive_ratio:g}/normal ({kept['positives']} kept of {kept['positives_available']}, "
          f"{kept['normals']} normals); baseline: each positive {1 + extra}x per epoch, augmented: "
          f"{extra} synthetic per positive instead of the copies")
    for name, t in trained.items():
        print(f"{name:9s} trained on {t['samples'] // max(1, t['epochs'])} samples/epoch: "
              f"{t['real_positive'] // max(1, t['epochs'])} real positive, {t['synthetic'] // max(1, t['epochs'])} "
              f"synthetic" + (f" ({t['generated'] / t['accepted']:.1f} candidates scored per accepted)"
                              if t["accepted"] else ""))
    print(f"baseline AUC : {fmt(auc_b)}")
    print(f"augmented AUC: {fmt(auc_a)}")
    print(f"difference   : {delta[0]:+.3f} (95% CI {delta[1]:+.3f} to {delta[2]:+.3f})"
          f"{' significant' if summary['significant'] else ' not significant'}")
    print(f"ROC curves   : {roc}\nsample grid  : {grid}\nsummary      : {out / 'summary.json'}")
    print(f"took {summary['seconds']}s")
    return summary


def build_parser() -> argparse.ArgumentParser:
    """The demo's options (each with help)."""
    p = argparse.ArgumentParser(prog="python -m streamaug.cli.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo_out"),
                   help="output folder: data, shards, runs, roc.png, samples.png, summary.json (default: %(default)s)")
    p.add_argument("--data", type=Path, default=None,
                   help="a folder laid out like BTXRD (metadata.csv, images/); default: write a phantom set")
    p.add_argument("--n-normal", type=int, default=600, help="phantom normal images (default: %(default)s)")
    p.add_argument("--n-lesion", type=int, default=300, help="phantom lesion images (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=96,
                   help="side the classifiers see images at (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=16, help="epochs of each classifier (default: %(default)s)")
    p.add_argument("--translator-steps", type=int, default=300,
                   help="training steps of the UNIT translator (default: %(default)s)")
    p.add_argument("--positive-ratio", type=float, default=0.1,
                   help="training positives kept per normal, to make them rare (default: %(default)s)")
    p.add_argument("--synthetic-per-positive", type=int, default=3,
                   help="r: the augmented arm adds r synthetic positives per kept positive and epoch, the "
                        "baseline r copies of each (same samples and positives per epoch; default: %(default)s)")
    p.add_argument("--synthesizer", choices=SYNTHESIZERS, default="copy_paste",
                   help="what makes the augmented arm's synthetic positives: translate (a tiny UNIT translator "
                        "trained here), copy_paste (crops of the kept positives pasted at normal sites), or mix "
                        "(both, half and half) (default: %(default)s)")
    p.add_argument("--paste-shape", choices=("box", "mask"), default="box",
                   help="copy_paste, mix: paste each lesion crop whole (box) or only the lesion by its feathered "
                        "mask (mask) (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, selection and training (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; 0: torch's default (default: %(default)s; more threads than free cores "
                        "make every step many times slower)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``streamaug-demo``: parse the options, log progress to stderr, run :func:`run_demo`; the exit code."""
    from streamaug._commands import USER_ERRORS, fail

    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.threads < 0:
        return fail(f"--threads must be >= 0 (0: torch's default), got {a.threads}")
    if a.threads:
        # one by default: on a shared machine with fewer free cores than threads, torch's spinning
        # threads make every step many times slower (the demo's translator: 100 steps in 46 s with one
        # thread, 58 steps in 11 minutes with two, at load 8 on 2 cores)
        torch.set_num_threads(a.threads)
    try:
        run_demo(a.out, a.data, n_normal=a.n_normal, n_lesion=a.n_lesion, image_size=a.image_size,
                 epochs=a.epochs, translator_steps=a.translator_steps, positive_ratio=a.positive_ratio,
                 synthetic_per_positive=a.synthetic_per_positive, synthesizer=a.synthesizer,
                 paste_shape=a.paste_shape, seed=a.seed, device=a.device)
    except USER_ERRORS as err:  # every argument is checked before any work; these are the data's
        return fail(err)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
