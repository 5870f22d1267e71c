"""Realism of synthetic lesions: can a small CNN tell them from real ones? (issue 14, item 2)

:func:`realism_report` builds two sets of positives from packed shards and scores how far apart they
are. Whole groups (the pseudo-patient; the key when there is none) are dealt in a seeded order into
two *parts*, and each part's real positives onto two *sides*, keeping each label's shares; so no
patient is in both parts and no image on both sides:

* part ``train`` / ``held_out``: models are trained on the train part; every number below is
  computed on the held-out part, which no model here saw and no train-part lesion was cut from;
* side ``real`` / ``donor`` (positives): the real side is what synthetic positives are held
  against; the donor side gives the synthesizer's real lesions (copy-paste crops) or, in the
  ``real`` control (no synthesizer), is itself the other set.

Synthetic positives are made from each part's normals (or, for a synthesizer that makes new positives
from real ones, ``source_label = 1`` as :class:`~streamaug.synth.Inpaint`, from the part's donor-side
positives, their lesion boxes the sites) by :class:`~streamaug.synth.SynthesisStage`
(the stream's stage: sites, bone check, synthesis, blend; no filter) in one pass, one per normal
(or donor) at most, as many as the part has real-side positives (fewer if it has fewer usable sources); the
normals' sites are matched against a site bank less the real side's own lesion boxes. Not
:class:`~streamaug.synth.LesionStream`: its sources draw shards with replacement, so one normal
could come back twice, and on both sides of the train / held-out split.

The numbers (held-out part): ``discriminator_auc``, a tiny CNN (``drn_tiny`` of the registry)
trained to call images synthetic (1) or real (0), 0.5 = indistinguishable, with a CI from
resampling patient groups (:func:`cluster_bootstrap_auc`);
``frechet`` and ``kid`` (:mod:`streamaug.eval.distances`) of the two sets'
features. The features are the pooled penultimate ones of a lesion-vs-normal classifier trained
here on the train part's real positives and normals: no downloaded weights; about what tells a
lesion from bone; not the discriminator's, trained to separate exactly the two sets compared (the
distances would restate its AUC). They are standardized by their mean and deviation on those
training images (a fixed map, so KID's kernel sees inputs of order 1). Both distances are noisy
and biased at small counts: read them against the ``real`` control on the same data.

Real positives and normals also differ outside the lesion (patients, centres, views), so a
discriminator may tell "made from a normal" even for a perfect lesion: the ``unchanged`` synthesizer
of ``streamaug-realism`` (normals as they are) measures that part.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from streamaug.eval.distances import frechet_distance, kernel_distance
from streamaug.eval.realism_grid import save_realism_grid
from streamaug.eval.realism_sites import site_margin, sites_without
from streamaug.eval.stats import bootstrap_auc
from streamaug.models.registry import get_classifier

if TYPE_CHECKING:  # pragma: no cover - the data and synthesis modules load when a report is made
    from streamaug.synth.base import Synthesizer

__all__ = ["DiscriminatorResult", "cluster_bootstrap_auc", "discriminator_auc", "fit_binary", "pooled_features",
           "predict", "realism_report", "save_realism_grid", "synthesize", "unit_draw"]

PARTS = ("train", "held_out")


# -- small binary CNNs on in-memory images ----------------------------------------------------------
def fit_binary(images: torch.Tensor, labels: torch.Tensor, *, arch: str = "drn_tiny", epochs: int = 10,
               batch_size: int = 16, lr: float = 1e-3, flip: bool = True, seed: int = 0,
               device: str | torch.device = "cpu") -> torch.nn.Module:
    """Train a registry classifier (one logit) with BCE and Adam; seeded, and the caller's RNG untouched.

    Args:
        images: ``(N, 1, H, W)`` in ``[0, 1]``; labels: ``(N,)`` in {0, 1}.
        arch: a :func:`~streamaug.models.get_classifier` name.
        epochs, batch_size, lr: passes over the data (reshuffled each time; a last batch of one
            image is dropped), images per step, Adam's learning rate.
        flip: random horizontal flips.
        seed: seeds the weights, the order and the flips; device: where it trains.

    Returns:
        The model, in eval mode, on ``device``.
    """
    device = torch.device(device)
    labels = torch.as_tensor(labels).float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_classifier(arch)().to(device)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:
                continue
            x = images[idx].to(device)
            if flip:
                turn = (torch.rand(len(idx), generator=gen) < 0.5).to(device)
                x = torch.where(turn[:, None, None, None], x.flip(-1), x)
            loss = F.binary_cross_entropy_with_logits(model(x).float().reshape(-1), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def _batched(fn: Callable[[torch.Tensor], torch.Tensor], model: torch.nn.Module, images: torch.Tensor,
             batch_size: int) -> np.ndarray:
    device = next(model.parameters()).device
    out = [fn(images[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out).double().numpy()


def predict(model: torch.nn.Module, images: torch.Tensor, *, batch_size: int = 128) -> np.ndarray:
    """Logits ``(N,)`` float64 of a one-logit model (eval mode) for ``(N, 1, H, W)`` images."""
    return _batched(lambda x: model(x).reshape(-1), model, images, batch_size)


def pooled_features(model: torch.nn.Module, images: torch.Tensor, *, batch_size: int = 128) -> np.ndarray:
    """The penultimate features ``(N, D)`` float64: ``model.features`` averaged over space (the
    input of the registry DRNs' last linear layer; ``D = 32`` for ``drn_tiny``)."""
    return _batched(lambda x: model.features(x).mean((2, 3)), model, images, batch_size)


@dataclass
class DiscriminatorResult:
    """What :func:`discriminator_auc` found on the test sets.

    Attributes:
        auc: ROC AUC of "synthetic" on the test images (0.5: indistinguishable).
        ci: ``(low, high)`` percentile bootstrap interval of the AUC.
        labels: ``(N,)`` 1 synthetic, 0 real, in test order (real first).
        scores: ``(N,)`` the discriminator's logits.
        model: the trained discriminator.
    """

    auc: float
    ci: tuple[float, float]
    labels: np.ndarray
    scores: np.ndarray
    model: torch.nn.Module


def cluster_bootstrap_auc(y: np.ndarray, score: np.ndarray, groups: Sequence[Any], n_boot: int = 2000,
                          seed: int = 0, *, ci: float = 0.95) -> tuple[float, float, float]:
    """ROC AUC with a percentile CI from resampling whole groups (patients), not images.

    Images of one patient (views of one lesion, one anatomy) are not independent, so resampling
    images gives too narrow an interval. Each bootstrap sample draws as many groups as there are,
    with replacement, and weighs each image by its group's count; its AUC is the weighted
    Mann-Whitney statistic (ties count one half). Draws holding one class only are dropped.
    With one image per group this is the ordinary (image) bootstrap.

    Args:
        y: ``(n,)`` labels in {0, 1}, both present; score: ``(n,)`` scores; groups: ``(n,)`` ids.
        n_boot: bootstrap samples; seed: their seed; ci: coverage.

    Returns:
        ``(auc, low, high)``.
    """
    y, score = np.asarray(y).reshape(-1), np.asarray(score, np.float64).reshape(-1)
    _, g = np.unique(np.asarray([str(x) for x in groups]), return_inverse=True)
    pos, neg = score[y == 1], score[y == 0]
    if len(g) != len(y) or not len(pos) or not len(neg):
        raise ValueError("need one group per sample and both classes")
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])  # (n_pos, n_neg)
    n_groups = int(g.max()) + 1
    w = np.random.default_rng(seed).multinomial(n_groups, np.full(n_groups, 1 / n_groups), n_boot)[:, g]
    wp, wn = w[:, y == 1].astype(np.float64), w[:, y == 0].astype(np.float64)
    den = wp.sum(1) * wn.sum(1)
    aucs = np.einsum("bi,ij,bj->b", wp, wins, wn)[den > 0] / den[den > 0]
    lo, hi = np.percentile(aucs, [50 * (1 - ci), 50 * (1 + ci)])
    return float(wins.mean()), float(lo), float(hi)


def discriminator_auc(real_train: torch.Tensor, synthetic_train: torch.Tensor, real_test: torch.Tensor,
                      synthetic_test: torch.Tensor, *, groups: Sequence[Any] | None = None, n_boot: int = 2000,
                      ci: float = 0.95, seed: int = 0, **fit: Any) -> DiscriminatorResult:
    """Train a real-vs-synthetic CNN on the train sets, score the test sets: AUC with a bootstrap CI.

    Args:
        real_train, synthetic_train: ``(N, 1, H, W)`` training images of each kind.
        real_test, synthetic_test: ``(M, 1, H, W)`` held-out images (at least one of each).
        groups: the patient group of each test image (real first), for :func:`cluster_bootstrap_auc`;
            None resamples images (:func:`~streamaug.eval.bootstrap_auc`).
        n_boot: bootstrap samples of the CI; ci: its coverage.
        seed: seeds the training and the bootstrap.
        **fit: passed to :func:`fit_binary` (``arch``, ``epochs``, ``batch_size``, ``lr``, ``device``).

    Returns:
        A :class:`DiscriminatorResult`.
    """
    x = torch.cat([real_train, synthetic_train])
    y = torch.cat([torch.zeros(len(real_train)), torch.ones(len(synthetic_train))])
    model = fit_binary(x, y, seed=seed, **fit)
    labels = np.r_[np.zeros(len(real_test)), np.ones(len(synthetic_test))].astype(np.int64)
    scores = predict(model, torch.cat([real_test, synthetic_test]))
    auc, lo, hi = (bootstrap_auc(labels, scores, n_boot, seed, ci=ci) if groups is None
                   else cluster_bootstrap_auc(labels, scores, groups, n_boot, seed, ci=ci))
    return DiscriminatorResult(auc, (lo, hi), labels, scores, model)


# -- the two sets -----------------------------------------------------------------------------------
def unit_draw(name: str, seed: int, salt: str) -> float:
    """A number in ``[0, 1)`` that depends on ``(name, seed, salt)`` only (SHA-256; any process)."""
    digest = hashlib.sha256(f"streamaug.realism/{salt}/{int(seed)}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0 ** 64


def _group(sample: dict[str, Any]) -> str:
    meta = sample.get("meta") or {}
    group = meta.get("group")
    return f"group:{group}" if group not in (None, "") else f"key:{sample['key']}"


def _split_by(samples: list[dict[str, Any]], seed: int, salt: str, first: float) -> tuple[list, list]:
    """Whole groups into two lists, about ``first`` of each label's images in the first: the groups in
    a seeded order, each put where it leaves the label counts nearest those shares."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for sample in sorted(samples, key=lambda x: unit_draw(str(x["key"]), seed, "order")):
        groups.setdefault(_group(sample), []).append(sample)
    out: tuple[list, list] = ([], [])
    counts, share = np.zeros((2, 2)), np.array([[first], [1 - first]])
    for name in sorted(groups, key=lambda g: unit_draw(g, seed, salt)):
        add = np.bincount([int(x["label"] == 1) for x in groups[name]], minlength=2)
        gaps = [np.abs(np.diff((counts + np.outer(np.arange(2) == i, add)) / share, axis=0)).sum() for i in (0, 1)]
        i = int(np.argmin(gaps))
        counts[i] += add
        out[i].extend(groups[name])
    return out


def synthesize(synthesizer: Synthesizer, normals: list[dict[str, Any]], n: int, *, seed: int = 0,
               batch_size: int = 32, device: str | torch.device = "cpu") -> tuple[list[dict[str, Any]], dict]:
    """At most ``n`` synthetic positives from one pass over ``normals`` (decoded, with ``sites``), one
    per normal at most, by a :class:`~streamaug.synth.SynthesisStage` seeded with ``seed`` that runs
    ``batch_size`` normals a round on ``device``.

    Returns:
        ``(samples, stats)``: synthetic sample dicts (``synthetic`` True, ``provenance``, ``boxes``
        = the site, image on the CPU) and the stage's :attr:`~streamaug.synth.SynthesisStage.stats`.
    """
    from streamaug.data.collate import collate_xray, unbatch
    from streamaug.synth.stage import SynthesisStage

    stage = SynthesisStage(synthesizer=synthesizer, fraction=1.0, seed=seed, device=device)
    made: list[dict[str, Any]] = []
    start = 0
    while len(made) < n and start < len(normals):  # no more normals than needed (a dark site may drop one)
        batch = normals[start:start + min(batch_size, n - len(made))]
        start += len(batch)
        made += [s for s in unbatch(stage.apply(collate_xray(batch))) if s["synthetic"]]
    for s in made:
        s["image"] = s["image"].cpu()
    return made[:n], stage.stats


def _stack(samples: list[dict[str, Any]]) -> torch.Tensor:
    return torch.stack([s["image"].float() for s in samples])


def realism_report(shards: str | Sequence[str], out: str | os.PathLike, *,
                   make_synthesizer: Callable[[list[dict[str, Any]]], Synthesizer] | None,
                   split: str | None = "train", region: str | None = None, image_size: int = 128,
                   sites: Any = None, held_out: float = 0.5, arch: str = "drn_tiny", epochs: int = 10,
                   batch_size: int = 16, lr: float = 1e-3, n_boot: int = 2000, seed: int = 0,
                   device: str | torch.device = "cpu", grid_samples: int = 8, name: str = "real",
                   settings: dict[str, Any] | None = None,
                   trained_on: Collection[str] | None = None) -> dict[str, Any]:
    """Build the two sets, train the discriminator and the feature classifier, write the report.

    Args:
        shards: packed shards (a folder with ``manifest.json``, a manifest or shard list).
        out: output folder; gets ``realism.json`` and ``grid.png``.
        make_synthesizer: ``donors -> Synthesizer``, called once per part with that part's donor-side
            real positives; None for the ``real`` control (the donor side is the other set). A
            synthesizer with ``source_label = 1`` makes its positives from those donors.
        split: split of ``shards``.
        region: only images of this region (None: all).
        image_size: side every image is read, synthesized and judged at.
        sites: a :class:`~streamaug.SiteProposer` for the normals (needed with a synthesizer); the
            records of the real-side positives are dropped from its bank first, so that no synthetic
            lesion sits at a copy of a real-side lesion box.
        held_out: share of the groups in the held-out part.
        arch, epochs, batch_size, lr: the discriminator's and the feature classifier's training.
        n_boot: bootstrap samples of the AUC's 95 % CI.
        seed: seeds the parts, sides, synthesis, training and bootstrap.
        device: where synthesis and training run.
        grid_samples: columns of ``grid.png``.
        name: what the synthetic side is (the command's SPEC), stored as ``synthesizer``.
        settings: more settings to store (e.g. the site proposer's), as ``settings``.
        trained_on: keys of the positives the synthesizer was trained on (a checkpoint's; empty for
            one that trains on nothing), for ``synthesizer_training_overlap``; None: not known.

    Returns:
        The report (also written to ``out/realism.json``): ``discriminator_auc``,
        ``discriminator_auc_ci``, ``frechet``, ``kid``, ``feature_classifier_auc`` (held-out AUC of
        the feature network: are its features about lesions at all?), ``counts``, ``keys`` (of
        each part: ``real``, ``synthetic`` (a made one is its normal's key + ``-syn``) and
        ``donor``), ``synthesizer_training_overlap`` (``overlap``: whether held-out real-side positives
        are among ``trained_on``, True, False or ``"unknown"``; ``shared``: how many), ``site_bank``,
        ``seconds``, ...

    Raises:
        ValueError: a part with under 2 real- or donor-side positives (checked first), or under 2 made.
        ShardError: unreadable ``shards``, a ``split`` they lack, or no sample of ``region``.
    """
    from streamaug.data.select import KeySelect, LabelSelect
    from streamaug.data.stream import XRayShards
    from streamaug.synth.sources import source_label, source_sites

    t0, out = time.perf_counter(), Path(out)
    if (make_synthesizer is not None and sites is None) or not 0 < held_out < 1:
        raise ValueError(f"need sites= (a SiteProposer) with a synthesizer, and 0 < held_out < 1 (got {held_out})")
    positives, normals = (list(XRayShards(shards, split=split, shuffle=False, resize=image_size, equalize="none",
                                          select=LabelSelect(y, KeySelect(region)), distributed=False))
                           for y in (1, 0))
    real, donor, normal = {}, {}, {}
    for part, in_part in zip(PARTS, _split_by(positives + normals, seed, "part", 1 - held_out)):
        real[part], donor[part] = _split_by([x for x in in_part if x["label"] == 1], seed, "side", 0.5)
        normal[part] = [x for x in in_part if x["label"] == 0]
    for part in PARTS:  # before any synthesis: a synthesizer's complaint about no donors would hide this
        if min(len(real[part]), len(donor[part])) < 2:
            raise ValueError(f"the {part} part has {len(real[part])} real-side and {len(donor[part])} donor-side "
                             f"positives ({len(positives)} read in split {split!r}, region {region or 'all'}); need "
                             "2 of each: more data, or another --held-out or --region")
    sites, dropped = sites_without(sites, {str(x["key"]) for p in PARTS for x in real[p]})
    other, synthesis, synth = {}, {}, None
    for i, part in enumerate(PARTS):
        if make_synthesizer is None:
            other[part] = donor[part][:len(real[part])]
        else:
            synth = make_synthesizer(donor[part])
            # new positives from real ones (Inpaint): the donor side, each at its own lesion boxes
            sources = [source_sites(synth)(dict(x)) for x in donor[part]] \
                if source_label(synth) == 1 else [sites(x) for x in normal[part]]
            other[part], stats = synthesize(synth, sources, len(real[part]), seed=seed + i, device=device)
            synthesis[part] = {**synth.describe(), **{k: stats[k] for k in ("generated", "accepted", "dark_crops")}}
            if len(other[part]) < 2:
                raise ValueError(f"{name} made {len(other[part])} positives from the {len(sources)} sources of the "
                                 f"{part} part; need 2: more normals with sites, or another --synthesizer")
    fit = {"arch": arch, "epochs": epochs, "batch_size": batch_size, "lr": lr, "device": device}
    disc = discriminator_auc(*(_stack(x[p]) for p in PARTS for x in (real, other)), n_boot=n_boot, seed=seed,
                             groups=[_group(s) for s in real["held_out"] + other["held_out"]], **fit)
    pos_train, pos_test = real["train"] + donor["train"], real["held_out"] + donor["held_out"]
    train_x = torch.cat([_stack(pos_train), _stack(normal["train"])])
    train_y = torch.cat([torch.ones(len(pos_train)), torch.zeros(len(normal["train"]))])
    feature_model = fit_binary(train_x, train_y, seed=seed + 1, **fit)
    test = pos_test + normal["held_out"]
    feature_auc = cluster_bootstrap_auc([s["label"] for s in test], predict(feature_model, _stack(test)),
                                        [_group(s) for s in test], n_boot, seed)
    ref = pooled_features(feature_model, train_x)  # standardized by the training images' features: a fixed map
    mean, sd = ref.mean(0), np.where(ref.std(0) > 1e-6, ref.std(0), 1.0)
    fa, fb = ((pooled_features(feature_model, _stack(side)) - mean) / sd
              for side in (real["held_out"], other["held_out"]))
    grid = save_realism_grid(out / "grid.png", real["held_out"], other["held_out"], grid_samples,
                             other="held-apart real" if make_synthesizer is None else name,
                             site_margin=site_margin(synth, sites))
    held_real = {str(x["key"]) for x in real["held_out"]}
    shared = None if trained_on is None else len(held_real & {str(k) for k in trained_on})
    report = {
        "synthesizer": name, "settings": settings, "shards": shards if isinstance(shards, str) else list(shards),
        "split": split, "region": region, "image_size": image_size, "seed": seed,
        "discriminator_auc": disc.auc, "discriminator_auc_ci": list(disc.ci), "frechet": frechet_distance(fa, fb),
        "kid": kernel_distance(fa, fb), "feature_classifier_auc": feature_auc[0],
        "feature_classifier_auc_ci": list(feature_auc[1:]),
        "counts": {
            "discriminator_train": {"real": len(real["train"]), "synthetic": len(other["train"])},
            "held_out": {"real": len(real["held_out"]), "synthetic": len(other["held_out"])},
            "feature_classifier_train": {"positives": len(pos_train), "normals": len(normal["train"])},
            "feature_classifier_held_out": {"positives": len(pos_test), "normals": len(normal["held_out"])},
            "read": {"positives": len(positives), "normals": len(normals),
                     "donor_side": {p: len(donor[p]) for p in PARTS}}},
        "keys": {p: {side: [str(x["key"]) for x in sets[p]] for side, sets in
                     (("real", real), ("synthetic", other), ("donor", donor))} for p in PARTS},
        "features": f"pooled penultimate features (D={fa.shape[1]}) of a {arch} lesion-vs-normal classifier "
                    "trained on the real positives and normals of the train part, standardized by their mean and "
                    "standard deviation on those training images",
        "discriminator": {**fit, "device": str(device), "n_boot": n_boot, "ci_level": 0.95,
                          "ci": "percentile bootstrap over patient groups", "label": "1 = synthetic, 0 = real"},
        "synthesizer_training_overlap": {"overlap": "unknown" if shared is None else shared > 0, "shared": shared},
        "site_bank": None if sites is None else {"records": len(getattr(sites, "bank", None) or ()),
                                                 "real_side_dropped": dropped},
        "synthesis": synthesis or None, "grid": grid.name, "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "realism.json").write_text(json.dumps(report, indent=2))
    return report
