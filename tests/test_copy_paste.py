"""CopyPaste: real lesion crops pasted at normal sites (locality, provenance, centring, clipping, replay)."""
from __future__ import annotations

import pytest
import torch
from shardgen import write_shards

from streamaug import SynthesisStage
from streamaug.synth import CopyPaste, LesionCrops

PLAIN = {"flip": False, "rot90": False, "scale": (1.0, 1.0), "contrast": (1.0, 1.0), "match_intensity": False}


def lesion(key, box, size=64):
    """A dark image with a bright square lesion at ``box``."""
    x0, y0, x1, y1 = box
    image = torch.full((1, size, size), 0.2)
    image[:, y0:y1, x0:x1] = 0.9
    return {"key": key, "label": 1, "image": image, "boxes": torch.tensor([box], dtype=torch.float32)}


def bright_rows_cols(out, base):
    changed = out[0] - base > 0.2  # brighter than the site: the lesion itself
    rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
    return (int(rows.min()), int(rows.max()) + 1), (int(cols.min()), int(cols.max()) + 1)


def test_copy_paste_changes_only_the_site_and_names_its_lesion():
    crops = LesionCrops.from_samples([lesion("L7", (20, 20, 36, 36))], size=32)
    stage = SynthesisStage(synthesizer=CopyPaste(crops=crops), min_intensity=None, seed=3)
    g = torch.Generator().manual_seed(0)
    images = 0.4 + 0.2 * torch.rand(2, 1, 64, 64, generator=g)
    boxes, source = torch.tensor([[8, 10, 40, 42], [20, 4, 50, 36]]), torch.tensor([1, 0])
    out = stage.synthesize(images, boxes, source)
    for j, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        diff = (out.images[j] - images[source[j]]).abs()[0]
        inside = torch.zeros_like(diff, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert float(diff[~inside].max()) == 0.0 and float(diff[inside].max()) > 0.1
        prov = stage.provenance(out, j, f"n{j}")
        assert prov["synthesizer"] == "copy_paste" and prov["lesion_key"] == "L7"
        assert prov["lesion_box"] == [20.0, 20.0, 36.0, 36.0] and prov["box"] == [x0, y0, x1, y1]
    sample = stage.sample(out, 0, "n1", {"region": "lower_limb"})
    assert sample["provenance"]["lesion_key"] == "L7" and sample["label"] == 1 and sample["key"] == "n1-syn"


def test_lesion_is_centred_in_the_site_at_its_own_size():
    crops = LesionCrops.from_samples([lesion("L", (20, 20, 36, 36))], margin=2.0, size=32)  # crop side 32
    synth = CopyPaste(crops=crops, **PLAIN)
    base = torch.full((1, 1, 64, 64), 0.5)
    made = synth(base, torch.tensor([[8, 8, 40, 40]]), torch.tensor([0]), torch.Generator().manual_seed(0))
    (r0, r1), (c0, c1) = bright_rows_cols(made.images[0], 0.5)
    assert abs((r0 + r1) / 2 - 24) <= 1 and abs((c0 + c1) / 2 - 24) <= 1  # the site centre
    assert 12 <= r1 - r0 <= 17 and 12 <= c1 - c0 <= 17  # 16 pixels wide, as in its own image
    assert float(made.images[0, 0, 24, 24]) > 0.85


def test_a_clipped_crop_is_not_stretched():
    """A lesion at its image's left border: the crop's left quarter had no content. It stays empty
    (the site keeps its pixels there) and the lesion keeps its size and place."""
    crops = LesionCrops.from_samples([lesion("edge", (0, 20, 16, 36))], margin=2.0, size=32)
    weight = crops.canvases[0, 1].float()
    assert float(weight[:, :7].max()) == 0.0 and float(weight[:, 9:].min()) == 1.0
    synth = CopyPaste(crops=crops, **PLAIN)
    base = torch.full((1, 1, 64, 64), 0.5)
    made = synth(base, torch.tensor([[8, 8, 40, 40]]), torch.tensor([0]), torch.Generator().manual_seed(0))
    assert torch.equal(made.images[0, :, 8:40, 8:15], base[0, :, 8:40, 8:15])  # no content: untouched
    (r0, r1), (c0, c1) = bright_rows_cols(made.images[0], 0.5)
    assert abs((c0 + c1) / 2 - 24) <= 1 and abs((r0 + r1) / 2 - 24) <= 1 and 12 <= c1 - c0 <= 17


def test_lesions_are_matched_to_the_site_size():
    small, large = lesion("small", (10, 10, 18, 18)), lesion("large", (20, 20, 44, 44))
    synth = CopyPaste(crops=LesionCrops.from_samples([small, large], size=16))  # crop sides 16 and 48
    boxes = torch.tensor([[0, 0, 16, 16], [0, 0, 48, 48], [4, 4, 20, 21]])
    params = synth.generate_parameters(None, boxes, torch.zeros(3, dtype=torch.long),
                                       torch.Generator().manual_seed(1))
    assert [synth.provenance(params, j)["lesion_key"] for j in range(3)] == ["small", "large", "small"]


def test_parameters_replay_and_seed_the_result():
    crops = LesionCrops.from_samples([lesion("a", (20, 20, 36, 36)), lesion("b", (10, 12, 30, 28))], size=24)
    synth = CopyPaste(crops=crops, center=False)
    images = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    boxes, source = torch.tensor([[8, 8, 40, 40], [0, 20, 30, 50], [30, 30, 64, 64]]), torch.tensor([0, 2, 1])
    params = synth.generate_parameters(images, boxes, source, torch.Generator().manual_seed(5))
    once, again = synth.apply(images, boxes, source, params), synth.apply(images, boxes, source, params)
    assert torch.equal(once.images, again.images)
    same_seed = synth(images, boxes, source, torch.Generator().manual_seed(5))
    other_seed = synth(images, boxes, source, torch.Generator().manual_seed(6))
    assert torch.equal(same_seed.images, once.images) and not torch.equal(other_seed.images, once.images)


def test_lesion_crops_from_shards_read_only_lesion_boxes(tmp_path):
    write_shards(tmp_path, n=20, shard_size=5, size=32, lesion_every=4)
    crops = LesionCrops.from_shards(tmp_path, margin=1.5, size=8)
    assert len(crops) == 5 and sorted(crops.keys) == [f"k{i:06d}" for i in range(0, 20, 4)]
    assert crops.canvases.shape == (5, 2, 8, 8) and torch.allclose(crops.sides, torch.full((5,), 10.0))


def disc_lesion(key="D", lesion=0.9, context=0.2, size=64, with_mask=True):
    """A lesion disc of radius 6 at (28, 28) in a flat context; its box is the disc's bounding box."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((yy - 28) ** 2 + (xx - 28) ** 2 <= 36).float()[None]
    sample = {"key": key, "label": 1, "image": context + (lesion - context) * disc,
              "boxes": torch.tensor([[22.0, 22.0, 35.0, 35.0]])}
    return {**sample, "mask": disc} if with_mask else sample


def test_mask_shape_pastes_the_lesion_not_its_surroundings():
    base = torch.full((1, 1, 64, 64), 0.5)
    site = torch.tensor([[8, 8, 40, 40]])
    made = {}
    for shape in ("box", "mask"):
        crops = LesionCrops.from_samples([disc_lesion()], margin=2.0, size=32, shape=shape, feather=0.05)
        made[shape] = CopyPaste(crops=crops, **PLAIN)(base, site, torch.tensor([0]),
                                                       torch.Generator().manual_seed(0)).images[0, 0]
    for shape in ("box", "mask"):
        assert float(made[shape][24, 24]) > 0.85  # the lesion, at the site's centre
    assert float(made["box"][14:18, 14:18].max()) < 0.45  # the crop's dark context, inside the site
    # beyond the lesion's feathered rim the site keeps its own pixels, bit for bit
    changed = {shape: (made[shape] != base[0, 0]).nonzero() for shape in made}
    assert int(changed["mask"].min()) >= 11 and int(changed["mask"].max()) <= 36  # the disc and its rim
    assert int(changed["box"].min()) <= 9 and int(changed["box"].max()) >= 38  # the whole site (8..39)
    assert torch.equal(made["mask"][:8], base[0, 0, :8]) and torch.equal(made["mask"][40:], base[0, 0, 40:])


def test_mask_shape_keeps_the_lesion_contrast_to_its_own_surroundings():
    """Intensity matching still works over the whole crop: a lesion 0.4 brighter than its context
    lands about that much brighter than the site, not at the site's mean."""
    crops = LesionCrops.from_samples([disc_lesion(lesion=0.6, context=0.2)], size=32, shape="mask")
    synth = CopyPaste(crops=crops, **{**PLAIN, "match_intensity": True})
    made = synth(torch.full((1, 1, 64, 64), 0.5), torch.tensor([[8, 8, 40, 40]]), torch.tensor([0]),
                 torch.Generator().manual_seed(0))
    assert float(made.images[0, 0, 24, 24]) > 0.75


def test_mask_shape_without_a_mask_pastes_the_feathered_box_and_says_so():
    crops = LesionCrops.from_samples([disc_lesion("m"), disc_lesion("n", with_mask=False)], size=32, shape="mask")
    assert crops.canvases.shape == (2, 3, 32, 32) and crops.unmasked == 1 and crops.shape == "mask"
    assert CopyPaste(crops=crops).describe()["unmasked"] == 1
    masked, boxed = crops.canvases[:, 2].float()
    assert float(boxed.sum()) > float(masked.sum())  # the box is larger than the disc in it
    with pytest.raises(ValueError, match="shape='box'"):
        CopyPaste(crops=crops, onto="lesions")
    with pytest.raises(ValueError, match="'box' or 'mask'"):
        LesionCrops.from_samples([disc_lesion()], shape="disc")


BASE, SITE, SRC = torch.full((1, 1, 64, 64), 0.5), torch.tensor([[8, 8, 40, 40]]), torch.tensor([0])


def _g():
    return torch.Generator().manual_seed(0)


def test_the_contrast_setting_changes_the_paste():
    crops = LesionCrops.from_samples([lesion("L", (20, 20, 36, 36))], size=32)
    low, high = (CopyPaste(crops=crops, **{**PLAIN, "contrast": (c, c)})(BASE, SITE, SRC, _g()).images
                 for c in (0.5, 1.0))
    assert not torch.equal(low, high)


def test_a_flip_mirrors_the_paste():
    sample = lesion("L", (20, 20, 36, 36))
    sample["image"][:, 20:36, 20:26] = 0.6  # not mirror-symmetric
    synth = CopyPaste(crops=LesionCrops.from_samples([sample], size=32), **{**PLAIN, "flip": True})
    p = synth.generate_parameters(None, SITE, SRC, _g())
    flipped = synth.apply(BASE, SITE, SRC, {**p, "flip": ~p["flip"]}).images
    assert not torch.equal(flipped, synth.apply(BASE, SITE, SRC, p).images)


def test_without_a_lesion_of_the_sites_size_the_nearest_size_is_drawn():
    small, large = lesion("small", (10, 10, 18, 18)), lesion("large", (20, 20, 44, 44))
    synth = CopyPaste(crops=LesionCrops.from_samples([small, large], size=16))  # crop sides 16 and 48
    sites = torch.tensor([[0, 0, 30, 30], [0, 0, 10, 10]])
    params = synth.generate_parameters(None, sites, torch.zeros(2, dtype=torch.long), _g())
    assert [synth.provenance(params, j)["lesion_key"] for j in range(2)] == ["large", "small"]


def test_a_mask_paste_widens_the_mask_before_feathering():
    from streamaug.synth.lesion_bank import lesion_alpha

    mask = torch.zeros(1, 32, 32)
    mask[:, 10:20, 12:18] = 1
    alpha = lesion_alpha(mask, (12, 10, 18, 20), (32, 32))
    assert float(alpha[0, 10:20, 12:18].min()) > 0.95  # the feathered rim lies outside the lesion


def test_max_lesions_caps_the_bank():
    samples = [lesion("a", (20, 20, 36, 36)), lesion("b", (10, 12, 30, 28))]
    assert len(LesionCrops.from_samples(samples, size=8, max_lesions=1)) == 1
    assert len(LesionCrops.from_samples(samples, size=8)) == 2
