"""Tests for streamaug.synth.ops: cosine_alpha, crop_sites, paste_blend (CPU, and CUDA when present)."""
from __future__ import annotations

import math

import pytest
import torch

from streamaug.synth.ops import cosine_alpha, crop_sites, paste_blend

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: 2 OpenMP threads on a busy 2-core box spin at barriers (much slower)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def dtype(request) -> torch.dtype:
    return request.param


def _reference_paste(images, translated, boxes, batch_index, n):
    """Slow, obvious reference: one site after the other, float64."""
    out = images.double().clone()
    for k in range(boxes.shape[0]):
        x0, y0, x1, y1 = (int(v) for v in boxes[k])
        h, w = y1 - y0, x1 - x0
        patch = torch.nn.functional.interpolate(
            translated[k : k + 1].double(), size=(h, w), mode="bilinear", align_corners=True
        )[0]
        a = cosine_alpha(h, w, n, dtype=torch.float64, device=images.device)
        b = int(batch_index[k])
        region = out[b, :, y0:y1, x0:x1]
        out[b, :, y0:y1, x0:x1] = a * patch + (1 - a) * region
    return out


# ----------------------------------------------------------------------------- cosine_alpha


@pytest.mark.parametrize("n", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("hw", [(5, 5), (7, 11), (9, 4)])
def test_cosine_alpha_formula_center_edges_symmetry(device, hw, n):
    h, w = hw
    a = cosine_alpha(h, w, n, device=device, dtype=torch.float64)
    assert a.shape == (h, w) and a.device.type == device.type
    i = torch.linspace(-1, 1, h, dtype=torch.float64, device=device)[:, None]
    j = torch.linspace(-1, 1, w, dtype=torch.float64, device=device)[None, :]
    ref = torch.cos(i.abs() ** n * math.pi / 2) * torch.cos(j.abs() ** n * math.pi / 2)
    torch.testing.assert_close(a, ref.clamp(0, 1), atol=1e-12, rtol=0)
    # edges exactly 0 (n >= 1), symmetric under flips
    assert a[0].abs().max() == 0 and a[-1].abs().max() == 0
    assert a[:, 0].abs().max() == 0 and a[:, -1].abs().max() == 0
    torch.testing.assert_close(a, a.flip(0), atol=1e-12, rtol=0)
    torch.testing.assert_close(a, a.flip(1), atol=1e-12, rtol=0)
    if h % 2 and w % 2:
        assert a[h // 2, w // 2] == 1.0
    assert float(a.max()) <= 1.0 and float(a.min()) >= 0.0


def test_cosine_alpha_square_is_transpose_symmetric_and_n_flattens():
    a2, a8 = cosine_alpha(9, 9, 2.0), cosine_alpha(9, 9, 8.0)
    assert torch.equal(a2, a2.T)
    assert float(a8.sum()) > float(a2.sum())  # larger n: wider plateau
    assert cosine_alpha(4, 4, 2.0, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_cosine_alpha_rejects_bad_n():
    with pytest.raises(ValueError):
        cosine_alpha(4, 4, 0.0)


# ----------------------------------------------------------------------------- crop_sites


def test_crop_exact_without_resize(device):
    torch.manual_seed(0)
    img = torch.rand(2, 1, 40, 50, device=device)
    boxes = torch.tensor([[3, 5, 13, 15], [20, 7, 30, 17], [0, 0, 10, 10], [40, 30, 50, 40]], device=device)
    bidx = torch.tensor([0, 1, 1, 0], device=device)
    patches = crop_sites(img, boxes, bidx, 10)
    assert patches.shape == (4, 1, 10, 10)
    for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        torch.testing.assert_close(patches[k], img[int(bidx[k]), :, y0:y1, x0:x1], atol=1e-5, rtol=0)


def test_crop_resize_corners_and_float_boxes(device, dtype):
    torch.manual_seed(1)
    img = torch.rand(1, 1, 32, 32, device=device).to(dtype)
    boxes = torch.tensor([[4.0, 6.0, 24.0, 16.0]], device=device)  # 20 wide x 10 high, float
    p = crop_sites(img, boxes, torch.tensor([0], device=device), 8)
    assert p.shape == (1, 1, 8, 8) and p.dtype == dtype
    tol = TOL[dtype]
    # corner to corner: the patch corners are the site's corner pixels
    for (pr, pc), (ir, ic) in {(0, 0): (6, 4), (0, 7): (6, 23), (7, 0): (15, 4), (7, 7): (15, 23)}.items():
        torch.testing.assert_close(p[0, 0, pr, pc].float(), img[0, 0, ir, ic].float(), atol=tol, rtol=0)
    ref = torch.nn.functional.interpolate(img[..., 6:16, 4:24].float(), size=(8, 8), mode="bilinear",
                                          align_corners=True)
    torch.testing.assert_close(p.float(), ref, atol=tol, rtol=0)


def test_crop_empty_and_bad_boxes():
    img = torch.rand(1, 1, 8, 8)
    assert crop_sites(img, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 4).shape == (0, 1, 4, 4)
    with pytest.raises(ValueError):
        crop_sites(img, torch.tensor([[4, 4, 4, 6]]), torch.tensor([0]), 4)


# ----------------------------------------------------------------------------- paste_blend


def test_paste_locality_bit_exact(device, dtype):
    torch.manual_seed(2)
    img = torch.rand(3, 1, 30, 40, device=device).to(dtype)
    boxes = torch.tensor([[2, 3, 12, 13], [20, 10, 36, 22], [5, 5, 25, 20]], device=device)
    bidx = torch.tensor([0, 0, 2], device=device)
    out = paste_blend(img, torch.rand(3, 1, 16, 16, device=device).to(dtype), boxes, bidx, n=2.0)
    inside = torch.zeros_like(img, dtype=torch.bool)
    for (x0, y0, x1, y1), b in zip(boxes.tolist(), bidx.tolist()):
        inside[b, :, y0:y1, x0:x1] = True
    assert out.dtype == dtype and out.shape == img.shape
    assert torch.equal(out[~inside], img[~inside])  # untouched pixels bit-identical
    assert torch.equal(out[1], img[1])  # image without sites untouched
    assert not torch.equal(out[inside], img[inside])
    # the site border has alpha 0 (n >= 1): the original value stays
    assert torch.equal(out[0, :, 3, 2:12], img[0, :, 3, 2:12])


def test_paste_blend_formula_known_pixel(device):
    img = torch.full((1, 1, 20, 20), 0.2, device=device)
    trans = torch.full((1, 1, 8, 8), 0.9, device=device)
    boxes = torch.tensor([[4, 2, 15, 11]], device=device)  # w 11, h 9
    out = paste_blend(img, trans, boxes, torch.tensor([0], device=device), n=2.0)
    a = cosine_alpha(9, 11, 2.0, device=device)
    r, c = 3, 7  # in-site pixel -> image (2 + 3, 4 + 7)
    expect = a[r, c] * 0.9 + (1 - a[r, c]) * 0.2
    torch.testing.assert_close(out[0, 0, 5, 11], expect, atol=1e-6, rtol=0)
    torch.testing.assert_close(out[0, 0, 2 + 4, 4 + 5], torch.tensor(0.9, device=device), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[0, 0, 2:11, 4:15], a * 0.9 + (1 - a) * 0.2, atol=1e-6, rtol=0)


def test_paste_overlapping_different_sizes_matches_reference(device, dtype):
    torch.manual_seed(3)
    img = torch.rand(2, 1, 48, 64, device=device)
    trans = torch.rand(4, 1, 12, 12, device=device)
    # image 0: two overlapping sites of different sizes; image 1: one non-square site; then one more on 0
    boxes = torch.tensor([[5, 5, 30, 30], [20, 15, 45, 33], [10, 0, 60, 20], [0, 40, 7, 48]], device=device)
    bidx = torch.tensor([0, 0, 1, 0], device=device)
    ref = _reference_paste(img, trans, boxes, bidx, 3.0)
    out = paste_blend(img.to(dtype), trans.to(dtype), boxes, bidx, 3.0)
    torch.testing.assert_close(out.double(), ref, atol=TOL[dtype] * 2, rtol=0)
    # order matters where sites overlap: swapping the two overlapping sites changes the overlap only
    swapped = paste_blend(img, trans[[1, 0, 2, 3]], boxes[[1, 0, 2, 3]], bidx[[1, 0, 2, 3]], 3.0)
    torch.testing.assert_close(swapped.double(), _reference_paste(img, trans[[1, 0, 2, 3]],
                               boxes[[1, 0, 2, 3]], bidx[[1, 0, 2, 3]], 3.0), atol=1e-5, rtol=0)


def test_crop_identity_paste_roundtrip(device):
    """Crop at the site size, translate by identity, paste: the image comes back."""
    torch.manual_seed(4)
    img = torch.rand(2, 1, 32, 32, device=device)
    boxes = torch.tensor([[3, 4, 19, 20], [10, 10, 26, 26]], device=device)
    bidx = torch.tensor([1, 0], device=device)
    out = paste_blend(img, crop_sites(img, boxes, bidx, 16), boxes, bidx, n=2.0)
    torch.testing.assert_close(out, img, atol=1e-5, rtol=0)
    # and with a resize in between (64 then back): close, since bilinear up/down is near-lossless
    out2 = paste_blend(img, crop_sites(img, boxes, bidx, 61), boxes, bidx, n=2.0)
    torch.testing.assert_close(out2, img, atol=5e-2, rtol=0)


def test_paste_is_differentiable_and_validates():
    img = torch.rand(1, 1, 16, 16)
    trans = torch.rand(1, 1, 8, 8, requires_grad=True)
    out = paste_blend(img, trans, torch.tensor([[2, 2, 10, 10]]), torch.tensor([0]), 2.0)
    out.sum().backward()
    assert trans.grad is not None and trans.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        paste_blend(img, torch.rand(2, 1, 8, 8), torch.tensor([[2, 2, 10, 10]]), torch.tensor([0]), 2.0)
    empty = paste_blend(img, torch.zeros(0, 1, 8, 8), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 2.0)
    assert torch.equal(empty, img)


def test_paste_weight_scales_the_mask(device):
    """``weight`` multiplies alpha: ones change nothing, zeros leave the image, a half-plane is local."""
    torch.manual_seed(5)
    img = torch.rand(2, 1, 24, 24, device=device)
    trans = torch.rand(2, 1, 10, 10, device=device)
    boxes = torch.tensor([[2, 3, 12, 13], [6, 6, 22, 20]], device=device)
    bidx = torch.tensor([0, 1], device=device)
    plain = paste_blend(img, trans, boxes, bidx, 2.0)
    ones = torch.ones(2, 1, 10, 10, device=device)
    assert torch.equal(paste_blend(img, trans, boxes, bidx, 2.0, weight=ones), plain)
    assert torch.equal(paste_blend(img, trans, boxes, bidx, 2.0, weight=ones * 0), img)
    half = ones.clone()
    half[..., :, 5:] = 0  # no content in the patch's right half
    out = paste_blend(img, trans, boxes, bidx, 2.0, weight=half)
    ref = _reference_paste(torch.cat([img, torch.ones_like(img)], 1)[:, :1], trans, boxes, bidx, 2.0)
    x0, y0, x1, y1 = boxes[0].tolist()
    right = (x0 + x1) // 2 + 1
    assert torch.equal(out[0, :, :, right:], img[0, :, :, right:])  # weight 0: untouched
    torch.testing.assert_close(out[0, :, y0:y1, x0:x0 + 3].double(), ref[0, :, y0:y1, x0:x0 + 3], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="weight"):
        paste_blend(img, trans, boxes, bidx, 2.0, weight=ones[:, :, :5])


def test_a_paste_over_the_top_border_touches_no_other_image():
    """paste_blend's promise: parts of a site outside the image are dropped. Only the left border was
    tested; rows above the top wrapped into the previous image of the batch when unchecked."""
    img = torch.rand(2, 1, 16, 16)
    out = paste_blend(img, torch.ones(1, 1, 8, 8), torch.tensor([[4, -4, 12, 4]]), torch.tensor([1]), 2.0)
    assert torch.equal(out[0], img[0]) and torch.equal(out[1, :, 4:], img[1, :, 4:])
