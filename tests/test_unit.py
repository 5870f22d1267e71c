"""Tests for the UNIT translator (streamaug.models.unit), its trainer, and the translator registry."""
from __future__ import annotations

import math

import pytest
import torch

from streamaug.models.registry import (
    IdentityTranslator,
    build_translator,
    get_translator,
    list_translators,
    register_translator,
)
from streamaug.models.unit import UNIT, UNITConfig, unit_preset
from streamaug.train.unit_losses import UNITTrainer

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a busy 2-core box, 2 OpenMP threads spin at barriers and a tiny UNIT
    step goes from ~0.08 s to ~2.7 s (measured). Runs after conftest's ``_few_threads``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def blobs(b: int, p: int, g: torch.Generator, disk: bool = False) -> torch.Tensor:
    """Toy domains in [0, 1]: h = smooth Gaussian blobs; l = the same with a dark disk ("lesion")."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, p), torch.linspace(-1, 1, p), indexing="ij")
    c = torch.rand(b, 3, 2, generator=g) * 1.4 - 0.7
    s = torch.rand(b, 3, generator=g) * 0.3 + 0.2
    img = sum(
        torch.exp(-((xx - c[:, k, 0, None, None]) ** 2 + (yy - c[:, k, 1, None, None]) ** 2)
                  / (2 * s[:, k, None, None] ** 2))
        for k in range(3)
    )
    img = 0.2 + 0.6 * img / img.amax((1, 2), keepdim=True)
    if disk:
        dc = torch.rand(b, 2, generator=g) * 0.8 - 0.4
        r = torch.rand(b, generator=g) * 0.15 + 0.15
        inside = (xx - dc[:, 0, None, None]) ** 2 + (yy - dc[:, 1, None, None]) ** 2 < r[:, None, None] ** 2
        img = torch.where(inside, img * 0.3, img)
    return img[:, None]


# ----------------------------------------------------------------------------- networks


def test_translate_shape_range_dtype(device):
    torch.manual_seed(0)
    m = UNIT(unit_preset("tiny")).to(device).eval()
    p = m.patch_size
    x = torch.rand(3, 1, p, p, device=device)
    with torch.no_grad():
        y = m.translate(x)
        z = m.encode_normal(x)
        assert m.encode_lesion(x).shape == z.shape
        back = m.translate_to_normal(y)
    assert y.shape == (3, 1, p, p) and back.shape == x.shape and y.device.type == device.type
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert z.shape == (3, 4 * m.config.ngf, p // 4, p // 4)
    assert torch.equal(m(x), y)  # forward == translate, deterministic at eval (latent mean, no noise)
    with pytest.raises(ValueError):
        m.translate(torch.rand(1, 1, p + 4, p + 4, device=device))


def test_translate_bfloat16():
    m = UNIT(unit_preset("tiny")).eval()
    ref = m.translate(torch.full((1, 1, 32, 32), 0.5))
    with torch.no_grad():
        y = m.to(torch.bfloat16).translate(torch.full((1, 1, 32, 32), 0.5, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and float(y.min()) >= 0 and float(y.max()) <= 1
    torch.testing.assert_close(y.float(), ref.detach(), atol=0.1, rtol=0)


def test_weights_shared_between_domains():
    m = UNIT(unit_preset("tiny"))
    x = torch.rand(2, 1, 32, 32)
    # the shared encoder block sees both domains: its grad comes from either encoder path
    m.encode_lesion(x).sum().backward()
    assert all(p.grad is not None for p in m.enc_shared.parameters())
    assert all(p.grad is None for p in m.enc_h.parameters())
    names = {n.split(".")[0] for n, _ in m.named_parameters()}
    assert names == {"enc_h", "enc_l", "enc_shared", "gen_shared", "gen_h", "gen_l", "dis_h", "dis_l"}
    gen_ids = {id(p) for p in m.generator_parameters()}
    assert len(gen_ids) == len(m.generator_parameters())  # shared layers listed once
    assert gen_ids.isdisjoint(id(p) for p in m.discriminator_parameters())


@pytest.mark.parametrize("name", ["paper", "small", "tiny"])
def test_presets_build_and_run(name):
    cfg = unit_preset(name)
    m = UNIT(cfg).eval()
    with torch.no_grad():
        y = m.translate(torch.rand(1, 1, cfg.patch_size, cfg.patch_size))
        d = m.dis_l(y * 2 - 1)
    assert y.shape == (1, 1, cfg.patch_size, cfg.patch_size)
    assert len(d) == cfg.dis_scales and all(o.shape[1] == 1 and o.numel() > 0 for o in d)
    assert UNITConfig.from_dict(cfg.to_dict()) == cfg


def test_paper_preset_matches_liu_defaults():
    c = unit_preset("paper")
    assert (c.ngf, c.n_res, c.n_downsample, c.dis_scales) == (64, 4, 2, 3)
    assert (c.gan_w, c.recon_x_w, c.recon_kl_w, c.recon_x_cyc_w, c.recon_kl_cyc_w) == (1, 10, 0.01, 10, 0.01)
    assert (c.lr, c.beta1, c.beta2, c.weight_decay) == (1e-4, 0.5, 0.999, 1e-4)


def test_config_validation():
    with pytest.raises(ValueError, match="too small"):
        unit_preset("paper", patch_size=32)
    with pytest.raises(ValueError):
        UNITConfig(n_res=2, n_shared=3)
    with pytest.raises(TypeError):
        UNITConfig.from_dict({"patch_size": 32, "bogus": 1})
    with pytest.raises(KeyError):
        unit_preset("huge")


# ----------------------------------------------------------------------------- trainer


def test_step_grads_reach_every_generator_param():
    torch.manual_seed(0)
    m = UNIT(unit_preset("tiny"))
    t = UNITTrainer(m)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    losses = t.step(torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32))
    assert set(losses) == {"gen", "gen_adv", "recon", "kl", "cyc", "kl_cyc", "dis"}
    assert all(math.isfinite(v) for v in losses.values())
    for p in m.generator_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    for n, p in m.named_parameters():  # Adam moved every parameter (gen and dis)
        assert not torch.equal(before[n], p.detach()), n
    assert all(p.requires_grad for p in m.discriminator_parameters())
    assert t.steps == 1 and t.opt_gen.param_groups[0]["betas"] == (0.5, 0.999)
    assert t.opt_gen.param_groups[0]["weight_decay"] == 1e-4


def test_losses_decrease_on_toy_task():
    """h = smooth blobs, l = blobs with a dark disk; 40 tiny steps: reconstruction and total drop."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    m = UNIT(unit_preset("tiny"))
    t = UNITTrainer(m)
    hist = [t.step(blobs(4, 32, g), blobs(4, 32, g, disk=True)) for _ in range(40)]
    assert all(math.isfinite(v) for h in hist for v in h.values())

    def avg(key: str, sl: slice) -> float:
        return sum(h[key] for h in hist[sl]) / len(hist[sl])

    assert avg("recon", slice(-5, None)) < 0.8 * avg("recon", slice(0, 5))
    assert avg("cyc", slice(-5, None)) < 0.9 * avg("cyc", slice(0, 5))
    assert avg("gen", slice(-5, None)) < avg("gen", slice(0, 5))


@pytest.mark.parametrize("diffaug", [(), ("color", "translation", "cutout")], ids=["plain", "diffaug"])
def test_trainer_state_round_trip(diffaug):
    """Optimizers, step count and the DiffAugment generator travel in the state: the next steps agree."""
    torch.manual_seed(0)
    x_h, x_l = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    m1 = UNIT(unit_preset("tiny"))
    t1 = UNITTrainer(m1, diffaug=diffaug, seed=5)
    t1.step(x_h, x_l)
    m2 = UNIT(unit_preset("tiny"))
    m2.load_state_dict(m1.state_dict())
    t2 = UNITTrainer(m2, diffaug=diffaug)  # another seed: only the loaded state makes the steps agree
    t2.load_state_dict(t1.state_dict())
    assert t2.steps == 1
    torch.manual_seed(1)
    l1 = t1.step(x_h, x_l)
    torch.manual_seed(1)
    l2 = t2.step(x_h, x_l)
    assert l1 == pytest.approx(l2, rel=1e-5)
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b)


def test_diffaug_reaches_the_discriminators_only():
    """DiffAugment changes what the discriminators see (so the dis loss), not the generator's own terms."""
    torch.manual_seed(0)
    x_h, x_l = torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32)
    m = UNIT(unit_preset("tiny"))
    plain, augmented = UNITTrainer(m), UNITTrainer(m, diffaug=("cutout",))
    torch.manual_seed(1)
    a = plain.discriminator_loss(x_h, x_l)
    torch.manual_seed(1)
    b = augmented.discriminator_loss(x_h, x_l)
    assert not torch.allclose(a, b)
    torch.manual_seed(1)
    ga = plain.generator_losses(x_h, x_l)
    torch.manual_seed(1)
    gb = augmented.generator_losses(x_h, x_l)
    assert torch.equal(ga["recon"], gb["recon"]) and not torch.equal(ga["gen_adv"], gb["gen_adv"])


# ----------------------------------------------------------------------------- registry


def test_registry_lists_and_gets_builtins():
    names = list_translators()
    assert {"unit", "identity"} <= set(names) and names == sorted(names)
    assert get_translator("unit") is UNIT and get_translator("identity") is IdentityTranslator
    with pytest.raises(KeyError, match="registered"):
        get_translator("nope")


def test_registry_duplicate_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_translator("unit")(UNIT)


@pytest.mark.parametrize("name", list_translators())
def test_every_registered_translator_smoke(name):
    cls = get_translator(name)
    small = {"unit": dict(unit_preset("tiny").to_dict())}.get(name, {"patch_size": 16})
    m = build_translator(name, small).eval()
    p = m.patch_size
    x = torch.rand(2, 1, p, p)
    with torch.no_grad():
        y = m.translate(x)
    assert isinstance(m, cls) and y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1


def test_identity_returns_input():
    m = build_translator("identity", patch_size=8)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(m.translate(x), x)


def test_registry_class_rejects_duplicates_and_lists_known_names():
    from streamaug.models.registry import Registry

    reg = Registry("widget")
    assert reg.register("a", 1) == 1 and reg.names() == ["a"]
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a", 2)
    with pytest.raises(KeyError, match=r"unknown widget 'b'; registered: \['a'\]"):
        reg.get("b")
    with pytest.raises(ValueError, match="already registered"):
        register_translator("identity")(IdentityTranslator)
