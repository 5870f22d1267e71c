"""Checkpoints: one atomic writer, one validating reader, one error type, for every model kind.

The config lives next to the weights (the nanoGPT habit), so a path alone rebuilds the model. A
checkpoint is a ``torch.save``'d dict of plain Python types and tensors only, so it loads with
``torch.load(weights_only=True)`` (no pickled classes, no code execution). Three formats:

* translators, ``streamaug-translator/1`` (:func:`save_translator` / :func:`load_translator`)::

    {"format": "streamaug-translator/1", "streamaug_version": "0.1.0", "model": "unit",
     "config": {...}, "patch_size": 128, "s": 2.0, "region": "humerus",
     "manifest_sha256": "...", "step": 20000, "weights": {name: tensor},
     "extra": {...} | None, "trainer_state": {...} | None}

  ``s`` is the patch-size factor of Gupta et al. §3.2 (patch side = ``s`` x larger box side) and
  ``region`` the body part the translator was trained on; both travel to the synthesis stage.

* classifiers, ``streamaug-classifier/1`` (:func:`save_classifier` / :func:`load_classifier`)::

    {"format": "streamaug-classifier/1", "streamaug_version": "0.1.0", "arch": "drn", "config": {...},
     "state_dict": {name: tensor}, "extra": {...}, "torch": "2.x"}

  ``arch`` is a :func:`~streamaug.models.registry.get_classifier` name whose factory takes the
  config as keywords; ``extra`` holds the run config, epoch, validation AUC and, in a trainer's
  ``last.pt``, the optimizer state for ``--resume``.

Every refusal is a :class:`CheckpointError` (a ``ValueError``) whose message names the file and
the fix.

* inpainters, ``streamaug-inpainter/1`` (:func:`save_inpainter` / :func:`load_inpainter`)::

    {"format": "streamaug-inpainter/1", "streamaug_version": "0.1.0", "model": "pix2pix",
     "config": {...}, "image_size": 256, "data_sha256": "...", "step": 20000,
     "weights": {name: tensor}, "extra": {...} | None, "trainer_state": {...} | None}

  ``model`` is a :func:`~streamaug.models.registry.get_inpainter` name (Xing et al.'s pix2pix);
  ``extra`` holds the trainer's run config and data counts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn as nn

from streamaug.models.devices import device_problem
from streamaug.models.registry import get_classifier, get_inpainter, get_translator

if TYPE_CHECKING:  # pragma: no cover - for editors and type checkers only
    from streamaug.models.drn import DRN, DRNConfig

__all__ = ["FORMAT", "CLASSIFIER_FORMAT", "CheckpointError", "LoadedClassifier", "save_checkpoint",
           "read_checkpoint", "save_translator", "load_translator", "save_classifier", "load_classifier",
           "INPAINTER_FORMAT", "save_inpainter", "load_inpainter", "device_problem"]

FORMAT = "streamaug-translator/1"
CLASSIFIER_FORMAT = "streamaug-classifier/1"
INPAINTER_FORMAT = "streamaug-inpainter/1"


@dataclass(frozen=True)
class _Kind:
    """What one checkpoint kind must hold, and how to make a good one (for error messages)."""

    format: str
    required: tuple[str, ...]
    fix: str


_KINDS = {
    "translator": _Kind(FORMAT, ("format", "model", "config", "patch_size", "s", "region", "manifest_sha256",
                                 "step", "weights"),
                        "re-export it with streamaug.models.checkpoint.save_translator (or retrain the translator "
                        "with `streamaug-train translator`)"),
    "classifier": _Kind(CLASSIFIER_FORMAT, ("format", "arch", "config", "state_dict"),
                        "pass a classifier checkpoint written by save_classifier (best.pt or last.pt of "
                        "`streamaug-train classifier`), or retrain the classifier"),
    "inpainter": _Kind(INPAINTER_FORMAT, ("format", "model", "config", "image_size", "data_sha256", "step",
                                          "weights"),
                       "pass the inpainter.pt that `streamaug-train inpainter` writes (or re-export the model "
                       "with streamaug.models.checkpoint.save_inpainter)"),
}


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message names the file and the fix."""


def _check_plain(obj: Any, where: str) -> None:
    """Raise ``TypeError`` unless ``obj`` is built from str/int/float/bool/None/tensors/lists/tuples/dicts."""
    if obj is None or isinstance(obj, (str, int, float, bool, torch.Tensor)):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: dict key {k!r} must be str or int")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where}: {type(obj).__name__} cannot be stored (plain types and tensors only)")


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _version() -> str:
    from streamaug import __version__

    return __version__


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically (temp file + rename), after checking it holds plain types only.

    Args:
        path: destination file (``.pt``); parent folders are created.
        payload: the checkpoint dict; its ``format`` names the kind.

    Returns:
        The written path.

    Raises:
        TypeError: ``payload`` holds objects other than plain types and tensors (they would not load
            with ``weights_only=True``); the message names the offending key.
    """
    _check_plain(payload, "checkpoint")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu",
                    kind: str = "translator") -> dict[str, Any]:
    """Load and validate a checkpoint dict (tensors on ``device``); for resume and inspection.

    Args:
        path: the checkpoint file.
        device: ``map_location`` of the tensors.
        kind: ``"translator"``, ``"classifier"`` or ``"inpainter"``: which format and keys the file must have.

    Returns:
        The checkpoint dict.

    Raises:
        CheckpointError: missing, unreadable or truncated file, not a checkpoint, a checkpoint of the
            other kind or format version, a missing key, or a ``device`` this machine lacks (the file is
            then not read). The message names the file and the fix.
    """
    path = Path(path)
    spec = _KINDS[kind]
    if not path.is_file():
        raise CheckpointError(f"{path}: no such {kind} checkpoint file; check the path")
    problem = device_problem(device)
    if problem:  # torch.load would blame the file for it
        raise CheckpointError(f"{path}: not read: device {str(device)!r} is not available: {problem}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - garbage raises anything (struct.error, EOFError, ...): named below
        raise CheckpointError(
            f"{path}: not a readable streamaug {kind} checkpoint (truncated or another file type: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); {spec.fix}"
        ) from err
    found = ckpt.get("format") if isinstance(ckpt, dict) else None
    if found != spec.format:
        other = next((k for k, s in _KINDS.items() if s.format == found), None)
        if other:
            what = f"{_a(other)} checkpoint, not {_a(kind)} one"
        elif found:
            what = f"written by streamaug_version={ckpt.get('streamaug_version')!r}; use that version"
        else:
            what = "not a streamaug checkpoint"
        raise CheckpointError(f"{path}: checkpoint format {found!r} ({what}); this streamaug ({_version()}) "
                              f"reads {spec.format!r} here; {spec.fix}")
    missing = [k for k in spec.required if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks keys {missing}; {spec.fix}")
    return ckpt


def save_translator(path: str | os.PathLike, model: nn.Module, *, config: Any, patch_size: int, s: float,
                    region: str, manifest_sha256: str, step: int, extra: dict[str, Any] | None = None,
                    trainer_state: dict[str, Any] | None = None) -> Path:
    """Write a translator checkpoint atomically (temp file + rename).

    Args:
        path: destination file (``.pt``); parent folders are created.
        model: a registered translator (its class has a ``name``).
        config: the translator config (dataclass with ``to_dict()``, or a plain dict).
        patch_size: patch side ``P`` the model was trained on; must equal ``model.patch_size``.
        s: patch-size factor (Gupta et al. §3.2).
        region: body part / region name.
        manifest_sha256: sha256 of the shard manifest the patches came from (provenance).
        step: training step.
        extra: optional plain-typed metadata (e.g. the resolved run config).
        trainer_state: optional optimizer state for resume (e.g. ``UNITTrainer.state_dict()``).

    Returns:
        The written path.

    Raises:
        TypeError: ``extra``/``trainer_state``/config hold non-plain objects.
        ValueError: the model is not registered or ``patch_size`` disagrees with the model.
    """
    name = getattr(type(model), "name", None)
    if name is None:
        raise ValueError(f"{type(model).__name__} is not a registered translator (see register_translator)")
    if getattr(model, "patch_size", patch_size) != patch_size:
        raise ValueError(f"patch_size={patch_size} but the model has patch_size={model.patch_size}")
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return save_checkpoint(path, {
        "format": FORMAT,
        "streamaug_version": _version(),
        "model": name,
        "config": cfg,
        "patch_size": int(patch_size),
        "s": float(s),
        "region": str(region),
        "manifest_sha256": str(manifest_sha256),
        "step": int(step),
        "weights": _weights(model),
        "extra": extra,
        "trainer_state": trainer_state,
    })


def _load_weights(path: Path, model: nn.Module, weights: dict[str, torch.Tensor], fix: str) -> None:
    try:
        model.load_state_dict(weights, strict=True)
    except (RuntimeError, TypeError, AttributeError) as err:  # TypeError: weights that are not a dict
        detail = " ".join(line.strip() for line in str(err).splitlines()[:4])
        raise CheckpointError(f"{path}: weights do not match the stored config ({detail}); {fix}") from err
    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensors hold NaN or inf (first: {bad[0]!r}); the run "
                              "diverged before this checkpoint was saved: use an earlier one (best.pt) or retrain")


def _rebuild(path: str | os.PathLike, ckpt: dict[str, Any], kind: str, size_key: str,
             device: str | torch.device) -> nn.Module:
    """The registered ``ckpt["model"]`` class built from the stored config and weights, frozen in eval
    mode on ``device``, with ``meta`` (every field but weights and optimizer state)."""
    fix = f"check that the checkpoint was written by save_{kind} with the config used in training"
    try:
        cls = (get_translator if kind == "translator" else get_inpainter)(ckpt["model"])
    except KeyError as err:
        raise CheckpointError(f"{path}: {err.args[0]}; import the module that registers it") from None
    try:
        config = cls.config_cls.from_dict(dict(ckpt["config"]))  # type: ignore[attr-defined]
        model = cls(config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid {ckpt['model']!r} config: {err}; {fix}") from err
    if getattr(model, size_key) != ckpt[size_key]:
        raise CheckpointError(f"{path}: {size_key} {ckpt[size_key]} does not match config {size_key} "
                              f"{getattr(model, size_key)}; {fix}")
    _load_weights(Path(path), model, ckpt["weights"], fix)
    model.to(device).eval().requires_grad_(False)  # an inference module; training resumes from read_checkpoint
    model.meta = {k: v for k, v in ckpt.items() if k not in ("weights", "trainer_state")}
    return model


def load_translator(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a translator from a checkpoint, in eval mode on ``device``.

    The returned module has ``patch_size``, ``translate(patches)``, an ``id`` string
    ``"<model>-<region>-<sha256[:8]>-step<N>"`` (for provenance) and ``meta`` (all checkpoint fields
    except weights and optimizer state).

    Args:
        path: a file written by :func:`save_translator`.
        device: where to put the weights.

    Returns:
        The translator ``nn.Module``.

    Raises:
        CheckpointError: see :func:`read_checkpoint`; also unknown model name, a config the model
            class rejects, or weights that do not fit the config (missing/unexpected keys, shapes).
    """
    ckpt = read_checkpoint(path, device)
    model = _rebuild(path, ckpt, "translator", "patch_size", device)
    model.id = f"{ckpt['model']}-{ckpt['region']}-{ckpt['manifest_sha256'][:8]}-step{ckpt['step']}"
    return model


def save_inpainter(path: str | os.PathLike, model: nn.Module, *, data_sha256: str, step: int,
                   extra: dict[str, Any] | None = None, trainer_state: dict[str, Any] | None = None) -> Path:
    """Write an inpainter checkpoint atomically, like :func:`save_translator`: its config is
    ``model.config``, ``data_sha256`` the fingerprint of the training shards (provenance, resume check).

    Raises:
        ValueError: ``model`` is not a registered inpainter.
        TypeError: ``extra``/``trainer_state`` hold non-plain objects.
    """
    name = getattr(type(model), "name", None)
    if name is None or not hasattr(model, "generate"):
        raise ValueError(f"{type(model).__name__} is not a registered inpainter (see register_inpainter)")
    return save_checkpoint(path, {
        "format": INPAINTER_FORMAT, "streamaug_version": _version(), "model": name,
        "config": model.config.to_dict(), "image_size": int(model.image_size), "data_sha256": str(data_sha256),
        "step": int(step), "weights": _weights(model), "extra": extra, "trainer_state": trainer_state,
    })


def load_inpainter(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild an inpainter written by :func:`save_inpainter`, frozen in eval mode on ``device``, with
    an ``id`` ``"<model>-<sha256[:8]>-step<N>"`` (for provenance) and ``meta``.

    Raises:
        CheckpointError: as :func:`load_translator`.
    """
    ckpt = read_checkpoint(path, device, kind="inpainter")
    model = _rebuild(path, ckpt, "inpainter", "image_size", device)
    model.id = f"{ckpt['model']}-{ckpt['data_sha256'][:8]}-step{ckpt['step']}"
    return model


class LoadedClassifier(NamedTuple):
    """What :func:`load_classifier` returns."""

    model: DRN
    config: DRNConfig
    extra: dict[str, Any]


def save_classifier(path: str | os.PathLike[str], model: DRN, config: DRNConfig | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Save a classifier's weights with its config (nanoGPT style), atomically.

    Args:
        path: output file (``.pt``); parent folders are created.
        model: the classifier (a :class:`~streamaug.models.drn.DRN`).
        config: its config; defaults to ``model.config`` and must equal it when given.
        extra: plain python values and tensors to keep (run config, epoch, val AUC, optimizer state,
            ...); loaded with ``weights_only=True``, so no arbitrary objects.

    Returns:
        The path written.

    Raises:
        ValueError: ``config`` differs from ``model.config``.
        TypeError: ``extra`` holds objects other than plain types and tensors.
    """
    config = config or model.config
    if config != model.config:
        raise ValueError(f"save_classifier: config {config} does not match the model's {model.config}")
    return save_checkpoint(path, {
        "format": CLASSIFIER_FORMAT, "streamaug_version": _version(), "arch": "drn", "config": config.to_dict(),
        "state_dict": _weights(model), "extra": dict(extra or {}), "torch": str(torch.__version__),
    })


def load_classifier(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> LoadedClassifier:
    """Rebuild a classifier saved by :func:`save_classifier`.

    Args:
        path: checkpoint file.
        device: where to put the model.

    Returns:
        ``(model, config, extra)``; the model is in eval mode on ``device``.

    Raises:
        CheckpointError: (a ``ValueError``) the file is not a streamaug classifier checkpoint, has
            another format version, an unknown arch, or weights that do not fit its config. The
            message names the file and the fix.
    """
    payload = read_checkpoint(path, device, kind="classifier")
    fix = _KINDS["classifier"].fix
    try:
        factory = get_classifier(payload["arch"])
    except KeyError as err:
        raise CheckpointError(f"{path}: {err.args[0]}; import the module that registers it") from None
    try:
        model = factory(**payload["config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: bad classifier config {payload['config']!r} ({err}); {fix}") from err
    _load_weights(Path(path), model, payload["state_dict"], fix)
    return LoadedClassifier(model.to(device).eval(), model.config, dict(payload.get("extra") or {}))
