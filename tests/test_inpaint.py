"""Inpaint: the kept box is the source's, bit for bit, at the stream's resolution; its parameters
replay; LesionStream makes new positives from real positives (source_key, box) and resumes exactly."""
from __future__ import annotations

import json

import pytest
import torch
from shardgen import write_shards

from streamaug import LesionStream, XRayShards
from streamaug.models.checkpoint import save_inpainter
from streamaug.models.pix2pix import Pix2Pix, pix2pix_preset
from streamaug.models.registry import IdentityConfig, IdentityTranslator
from streamaug.synth import Inpaint, Mix, SynthesisStage, Translate, lesion_box_sites

BOX = (10, 12, 26, 30)


def inpainter() -> Pix2Pix:
    torch.manual_seed(0)
    return Pix2Pix(pix2pix_preset("tiny", image_size=32, depth=4))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """48 px images (the inpainter works at 32 px), one positive in three, box BOX."""
    folder = tmp_path_factory.mktemp("inpaint")
    write_shards(folder, n=30, shard_size=6, size=48, lesion_every=3, box=BOX)
    return folder


@pytest.fixture(scope="module")
def sources(shards):
    return {s["key"]: s for s in XRayShards(shards, shuffle=False, equalize="none")}


@pytest.mark.parametrize("size", [32, 48, 57])
def test_the_box_is_copied_bit_exactly_at_any_stream_resolution(size):
    synth = Inpaint(inpainter())
    images = torch.rand(3, 1, size, size + 5)
    boxes = torch.tensor([[3, 4, 20, 15], [0, 0, size + 5, 2], [7, 9, 8, 10]])
    source = torch.tensor([2, 0, 2])
    params = synth.generate_parameters(images, boxes, source, torch.Generator().manual_seed(1))
    made = synth.apply(images, boxes, source, params).images
    assert made.shape == (3, 1, size, size + 5)
    for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        assert torch.equal(made[k, :, y0:y1, x0:x1], images[source[k], :, y0:y1, x0:x1])
        outside = torch.ones(size, size + 5, dtype=torch.bool)
        outside[y0:y1, x0:x1] = False
        assert not torch.equal(made[k, 0][outside], images[source[k], 0][outside])  # the context is new
    assert float(made.min()) >= 0 and float(made.max()) <= 1


class _Marks(torch.nn.Module):
    """An inpainter whose output is ``inside`` within its mask and 0.5 outside."""

    image_size = 16

    def __init__(self, inside):
        super().__init__()
        self.inside = inside

    def generate(self, images, masks, seeds=None):
        return torch.where(masks, torch.full_like(images, self.inside), torch.full_like(images, 0.5))


@pytest.mark.parametrize("size", [16, 57, 64])
def test_the_generators_output_inside_the_box_never_reaches_the_context(size):
    """Before: G's output inside its mask at S (which no loss trains) was resized up with the rest and
    bled into a band around the box at any stream size but S."""
    images, boxes = torch.rand(1, 1, size, size), torch.tensor([[size // 3, size // 4, size // 2 + 1, size // 2 + 3]])
    made = [Inpaint(_Marks(v), noise=False).apply(images, boxes, torch.tensor([0]), {}).images for v in (0.0, 1.0)]
    assert torch.equal(made[0], made[1])


def test_parameters_replay_and_vary_the_context(tmp_path):
    path = save_inpainter(tmp_path / "inpainter.pt", inpainter(), data_sha256="0" * 64, step=3)
    synth = Inpaint(path)  # from a checkpoint path, like Translate
    images, boxes, source = torch.rand(1, 1, 40, 40), torch.tensor([[5, 5, 15, 15]] * 2), torch.tensor([0, 0])
    params = synth.generate_parameters(images, boxes, source, torch.Generator().manual_seed(0))
    a = synth.apply(images, boxes, source, params).images
    assert torch.equal(a, synth.apply(images, boxes, source, params).images)
    assert not torch.equal(a[0], a[1])  # two seeds, two contexts around the same lesion
    one = synth.apply(images, boxes[1:], source[1:], {"seed": params["seed"][1:]}).images
    torch.testing.assert_close(one[0], a[1], rtol=1e-5, atol=1e-6)  # candidate 1 alone, from its own seed
    record = synth.provenance(params, 1)
    assert record == {"synthesizer": "inpaint", "inpainter": "pix2pix-00000000-step3", "blend_n": None,
                      "noise_seed": int(params["seed"][1])}
    fixed = Inpaint(path, noise=False)
    assert fixed.generate_parameters(images, boxes, source) == {}
    b = fixed.apply(images, boxes, source, {}).images
    assert torch.equal(b[0], b[1]) and fixed.provenance({}, 0)["noise_seed"] is None


def test_lesion_box_sites_widen_to_whole_pixels_inside_the_image():
    sample = {"image": torch.zeros(1, 20, 30), "boxes": torch.tensor([[2.4, 3.0, 7.6, 9.2], [25., 15., 31., 22.],
                                                                       [4., 4., 4.3, 4.]])}
    assert lesion_box_sites(sample)["sites"].tolist() == [[2, 3, 8, 10], [25, 15, 30, 20]]


def _stream(shards, **kw):
    return LesionStream(shards, synthesizer=Inpaint(inpainter()), synthetic_fraction=0.4, device_batch=6, **kw)


def test_lesion_stream_makes_new_positives_from_real_positives(shards, sources):
    stream = _stream(shards, epoch_length=30, seed=1)
    samples = list(stream)
    made = [s for s in samples if s["synthetic"]]
    assert len(made) == stream.stats["emitted"]["synthetic"] > 5
    for s in made:
        p = s["provenance"]
        source = sources[p["source_key"]]
        assert source["label"] == 1 and s["label"] == 1 and s["key"] == f"{p['source_key']}-syn"
        assert p["box"] == list(BOX) and s["boxes"].tolist() == [list(BOX)]
        assert p["synthesizer"] == "inpaint" and isinstance(p["noise_seed"], int)
        x0, y0, x1, y1 = p["box"]
        assert torch.equal(s["image"][:, y0:y1, x0:x1], source["image"][:, y0:y1, x0:x1])
        assert not torch.equal(s["image"], source["image"])
    real = [s for s in samples if not s["synthetic"]]
    assert {s["label"] for s in real} == {0, 1}  # the real samples still come in every label


@pytest.mark.parametrize("k", [7, 22])  # 22: in the second synthesis round
def test_lesion_stream_with_inpaint_resumes_exactly(shards, k):
    full = list(_stream(shards, epoch_length=30, seed=2))
    first = _stream(shards, epoch_length=30, seed=2)
    it = iter(first)
    head = [next(it) for _ in range(k)]
    resumed = _stream(shards, epoch_length=30, seed=2)
    resumed.load_state_dict(first.state_dict())
    tail = list(resumed)
    assert len(head) + len(tail) == len(full) and any(s["synthetic"] for s in tail)
    for a, b in zip(full, head + tail):  # json: the NaN score of an unfiltered candidate equals itself
        assert a["key"] == b["key"] and json.dumps(a["provenance"]) == json.dumps(b["provenance"])
        assert torch.equal(a["image"], b["image"])


def test_a_mix_must_agree_on_its_sources_and_the_stage_reads_positives(shards):
    translate = Translate(IdentityTranslator(IdentityConfig(patch_size=8)))
    with pytest.raises(ValueError, match="different labels"):
        LesionStream(shards, synthesizer=Mix([translate, Inpaint(inpainter())]))
    stage = SynthesisStage(synthesizer=Inpaint(inpainter()), fraction=0.5)
    assert stage.source_label == 1 and stage.bone is None  # a real lesion box is kept, never dropped as dark
    batch = {"label": torch.tensor([0, 1, 1, 0]), "sites": [torch.tensor([[1, 1, 5, 5]])] * 4}
    _, source, want = stage.plan(batch, 4)
    assert want == 2 and sorted(source.tolist()) == [1, 2]
