"""Tests for the numba kernels behind streamaug.sites.proposer: integral image, crop means, crop geometry."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sitecheck import _brute_means, _check_geometry

from streamaug.sites import box_means, crop_means, direct_is_cheaper, integral_image, lesion_crops, parse_boxes


# --------------------------------------------------------------------------- integral image
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (13, 17), (64, 48), (31, 200)])
def test_integral_image_matches_cumsum(shape):
    rng = np.random.default_rng(sum(shape))
    img = rng.random(shape, dtype=np.float32)
    ii = integral_image(img)
    assert ii.shape == (shape[0] + 1, shape[1] + 1) and ii.dtype == np.float64
    ref = np.zeros_like(ii)
    ref[1:, 1:] = img.astype(np.float64).cumsum(0).cumsum(1)
    np.testing.assert_allclose(ii, ref, rtol=1e-12, atol=1e-9)


def test_integral_image_accepts_views_and_other_dtypes_and_rejects_3d():
    img = np.random.default_rng(0).random((20, 30))
    ref = integral_image(img.astype(np.float32))
    np.testing.assert_allclose(integral_image(img), ref)  # float64 in
    np.testing.assert_allclose(integral_image(img.T.copy().T), ref)  # F-order in
    strided = img[::2, ::3]
    np.testing.assert_allclose(integral_image(strided), integral_image(strided.copy().astype(np.float32)))
    with pytest.raises(ValueError, match="expects a"):
        integral_image(np.zeros((1, 4, 4), np.float32))


def test_integral_image_fills_a_given_buffer():
    img = np.random.default_rng(1).random((6, 9), dtype=np.float32)
    buf = np.full((7, 10), np.nan)
    out = integral_image(img, buf)
    assert out is buf
    np.testing.assert_allclose(buf, integral_image(img))
    with pytest.raises(ValueError, match="out must be"):
        integral_image(img, np.empty((7, 9)))
    with pytest.raises(ValueError, match="out must be"):
        integral_image(img, np.empty((7, 10), np.float32))


@pytest.mark.parametrize("shape", [(1, 1), (9, 4), (40, 57), (128, 96)])
def test_box_means_matches_brute_force(shape):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    h, w = shape
    img = rng.random(shape, dtype=np.float32)
    x0 = rng.integers(0, w, 200)
    y0 = rng.integers(0, h, 200)
    x1 = x0 + 1 + (rng.integers(0, w, 200) % (w - x0))
    y1 = y0 + 1 + (rng.integers(0, h, 200) % (h - y0))
    boxes = np.stack([x0, y0, x1, y1], 1)
    boxes = np.concatenate([boxes, [[0, 0, w, h], [w - 1, h - 1, w, h]]])
    got = box_means(integral_image(img), boxes)
    np.testing.assert_allclose(got, _brute_means(img, boxes), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shape", [(1, 1), (9, 4), (40, 57), (128, 96), (3, 301)])
def test_direct_and_integral_means_agree_with_brute_force(shape):
    rng = np.random.default_rng(shape[0] * 7 + shape[1])
    h, w = shape
    img = rng.random(shape, dtype=np.float32)
    x0, y0 = rng.integers(0, w, 300), rng.integers(0, h, 300)
    x1 = x0 + 1 + (rng.integers(0, w, 300) % (w - x0))  # widths 1..w: all remainders of the 4-way sum
    y1 = y0 + 1 + (rng.integers(0, h, 300) % (h - y0))
    boxes = np.concatenate([np.stack([x0, y0, x1, y1], 1), [[0, 0, w, h], [w - 1, h - 1, w, h]]])
    brute = _brute_means(img, boxes)
    direct = crop_means(img, boxes)
    np.testing.assert_allclose(direct, brute, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(box_means(integral_image(img), boxes), brute, rtol=1e-9, atol=1e-9)


def test_crop_means_empty_nan_and_errors():
    img = np.ones((4, 5), np.float32)
    out = crop_means(img, np.array([[1, 1, 1, 3], [0, 0, 5, 4]]))
    assert math.isnan(out[0]) and out[1] == 1.0
    assert crop_means(img, np.zeros((0, 4), np.int64)).shape == (0,)
    with pytest.raises(ValueError, match="outside"):
        crop_means(img, np.array([[0, 0, 6, 4]]))
    with pytest.raises(ValueError, match=r"\(m, 4\)"):
        crop_means(img, np.array([[0, 0, 1]]))
    with pytest.raises(ValueError, match="expects a"):
        crop_means(np.ones((1, 4, 5)), np.array([[0, 0, 1, 1]]))


def test_direct_is_cheaper_rule():
    assert direct_is_cheaper(np.array([[0, 0, 7, 9]]), 8, 8)  # 63 < 64
    assert not direct_is_cheaper(np.array([[0, 0, 8, 8]]), 8, 8)
    assert not direct_is_cheaper(np.array([[0, 0, 6, 6], [2, 2, 8, 8]]), 8, 8)  # overlaps count
    assert direct_is_cheaper(np.zeros((0, 4), np.int64), 8, 8)


def test_box_means_empty_nan_and_errors():
    ii = integral_image(np.ones((4, 5), np.float32))
    out = box_means(ii, np.array([[1, 1, 1, 3], [0, 0, 5, 4]]))
    assert math.isnan(out[0]) and out[1] == 1.0
    assert box_means(ii, np.zeros((0, 4), np.int64)).shape == (0,)
    with pytest.raises(ValueError, match="outside"):
        box_means(ii, np.array([[0, 0, 6, 4]]))
    with pytest.raises(ValueError, match="degenerate"):
        box_means(ii, np.array([[3, 0, 2, 4]]))
    with pytest.raises(ValueError, match="non-finite"):
        crop_means(np.ones((4, 5), np.float32), np.array([[0.0, 0.0, np.nan, 4.0]]))
    with pytest.raises(ValueError, match=r"\(m, 4\)"):
        box_means(ii, np.array([[0, 0, 1]]))


# --------------------------------------------------------------------------- crop geometry
def _random_boxes(rng, height, width, k):
    """Boxes of all kinds: inside, touching edges, partly outside, larger than the image."""
    cx, cy = rng.uniform(-0.1, 1.1, k) * width, rng.uniform(-0.1, 1.1, k) * height
    bw = rng.uniform(0.5, 1.3, k) * width * rng.random(k)
    bh = rng.uniform(0.5, 1.3, k) * height * rng.random(k)
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    edge = np.array([[0, 0, 5, 5], [width - 5, height - 5, width, height], [0, 3, width, 9],
                     [-10, -10, width + 10, height + 10], [2, 0, 4, height], [width - 1, 0, width, 1]], float)
    return np.concatenate([boxes, edge])


@pytest.mark.parametrize("s", [0.5, 1.0, 1.5, 2.0])
@pytest.mark.parametrize("min_size", [1, 8])
def test_lesion_crops_geometry(s, min_size):
    rng = np.random.default_rng(int(s * 10) + min_size)
    for trial in range(40):
        height, width = (int(v) for v in rng.integers(6, 300, 2))
        boxes = _random_boxes(rng, height, width, 25)
        crops = lesion_crops(boxes, height, width, s, rng, min_size=min_size)
        pix = np.stack([np.clip(np.floor(boxes[:, 0]), 0, width), np.clip(np.floor(boxes[:, 1]), 0, height),
                        np.clip(np.ceil(boxes[:, 2]), 0, width), np.clip(np.ceil(boxes[:, 3]), 0, height)], 1)
        pix = pix[(pix[:, 2] > pix[:, 0]) & (pix[:, 3] > pix[:, 1])].astype(np.int64)
        assert len(crops) == len(pix), trial
        _check_geometry(crops, height, width)
        side = crops[:, 2] - crops[:, 0]
        bw, bh = pix[:, 2] - pix[:, 0], pix[:, 3] - pix[:, 1]
        want = np.minimum(np.maximum(np.ceil(s * np.maximum(bw, bh) - 1e-9), min_size), min(height, width))
        np.testing.assert_array_equal(side, want)
        for axis, (b0, b1) in enumerate([(pix[:, 0], pix[:, 2]), (pix[:, 1], pix[:, 3])]):
            c0, c1 = crops[:, axis], crops[:, axis + 2]
            covers = side >= b1 - b0
            # the box lies inside the crop wherever the side allows it ...
            assert ((c0 <= b0) & (c1 >= b1))[covers].all()
            # ... and the crop is centred on the box (so lies inside it) where it does not
            inner = ~covers
            assert ((c0 >= b0) & (c1 <= b1))[inner].all()
            np.testing.assert_array_less(np.abs((c0 + c1) - (b0 + b1))[inner], 2)


def test_lesion_crops_box_larger_than_image_is_clipped_square():
    crops = lesion_crops(np.array([[-20.0, 5.0, 140.0, 20.0]]), 50, 100, 2.0, 0)
    np.testing.assert_array_equal(crops, [[25, 0, 75, 50]])  # side min(H, W) = 50, centred on x


def test_lesion_crops_placement_is_random_over_the_valid_range():
    # box [40, 50) in a 100-wide image, side 30 -> valid starts 20..40, all should be reached
    box = np.array([[40, 40, 50, 70]])
    starts = {int(lesion_crops(box, 100, 100, 1.0, seed)[0, 0]) for seed in range(600)}
    assert starts == set(range(20, 41)), sorted(starts)
    ys = {int(lesion_crops(box, 100, 100, 1.0, seed)[0, 1]) for seed in range(50)}
    assert ys == {40}  # the crop is exactly the box along y: no freedom


def test_lesion_crops_drops_empty_and_bad_input():
    boxes = np.array([[200, 200, 300, 300], [5, 5, 5, 9], [np.nan, 0, 4, 4], [1, 1, 3, 3]])
    out = lesion_crops(boxes, 64, 64, 1.0, 0)  # outside, zero width, NaN: dropped
    assert out.shape == (1, 4)
    assert lesion_crops(np.zeros((0, 4)), 64, 64, 1.0, 0).shape == (0, 4)
    assert lesion_crops(torch.tensor([[1.0, 1.0, 3.0, 3.0]]), 64, 64, 1.0, 0).shape == (1, 4)
    with pytest.raises(ValueError, match="positive"):
        lesion_crops(np.array([[1, 1, 3, 3]]), 64, 64, 0.0, 0)
    with pytest.raises(ValueError, match=r"\(k, 4\)"):
        lesion_crops(np.array([[1, 1, 3]]), 64, 64, 1.0, 0)
    with pytest.raises(ValueError, match="size"):
        lesion_crops(np.array([[1, 1, 3, 3]]), 0, 64, 1.0, 0)


def test_parse_boxes_forms():
    np.testing.assert_array_equal(parse_boxes("1 2 3 4; 5 6 7 8"), [[1, 2, 3, 4], [5, 6, 7, 8]])
    np.testing.assert_array_equal(parse_boxes([[1, 2, 3, 4]]), [[1, 2, 3, 4]])
    np.testing.assert_array_equal(parse_boxes(torch.tensor([1.0, 2, 3, 4])), [[1, 2, 3, 4]])
    assert parse_boxes("").shape == parse_boxes(None).shape == parse_boxes(float("nan")).shape == (0, 4)
    with pytest.raises(ValueError):
        parse_boxes([[1, 2, 3]])
