"""Edge cases of the synthesis ops: epoch seeds under numpy 1.x promotion, lesion swaps at the image
border, random lesion offsets in non-square sites, 1 pixel thick sites, and the blending exponent."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streamaug.models.registry import IdentityConfig, IdentityTranslator
from streamaug.synth import CopyPaste, LesionCrops, SynthesisStage, Translate, crop_sites, paste_blend
from streamaug.synth.stage import epoch_seed

FIXED = {"flip": False, "rot90": False, "scale": (1.0, 1.0), "contrast": (1.0, 1.0)}


def square_lesion(key, box, size=64, background=0.4, value=0.0):
    """A uniform image with a square lesion of ``value`` at ``box``, as a label-1 sample."""
    x0, y0, x1, y1 = box
    image = torch.full((1, size, size), background)
    image[:, y0:y1, x0:x1] = value
    return {"key": key, "label": 1, "image": image, "boxes": torch.tensor([box], dtype=torch.float32)}


# ----------------------------------------------------------------------------- epoch_seed


class _Numpy1UInt64:
    """A numpy 1.x ``uint64`` scalar, as far as a shift goes: legacy promotion finds no safe common
    type for ``uint64`` and a Python int (int64), so ``>>`` raises; ``int()`` works."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __int__(self) -> int:
        return self.value

    __index__ = __int__

    def __rshift__(self, other):
        raise TypeError("ufunc 'right_shift' not supported for the input types (numpy 1.x promotion)")


def test_epoch_seed_is_a_deterministic_63_bit_python_int():
    seeds = {epoch_seed(s, e, salt) for s in (0, 7) for e in (0, 1, 2) for salt in (0, 0x5173)}
    assert len(seeds) == 12 and all(type(v) is int and 0 <= v < 2 ** 63 for v in seeds)
    assert epoch_seed(0, 1, 0x5173) == epoch_seed(0, 1, 0x5173)
    state = np.random.SeedSequence([0, 1, 0x5173]).generate_state(1, np.uint64)
    assert epoch_seed(0, 1, 0x5173) == int(state[0]) // 2


def test_epoch_seed_does_not_shift_a_numpy_uint64(monkeypatch):
    """numpy 1.x (allowed by pyproject) raises on ``uint64 >> 1``: the state must become an int first."""
    real = np.random.SeedSequence

    class Numpy1SeedSequence(real):
        def generate_state(self, n_words, dtype=np.uint32):
            return [_Numpy1UInt64(int(v)) for v in super().generate_state(n_words, dtype)]

    expected = epoch_seed(3, 4, 5)
    monkeypatch.setattr(np.random, "SeedSequence", Numpy1SeedSequence)
    assert epoch_seed(3, 4, 5) == expected


# ----------------------------------------------------------------------------- lesion swap at the border


def _swap(**kwargs):
    """A lesion swap whose only donor is a dark 12 px lesion on a 0.4 background."""
    donor = square_lesion("D", (30, 20, 42, 32))
    crops = LesionCrops.from_samples([donor], margin=2.0, size=32)
    return CopyPaste(crops=crops, onto="lesions", **{"match_intensity": False, **FIXED, **kwargs})


def _mask_over(site, lesion_box):
    """The cosine mask of ``site`` (``(1, 4)``) over the pixels of ``lesion_box`` in a 64 px image."""
    x0, y0, x1, y1 = lesion_box
    alpha = paste_blend(torch.zeros(1, 1, 64, 64), torch.ones(1, 1, 8, 8), site, torch.tensor([0]), 2.0)
    return alpha[0, 0, y0:y1, x0:x1]


def test_lesion_swap_at_the_border_keeps_the_mask_on_the_own_lesion():
    swap = _swap()
    border, inner = (0, 20, 12, 32), (20, 20, 32, 32)  # the same 12 px lesion: at the left border, inside
    positive = square_lesion("P", border, background=0.4, value=1.0)  # its own lesion: bright
    site = swap.source_sites(dict(positive))["sites"]
    inner_site = swap.source_sites(square_lesion("Q", inner))["sites"]
    inner_min = float(_mask_over(inner_site, inner).min())
    assert inner_min > 0.85 and float(_mask_over(site, border).min()) == pytest.approx(inner_min, abs=1e-6)
    out = swap(positive["image"][None], site, torch.tensor([0]), torch.Generator().manual_seed(0)).images[0, 0]
    assert float(out[20:32, 0:12].max()) < 0.3  # the donor's dark lesion covers the bright one everywhere
    assert site.tolist() == [[-6, 14, 18, 38]]  # the square around the lesion, past the border
    x0, y0, x1, y1 = [max(v, 0) for v in site[0].tolist()]
    outside = torch.ones(64, 64, dtype=torch.bool)
    outside[y0:y1, x0:x1] = False
    assert torch.equal(out[outside], positive["image"][0][outside])


@pytest.mark.parametrize("site", [[-6, 14, 18, 38], [46, 14, 70, 38], [20, 50, 44, 74]], ids=["left", "right", "bottom"])
def test_lesion_swap_matches_intensity_over_the_image_part_of_the_site(site):
    """A site reaching past the border: the padding (0) must not darken the matched mean (at first only
    the left border was tested; the right and bottom ones use the other bound)."""
    donor = square_lesion("D", (30, 20, 42, 32), background=0.6, value=0.6)  # no contrast: a flat crop
    swap = CopyPaste(crops=LesionCrops.from_samples([donor], margin=2.0, size=32), onto="lesions",
                     match_intensity=True, **FIXED)
    image = torch.full((1, 1, 64, 64), 0.6)
    made = swap(image, torch.tensor([site]), torch.tensor([0]), torch.Generator().manual_seed(0))
    torch.testing.assert_close(made.images, image, atol=1e-4, rtol=0)


def test_stage_sample_clips_a_border_swap_box_and_records_the_site():
    swap = _swap()
    positive = square_lesion("P", (0, 20, 12, 32), value=1.0)
    site = swap.source_sites(dict(positive))["sites"]
    stage = SynthesisStage(synthesizer=swap, seed=0)
    result = stage.synthesize(positive["image"][None], site, torch.tensor([0]))
    sample = stage.sample(result, 0, "P")
    assert sample["boxes"].tolist() == [[0.0, 14.0, 18.0, 38.0]]
    assert sample["provenance"]["box"] == [-6, 14, 18, 38]


# ----------------------------------------------------------------------------- random offsets


def test_random_offset_keeps_the_lesion_inside_a_non_square_site():
    """``center=False`` in a 32 x 12 site: every draw (flips, quarter turns, scales) keeps the whole
    lesion in the site: the pasted lesion has the mass of the centred one."""
    image = torch.zeros(1, 64, 64)
    image[:, 28:36, 28:36] = 1.0  # an 8 px lesion, crop side 32 (margin 4)
    crops = LesionCrops.from_samples([{"key": "L", "label": 1, "image": image,
                                       "boxes": torch.tensor([[28., 28., 36., 36.]])}], margin=4.0, size=32)
    synth = CopyPaste(crops=crops, center=False, match_intensity=False, contrast=(1.0, 1.0))
    k = 300
    sites, source = torch.tensor([[0, 40, 32, 52]]).repeat(k, 1), torch.zeros(k, dtype=torch.long)
    params = synth.generate_parameters(None, sites, source, torch.Generator().manual_seed(0))
    assert float(params["shift"].abs().max()) > 0.1  # the offsets do move the lesion
    images = torch.zeros(1, 1, 64, 64)
    moved = synth.apply(images, sites, source, params).translated.sum((1, 2, 3))
    centred = synth.apply(images, sites, source, {**params, "shift": torch.zeros(k, 2)}).translated.sum((1, 2, 3))
    ratio = moved / centred
    assert float(ratio.min()) > 0.85, f"{int((ratio <= 0.85).sum())} of {k} lesions cut by the site border"
    square = torch.tensor([[0, 20, 32, 52]]).repeat(k, 1)  # a square site keeps its room: 1 / scale - extent
    wide = synth.generate_parameters(None, square, source, torch.Generator().manual_seed(0))["shift"]
    assert float(wide.abs().max()) > 0.5


# ----------------------------------------------------------------------------- 1 pixel thick sites


def test_crop_sites_of_one_pixel_thick_sites_repeat_their_pixels():
    img = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    column = crop_sites(img, torch.tensor([[4, 2, 5, 10]]), torch.tensor([0]), 8)[0, 0]
    torch.testing.assert_close(column, img[0, 0, 2:10, 4:5].expand(8, 8), atol=1e-6, rtol=0)
    row = crop_sites(img, torch.tensor([[4, 2, 12, 3]]), torch.tensor([0]), 8)[0, 0]
    torch.testing.assert_close(row, img[0, 0, 2:3, 4:12].expand(8, 8), atol=1e-6, rtol=0)
    pixel = crop_sites(img, torch.tensor([[4, 4, 5, 5]]), torch.tensor([0]), 8)[0, 0]
    torch.testing.assert_close(pixel, img[0, 0, 4, 4].expand(8, 8), atol=1e-6, rtol=0)
    thin_resized = crop_sites(img, torch.tensor([[4, 2, 5, 10]]), torch.tensor([0]), 5)[0, 0]
    ref = torch.nn.functional.interpolate(img[:, :, 2:10, 4], size=5, mode="linear", align_corners=True)[0, 0]
    torch.testing.assert_close(thin_resized, ref[:, None].expand(5, 5), atol=1e-6, rtol=0)


@pytest.mark.parametrize("site", [[9, 31, 11, 32], [10, 4, 11, 20], [10, 10, 11, 11]])
def test_thin_sites_never_put_nan_into_an_image(site):
    donor = {"key": "D", "label": 1, "image": torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(1)),
             "boxes": torch.tensor([[8., 8., 16., 16.]])}
    image = torch.full((1, 1, 32, 32), 0.5)
    for synth in (CopyPaste(crops=LesionCrops.from_samples([donor], size=16), onto="lesions"),
                  CopyPaste(crops=LesionCrops.from_samples([donor], size=16), center=False),
                  Translate(IdentityTranslator(IdentityConfig(patch_size=8)))):
        made = synth(image, torch.tensor([site]), torch.tensor([0]), torch.Generator().manual_seed(0))
        assert bool(made.images.isfinite().all()) and bool(made.patches.isfinite().all())
        assert bool(made.translated.isfinite().all())


# ----------------------------------------------------------------------------- blend_n


@pytest.mark.parametrize("n", [0.0, -1.0, math.nan])
def test_blend_n_is_checked_where_it_is_given(n):
    donor = square_lesion("D", (20, 20, 32, 32))
    crops = LesionCrops.from_samples([donor], size=8)
    identity = IdentityTranslator(IdentityConfig(patch_size=8))
    with pytest.raises(ValueError, match=r"^n must be a number > 0"):
        paste_blend(torch.zeros(1, 1, 16, 16), torch.ones(1, 1, 8, 8), torch.tensor([[4, 4, 12, 12]]),
                    torch.tensor([0]), n)
    for make in (lambda: Translate(identity, blend_n=n), lambda: CopyPaste(crops=crops, blend_n=n),
                 lambda: SynthesisStage(identity, blend_n=n),
                 lambda: SynthesisStage(synthesizer=CopyPaste(crops=crops), blend_n=n)):
        with pytest.raises(ValueError, match=r"^blend_n must be a number > 0"):
            make()
    assert Translate(identity, blend_n=0.5).blend_n == 0.5 and CopyPaste(crops=crops, blend_n=8).blend_n == 8.0
