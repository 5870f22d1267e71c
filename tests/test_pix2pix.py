"""pix2pix inpainter: the composite keeps the box bit for bit, seeded dropout replays per image, the
registry and the inpainter checkpoint round trip (and refuse what is not an inpainter)."""
from __future__ import annotations

import pytest
import torch

from streamaug.models.checkpoint import (
    CheckpointError,
    load_inpainter,
    read_checkpoint,
    save_inpainter,
    save_translator,
)
from streamaug.models.pix2pix import Pix2Pix, box_mask, composite, pix2pix_preset
from streamaug.models.registry import (
    IdentityConfig,
    IdentityTranslator,
    build_translator,
    get_inpainter,
    list_inpainters,
    register_inpainter,
)

SHA = "cd34ab12" + "0" * 56


def small(**kw) -> Pix2Pix:
    torch.manual_seed(0)
    return Pix2Pix(pix2pix_preset("tiny", image_size=32, depth=4, **kw))


def test_box_mask_is_the_box_for_integer_boxes_and_encloses_fractional_ones():
    boxes = torch.tensor([[3, 2, 9, 7], [0, 0, 16, 1]])
    m = box_mask(boxes, 12, 16)
    want = torch.zeros(2, 1, 12, 16, dtype=torch.bool)
    want[0, :, 2:7, 3:9] = True
    want[1, :, 0:1, 0:16] = True
    assert torch.equal(m, want)
    frac = box_mask(torch.tensor([[2.5, 1.2, 4.0, 3.01]]), 6, 6)[0, 0]
    assert torch.equal(frac.nonzero()[:, 0].unique(), torch.tensor([1, 2, 3]))
    assert torch.equal(frac.nonzero()[:, 1].unique(), torch.tensor([2, 3]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_composite_keeps_the_box_pixels_bit_equal(dtype):
    g = torch.Generator().manual_seed(0)
    y = torch.rand(3, 1, 20, 24, generator=g).to(dtype)
    generated = torch.rand(3, 1, 20, 24, generator=g)
    generated[0, 0, 5, 5] = float("nan")  # whatever the generator makes never leaks into the box
    mask = box_mask(torch.tensor([[2, 3, 10, 9], [0, 0, 24, 20], [23, 19, 24, 20]]), 20, 24)
    out = composite(y, generated, mask)
    assert out.dtype == dtype
    assert torch.equal(out[mask], y[mask])
    assert torch.equal(out[~mask], generated.to(dtype)[~mask])
    assert torch.equal(out[1], y[1])  # a box over the whole image keeps it all


def test_shapes_of_the_presets_and_output_range():
    for name, size in (("tiny", 64), ("paper", 256)):
        assert pix2pix_preset(name).image_size == size
    m = small().eval()
    y = torch.rand(2, 1, 32, 32)
    mask = box_mask(torch.tensor([[4, 4, 12, 20], [10, 0, 32, 8]]), 32, 32)
    with torch.no_grad():
        g = m.generate(y, mask)
        out = m.inpaint(y, mask, seeds=torch.tensor([3, 4]))
        logits = m.discriminator(m.network_input(y, mask), y * 2 - 1)
    assert g.shape == y.shape and float(g.min()) >= 0 and float(g.max()) <= 1
    assert torch.equal(out[mask], y[mask]) and logits.shape[:2] == (2, 1)
    with pytest.raises(ValueError, match="expected images"):
        m.generate(torch.rand(2, 1, 16, 16), mask)
    with pytest.raises(ValueError, match="divisible"):
        pix2pix_preset("tiny", image_size=48)


def test_paper_preset_is_pix2pix_unet_256_and_the_70x70_patchgan():
    m = Pix2Pix(pix2pix_preset("paper", mask_input=False))
    # the official unet_256 (54.414 M parameters) and n_layers=3 PatchGAN (2.769 M), up to the norm layers
    assert sum(p.numel() for p in m.generator.parameters()) == pytest.approx(54.414e6, rel=1e-3)
    assert sum(p.numel() for p in m.discriminator.parameters()) == pytest.approx(2.769e6, rel=2e-3)
    assert m.generator.dropout_levels == [6, 5, 4]


def test_seeded_dropout_replays_and_does_not_depend_on_the_batch():
    m = small().eval()
    y = torch.rand(3, 1, 32, 32)
    mask = box_mask(torch.tensor([[4, 4, 12, 12]] * 3), 32, 32)
    seeds = torch.tensor([11, 12, 13])
    with torch.no_grad():
        a = m.generate(y, mask, seeds)
        b = m.generate(y, mask, seeds)
        alone = m.generate(y[1:2], mask[1:2], seeds[1:2])
        other = m.generate(y, mask, seeds + 100)
        plain = m.generate(y, mask)
    assert torch.equal(a, b)
    torch.testing.assert_close(alone[0], a[1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a, other) and not torch.allclose(a, plain)
    assert torch.equal(plain, m.generate(y, mask))  # no seeds, eval mode: no dropout, one output


def test_registry_lists_pix2pix_and_refuses_duplicates():
    assert "pix2pix" in list_inpainters() and get_inpainter("pix2pix") is Pix2Pix
    with pytest.raises(ValueError, match="already registered"):
        register_inpainter("pix2pix")(Pix2Pix)
    with pytest.raises(TypeError, match="lacks 'generate'"):
        register_inpainter("not-one")(IdentityTranslator)
    with pytest.raises(KeyError, match="registered"):
        get_inpainter("nope")


@pytest.mark.parametrize("name", list_inpainters())
def test_every_registered_inpainter_round_trips(tmp_path, name):
    cls = get_inpainter(name)
    model = cls(cls.config_cls.from_dict({**pix2pix_preset("tiny").to_dict(), "image_size": 32, "depth": 4}))
    path = save_inpainter(tmp_path / "ck" / f"{name}.pt", model, data_sha256=SHA, step=5, extra={"run": {"seed": 1}})
    loaded = load_inpainter(path)
    assert not loaded.training and loaded.image_size == 32 and loaded.id == f"{name}-cd34ab12-step5"
    assert loaded.meta["extra"] == {"run": {"seed": 1}} and "weights" not in loaded.meta
    assert not any(p.requires_grad for p in loaded.parameters())
    y, mask = torch.rand(2, 1, 32, 32), box_mask(torch.tensor([[1, 2, 9, 30]] * 2), 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.generate(y, mask, torch.tensor([1, 2])),
                           model.eval().generate(y, mask, torch.tensor([1, 2])))
    assert not list(tmp_path.glob("ck/*.tmp"))  # the atomic writer left no temp file


def test_checkpoint_kinds_are_not_confused(tmp_path):
    unit_like = build_translator("identity", patch_size=8)
    translator = save_translator(tmp_path / "t.pt", unit_like, config=IdentityConfig(8), patch_size=8, s=1,
                                 region="r", manifest_sha256=SHA, step=0)
    with pytest.raises(CheckpointError, match="a translator checkpoint"):
        load_inpainter(translator)
    inpainter = save_inpainter(tmp_path / "i.pt", small(), data_sha256=SHA, step=0)
    with pytest.raises(CheckpointError, match="an inpainter checkpoint, not a translator one"):
        read_checkpoint(inpainter)  # read as a translator
    with pytest.raises(ValueError, match="not a registered inpainter"):
        save_inpainter(tmp_path / "x.pt", unit_like, data_sha256=SHA, step=0)
    payload = torch.load(inpainter, weights_only=True)
    payload["config"]["ngf"] = 4  # weights no longer fit the config
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="weights do not match"):
        load_inpainter(tmp_path / "bad.pt")
