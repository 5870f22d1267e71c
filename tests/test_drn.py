"""DRN classifier: shapes, dilation, gradients, registry, checkpoints, and a short training run."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from streamaug.models import (
    CHECKPOINT_FORMAT,
    DRN,
    DRNConfig,
    get_classifier,
    list_classifiers,
    load_classifier,
    register_classifier,
    save_classifier,
)


def _tiny(**overrides) -> DRN:
    torch.manual_seed(0)
    return DRN(DRNConfig.preset("tiny", **overrides))


# ---------------------------------------------------------------- registry


@pytest.mark.parametrize("name", list_classifiers())
def test_every_registered_classifier_runs(name: str) -> None:
    model = get_classifier(name)().eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 64, 64))
    assert out.shape == (2,) and torch.isfinite(out).all()


def test_registry_has_presets_and_rejects_duplicates() -> None:
    assert {"drn_paper", "drn_small", "drn_tiny"} <= set(list_classifiers())
    with pytest.raises(ValueError, match="already registered"):
        register_classifier("drn_tiny", lambda **kw: _tiny())
    with pytest.raises(KeyError, match="drn_tiny"):
        get_classifier("no_such_model")
    model = get_classifier("drn_tiny")(dropout=0.25)
    assert model.config.dropout == 0.25 and model.config.channels == DRNConfig.preset("tiny").channels


def test_paper_preset_is_drn_d_22() -> None:
    cfg = DRNConfig.preset("paper")
    assert cfg.channels == (16, 32, 64, 128, 256, 512, 512, 512)
    assert cfg.depths == (1, 1, 2, 2, 2, 2, 1, 1)
    assert cfg.dilations == (1, 1, 1, 1, 2, 4, 2, 1)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="8 entries"):
        DRNConfig(channels=(8, 8, 8))
    with pytest.raises(ValueError, match="stages 3-6"):
        DRNConfig(depths=(1, 1, 0, 1, 1, 1, 1, 1))
    with pytest.raises(KeyError, match="tiny"):
        DRNConfig.preset("huge")
    cfg = DRNConfig(**DRNConfig.preset("small").to_dict())  # JSON lists -> tuples
    assert cfg == DRNConfig.preset("small")


# ---------------------------------------------------------------- shapes, stride, dilation


@pytest.mark.parametrize("hw", [(64, 64), (96, 96), (128, 128), (65, 97), (8, 8)])
def test_output_and_feature_shapes(hw: tuple[int, int]) -> None:
    model = _tiny().eval()
    x = torch.rand(3, 1, *hw)
    with torch.no_grad():
        logits, feats = model(x), model.features(x)
    assert logits.shape == (3,)
    h, w = hw
    assert feats.shape == (3, model.num_features, -(-h // 8), -(-w // 8))
    assert model.output_stride == 8


def test_rejects_wrong_channels() -> None:
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        _tiny()(torch.rand(2, 3, 32, 32))


def test_dilated_stages_have_expected_dilation_and_no_stride() -> None:
    model = _tiny()
    for stage, dil in zip(model.stages[4:], (2, 4, 2, 1)):
        convs = [m for m in stage.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
        assert convs and all(c.dilation == (dil, dil) and c.stride == (1, 1) for c in convs)


def _receptive_extent(model: DRN, size: int = 320) -> int:
    """Width (px) of the input region that influences the centre feature of the feature map."""
    model.eval()
    x = torch.rand(1, 1, size, size, requires_grad=True)
    feats = model.features(x)
    c = feats.shape[-1] // 2
    feats[0, :, c, c].sum().backward()
    cols = np.flatnonzero(x.grad[0, 0].abs().sum(0).numpy() > 0)
    return int(cols[-1] - cols[0] + 1)


def test_dilation_enlarges_receptive_field() -> None:
    dilated = _receptive_extent(_tiny())
    plain = _receptive_extent(_tiny(dilations=(1,) * 8))
    # Theory for the tiny preset: 287 px with dilations (1,1,1,1,2,4,2,1), 143 px without.
    assert dilated > 250 and plain < 150, (dilated, plain)


def test_gradients_reach_every_parameter() -> None:
    model = _tiny().train()
    x, y = torch.rand(4, 1, 64, 64), torch.tensor([0.0, 1.0, 0.0, 1.0])
    torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_predict_proba_is_sigmoid_of_logits() -> None:
    model = _tiny().eval()
    x = torch.rand(5, 1, 48, 48)
    p = model.predict_proba(x)
    assert not p.requires_grad and ((p >= 0) & (p <= 1)).all()
    torch.testing.assert_close(p, torch.sigmoid(model(x)).detach())


# ---------------------------------------------------------------- checkpoints


def test_save_load_round_trip(tmp_path) -> None:
    model = _tiny(dropout=0.1)
    with torch.no_grad():  # move running stats off their defaults
        model.train()(torch.rand(8, 1, 32, 32) * 3)
    model.eval()
    path = save_classifier(tmp_path / "sub" / "clf.pt", model, model.config, {"epoch": 3, "val_auc": 0.91})
    loaded, cfg, extra = load_classifier(path, "cpu")
    assert cfg == model.config and loaded.config == model.config
    assert extra == {"epoch": 3, "val_auc": 0.91}
    assert not loaded.training
    x = torch.rand(4, 1, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert not list(tmp_path.rglob("*.tmp"))


def test_save_refuses_config_not_matching_model(tmp_path) -> None:
    with pytest.raises(ValueError, match="does not match"):
        save_classifier(tmp_path / "c.pt", _tiny(), DRNConfig.preset("small"))


def test_load_refuses_other_format_version(tmp_path) -> None:
    path = save_classifier(tmp_path / "c.pt", _tiny())
    payload = torch.load(path, weights_only=True)
    payload["format"] = "streamaug-classifier/0"
    torch.save(payload, path)
    with pytest.raises(ValueError, match=rf"c\.pt.*streamaug-classifier/0.*{CHECKPOINT_FORMAT}"):
        load_classifier(path)


def test_load_refuses_weights_not_matching_config(tmp_path) -> None:
    path = save_classifier(tmp_path / "c.pt", _tiny())
    payload = torch.load(path, weights_only=True)
    payload["config"] = DRNConfig.preset("small").to_dict()
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"c\.pt: weights do not match"):
        load_classifier(path)


def test_load_refuses_non_checkpoints(tmp_path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_classifier(junk)
    other = tmp_path / "other.pt"
    torch.save({"model": 1}, other)
    with pytest.raises(ValueError, match=r"other\.pt: checkpoint format None"):
        load_classifier(other)


# ---------------------------------------------------------------- training sanity


def _disks(n: int, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images; half get a bright disk at a random place (label 1), mean brightness kept."""
    x = rng.normal(0.4, 0.15, (n, 1, size, size))
    y = np.arange(n) % 2
    yy, xx = np.mgrid[:size, :size]
    for i in np.flatnonzero(y):
        r = rng.uniform(4, 9)
        cy, cx = rng.uniform(r, size - r, 2)
        x[i, 0][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] += 0.35
        x[i] += 0.4 - x[i].mean()  # same mean brightness as the negatives: detection must be local
    return torch.from_numpy(np.clip(x, 0, 1)).float(), torch.from_numpy(y)


@pytest.mark.slow
def test_tiny_drn_learns_disk_vs_noise() -> None:
    rng = np.random.default_rng(0)
    x_train, y_train = _disks(200, 64, rng)
    x_test, y_test = _disks(100, 64, rng)
    model = _tiny().eval()
    auc_before = roc_auc_score(y_test.numpy(), model.predict_proba(x_test).numpy())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    t0 = time.process_time()  # CPU seconds: robust to other jobs sharing the cores
    for _epoch in range(2):
        model.train()
        for b in torch.randperm(200, generator=gen).split(20):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x_train[b]), y_train[b].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    scores = model.predict_proba(x_test).numpy()
    cpu_s = time.process_time() - t0
    auc = roc_auc_score(y_test.numpy(), scores)
    assert auc > 0.9, (auc_before, auc)
    assert cpu_s < 30, cpu_s
