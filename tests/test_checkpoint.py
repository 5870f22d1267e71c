"""Tests for streamaug.models.checkpoint: round trip, resume state, and refusal of bad files, for
translators and classifiers alike (one reader, one error type)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from streamaug.models.checkpoint import (
    CLASSIFIER_FORMAT,
    FORMAT,
    CheckpointError,
    load_classifier,
    load_translator,
    read_checkpoint,
    save_classifier,
    save_translator,
)
from streamaug.models.registry import build_translator, list_translators
from streamaug.models.unit import UNIT, unit_preset
from streamaug.train.unit_losses import UNITTrainer

SHA = "ab12cd34" + "0" * 56


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _save_unit(path: Path, *, step: int = 7, **kw) -> UNIT:
    torch.manual_seed(0)
    cfg = unit_preset("tiny")
    model = UNIT(cfg)
    save_translator(path, model, config=cfg, patch_size=cfg.patch_size, s=2, region="humerus",
                    manifest_sha256=SHA, step=step, **kw)
    return model


def test_round_trip_same_outputs(tmp_path):
    path = tmp_path / "ckpt" / "unit.pt"
    model = _save_unit(path, extra={"run": {"batch": 8, "seed": 0}})
    loaded = load_translator(path)
    assert not loaded.training and loaded.patch_size == 32
    assert loaded.id == "unit-humerus-ab12cd34-step7"
    assert loaded.meta["format"] == FORMAT and loaded.meta["s"] == 2.0
    assert loaded.meta["extra"] == {"run": {"batch": 8, "seed": 0}}
    assert "weights" not in loaded.meta
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.translate(x), model.eval().translate(x))
    assert not list(tmp_path.glob("ckpt/*.tmp"))  # atomic write left no temp file


@pytest.mark.parametrize("name", list_translators())
def test_every_registered_translator_round_trips(tmp_path, name):
    cfg = unit_preset("tiny") if name == "unit" else {"patch_size": 16}
    model = build_translator(name, cfg if isinstance(cfg, dict) else cfg.to_dict())
    path = save_translator(tmp_path / f"{name}.pt", model, config=model.config, patch_size=model.patch_size,
                           s=1, region="tibia", manifest_sha256=SHA, step=0)
    loaded = load_translator(path)
    x = torch.rand(2, 1, model.patch_size, model.patch_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded.translate(x), model.eval().translate(x))
    assert loaded.id == f"{name}-tibia-ab12cd34-step0"


def test_trainer_state_resume(tmp_path):
    torch.manual_seed(0)
    cfg = unit_preset("tiny")
    model = UNIT(cfg)
    trainer = UNITTrainer(model)
    x_h, x_l = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    trainer.step(x_h, x_l)
    path = save_translator(tmp_path / "r.pt", model, config=cfg, patch_size=32, s=1, region="r",
                           manifest_sha256=SHA, step=trainer.steps, trainer_state=trainer.state_dict())
    ckpt = read_checkpoint(path)
    resumed = load_translator(path).requires_grad_(True).train()  # loaded frozen for inference
    t2 = UNITTrainer(resumed)
    t2.load_state_dict(ckpt["trainer_state"])
    assert t2.steps == 1
    torch.manual_seed(5)
    a = trainer.step(x_h, x_l)
    torch.manual_seed(5)
    b = t2.step(x_h, x_l)
    assert a == pytest.approx(b, rel=1e-5)
    for p, q in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_save_rejects_non_plain_extra_and_wrong_patch(tmp_path):
    with pytest.raises(TypeError, match="plain types"):
        _save_unit(tmp_path / "x.pt", extra={"path": Path("/tmp")})
    cfg = unit_preset("tiny")
    with pytest.raises(ValueError, match="patch_size"):
        save_translator(tmp_path / "y.pt", UNIT(cfg), config=cfg, patch_size=64, s=1, region="r",
                        manifest_sha256=SHA, step=0)


# ----------------------------------------------------------------------------- refusals


def _rewrite(path: Path, **changes) -> None:
    ckpt = torch.load(path, weights_only=True)
    for k, v in changes.items():
        if v is None:
            del ckpt[k]
        else:
            ckpt[k] = v
    torch.save(ckpt, path)


def test_refuses_other_format_version(tmp_path):
    path = tmp_path / "v2.pt"
    _save_unit(path)
    _rewrite(path, format="streamaug-translator/2")
    with pytest.raises(CheckpointError, match="format") as err:
        load_translator(path)
    assert str(path) in str(err.value) and "save_translator" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_refuses_missing_key(tmp_path):
    path = tmp_path / "m.pt"
    _save_unit(path)
    _rewrite(path, region=None)
    with pytest.raises(CheckpointError, match="region"):
        load_translator(path)


def test_refuses_truncated_file(tmp_path):
    path = tmp_path / "t.pt"
    _save_unit(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as err:
        load_translator(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_refuses_non_checkpoint_files(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=str(path)):
        load_translator(path)


def test_refuses_other_torch_objects(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(UNIT(unit_preset("tiny")).state_dict(), path)  # a bare state dict
    with pytest.raises(CheckpointError, match="format"):
        load_translator(path)
    with pytest.raises(CheckpointError, match="no such"):
        load_translator(tmp_path / "missing.pt")


def test_refuses_shape_mismatched_config(tmp_path):
    path = tmp_path / "s.pt"
    _save_unit(path)
    _rewrite(path, config={**unit_preset("tiny").to_dict(), "ngf": 16})
    with pytest.raises(CheckpointError, match="do not match") as err:
        load_translator(path)
    assert str(path) in str(err.value)


def test_refuses_invalid_config_and_unknown_model(tmp_path):
    path = tmp_path / "c.pt"
    _save_unit(path)
    _rewrite(path, config={**unit_preset("tiny").to_dict(), "bogus": 1})
    with pytest.raises(CheckpointError, match="config"):
        load_translator(path)
    _rewrite(path, config=unit_preset("tiny").to_dict(), model="cyclegan-9000")
    with pytest.raises(CheckpointError, match="cyclegan-9000"):
        load_translator(path)


def test_refuses_pickled_objects(tmp_path):
    """weights_only=True: a checkpoint carrying arbitrary Python objects is refused, not executed."""
    path = tmp_path / "p.pt"
    torch.save({"format": FORMAT, "obj": Path("/x")}, path)
    with pytest.raises(CheckpointError, match="not a readable"):
        load_translator(path)


# ----------------------------------------------------------------------------- classifiers: the same reader


def _tiny_drn():
    from streamaug.models import DRN, DRNConfig

    torch.manual_seed(0)
    return DRN(DRNConfig.preset("tiny"))


def test_classifier_file_in_the_old_layout_still_loads(tmp_path):
    """A streamaug-classifier/1 file as drn.save_classifier wrote it (no streamaug_version) loads."""
    model = _tiny_drn().eval()
    path = tmp_path / "old.pt"
    torch.save({"format": CLASSIFIER_FORMAT, "arch": "drn", "config": model.config.to_dict(),
                "state_dict": model.state_dict(), "extra": {"epoch": 2}, "torch": "2.2.0"}, path)
    loaded = load_classifier(path)
    assert loaded.config == model.config and loaded.extra == {"epoch": 2}
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


def test_one_error_type_and_the_other_kind_is_named(tmp_path):
    clf = save_classifier(tmp_path / "best.pt", _tiny_drn())
    unit = tmp_path / "translator.pt"
    _save_unit(unit)
    with pytest.raises(CheckpointError, match=r"best\.pt.*a classifier checkpoint, not a translator one"):
        load_translator(clf)
    with pytest.raises(CheckpointError, match=r"translator\.pt.*a translator checkpoint, not a classifier one") as err:
        load_classifier(unit)
    assert "streamaug-train classifier" in str(err.value)  # the fix
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match=r"junk\.pt: not a readable streamaug classifier"):
        load_classifier(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="no such classifier checkpoint"):
        load_classifier(tmp_path / "missing.pt")


def test_classifier_with_unknown_arch_or_non_plain_extra_is_refused(tmp_path):
    path = save_classifier(tmp_path / "c.pt", _tiny_drn())
    _rewrite(path, arch="vit")
    with pytest.raises(CheckpointError, match=r"c\.pt: unknown classifier 'vit'; registered: \['drn'"):
        load_classifier(path)
    with pytest.raises(TypeError, match="plain types"):
        save_classifier(tmp_path / "d.pt", _tiny_drn(), extra={"path": Path("/tmp")})
    assert not (tmp_path / "d.pt").exists()


def test_old_import_paths_still_work():
    import streamaug.models as models
    import streamaug.models.drn as drn

    assert drn.load_classifier is load_classifier and drn.save_classifier is save_classifier
    assert models.load_classifier is load_classifier and drn.CHECKPOINT_FORMAT == CLASSIFIER_FORMAT
    assert issubclass(CheckpointError, ValueError)


def test_weights_that_are_not_a_dict_or_not_finite_are_refused(tmp_path):
    path = save_classifier(tmp_path / "c.pt", _tiny_drn())
    _rewrite(path, state_dict="weights")
    with pytest.raises(CheckpointError, match=r"c\.pt: weights do not match"):
        load_classifier(path)
    model = _tiny_drn()
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    path = save_classifier(tmp_path / "nan.pt", model)
    with pytest.raises(CheckpointError, match=r"nan\.pt: 1 weight tensors hold NaN or inf.*earlier one"):
        load_classifier(path)
    unit = tmp_path / "u.pt"
    _save_unit(unit)
    ckpt = torch.load(unit, weights_only=True)
    next(iter(ckpt["weights"].values())).fill_(float("inf"))
    torch.save(ckpt, unit)
    with pytest.raises(CheckpointError, match=r"u\.pt: 1 weight tensors hold NaN or inf"):
        load_translator(unit)


def test_a_device_this_machine_lacks_is_named_not_the_file(tmp_path, monkeypatch):
    """Before: --device cuda without CUDA said "not a readable streamaug classifier checkpoint
    (truncated or another file type: ... CUDA ...)" about a good file."""
    from streamaug.models import get_classifier
    from streamaug.models.checkpoint import device_problem

    path = save_classifier(tmp_path / "c.pt", get_classifier("drn_tiny")())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(CheckpointError, match=r"c\.pt: not read: device 'cuda.*' is not available: .*0 CUDA "
                                                  r"device.*--device cpu") as info:
            load_classifier(path, device=device)
        assert "truncated" not in str(info.value)
    with pytest.raises(CheckpointError, match="not a torch device"):
        read_checkpoint(path, "gpu0", kind="classifier")
    assert device_problem("cpu") is None and load_classifier(path, device="cpu").model is not None


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    """A run killed (or a disk filled) while saving must not leave a truncated file where the last good
    checkpoint was: the writer goes to a temporary file and renames it only once written."""
    import io

    path = tmp_path / "unit.pt"
    _save_unit(path, step=7)
    real_save = torch.save

    def half_then_fail(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf)
        Path(f).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        _save_unit(path, step=8)
    monkeypatch.undo()
    assert load_translator(path).meta["step"] == 7
