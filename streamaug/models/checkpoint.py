"""Translator checkpoints: config next to weights, optimizer state and step (the nanoGPT habit).

A checkpoint is a ``torch.save``'d dict of plain Python types and tensors only, so it loads with
``torch.load(weights_only=True)`` (no pickled classes, no code execution)::

    {"format": "streamaug-translator/1", "streamaug_version": "0.1.0", "model": "unit",
     "config": {...}, "patch_size": 128, "s": 2.0, "region": "humerus",
     "manifest_sha256": "...", "step": 20000, "weights": {name: tensor},
     "extra": {...} | None, "trainer_state": {...} | None}

``s`` is the patch-size factor of Gupta et al. §3.2 (patch side = ``s`` x larger box side) and
``region`` the body part the translator was trained on; both travel to the synthesis stage.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from streamaug.models.registry import get_translator

__all__ = ["FORMAT", "CheckpointError", "save_translator", "read_checkpoint", "load_translator"]

FORMAT = "streamaug-translator/1"
_REQUIRED = ("format", "model", "config", "patch_size", "s", "region", "manifest_sha256", "step", "weights")


class CheckpointError(ValueError):
    """A file that is not a usable translator checkpoint; the message names the file and the fix."""


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


def _version() -> str:
    from streamaug import __version__

    return __version__


def save_translator(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    config: Any,
    patch_size: int,
    s: float,
    region: str,
    manifest_sha256: str,
    step: int,
    extra: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
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
    ckpt = {
        "format": FORMAT,
        "streamaug_version": _version(),
        "model": name,
        "config": cfg,
        "patch_size": int(patch_size),
        "s": float(s),
        "region": str(region),
        "manifest_sha256": str(manifest_sha256),
        "step": int(step),
        "weights": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra,
        "trainer_state": trainer_state,
    }
    _check_plain(ckpt, "checkpoint")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint dict (weights on ``device``); for resume and inspection.

    Raises:
        CheckpointError: unreadable/truncated/not a checkpoint, other format version, missing key.
    """
    path = Path(path)
    hint = "re-export it with streamaug.models.checkpoint.save_translator (or retrain the translator)"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such translator checkpoint file")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError,
            ValueError, KeyError, AttributeError) as err:
        raise CheckpointError(
            f"{path}: not a readable streamaug translator checkpoint (truncated or another file type: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); {hint}"
        ) from err
    if not isinstance(ckpt, dict) or "format" not in ckpt:
        raise CheckpointError(f"{path}: not a streamaug translator checkpoint (no 'format' field); {hint}")
    if ckpt["format"] != FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {ckpt['format']!r}, this streamaug ({_version()}) reads {FORMAT!r}; "
            f"use the streamaug version that wrote it (streamaug_version={ckpt.get('streamaug_version')!r}) "
            f"or {hint}"
        )
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks keys {missing}; {hint}")
    return ckpt


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
    hint = "check that the checkpoint was written by save_translator with the config used in training"
    try:
        cls = get_translator(ckpt["model"])
    except KeyError as err:
        raise CheckpointError(f"{path}: {err.args[0]}; import the module that registers it") from None
    try:
        config = cls.config_cls.from_dict(dict(ckpt["config"]))  # type: ignore[attr-defined]
        model = cls(config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid {ckpt['model']!r} config: {err}; {hint}") from err
    if model.patch_size != ckpt["patch_size"]:
        raise CheckpointError(
            f"{path}: patch_size {ckpt['patch_size']} does not match config patch_size {model.patch_size}; {hint}"
        )
    try:
        model.load_state_dict(ckpt["weights"], strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()
        detail = " ".join(line.strip() for line in first[:4])
        raise CheckpointError(f"{path}: weights do not match the stored config ({detail}); {hint}") from err
    model.to(device).eval().requires_grad_(False)  # an inference module; training resumes from read_checkpoint
    model.id = f"{ckpt['model']}-{ckpt['region']}-{ckpt['manifest_sha256'][:8]}-step{ckpt['step']}"
    model.meta = {k: v for k, v in ckpt.items() if k not in ("weights", "trainer_state")}
    return model
