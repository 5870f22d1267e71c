"""The translator's training recipe: lesion crops (several per box, each containing it, or centred),
patch sets (every normal patch, held-out groups, balancing), on-the-fly augmentation replayed from
its parameters, DiffAugment, and the held-out quality score that picks best.pt."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from shardgen import write_shards
from test_unit import blobs

from streamaug.models.registry import IdentityTranslator
from streamaug.train.augment import (
    apply_diffaug,
    apply_patch_aug,
    diff_augment,
    diffaug_params,
    draw_patches,
    patch_aug_params,
)
from streamaug.train.patches import HELDOUT_CROPS_PER_BOX, build_patch_sets, lesion_patch_sites, s_for_region
from streamaug.train.quality import TranslationScore
from streamaug.train.translator import parse_s

# ----------------------------------------------------------------------------- crops


def _contains(crops: np.ndarray, boxes: np.ndarray) -> bool:
    return bool(((crops[:, :2] <= boxes[:, :2]) & (crops[:, 2:] >= boxes[:, 2:])).all())


def test_crops_contain_their_box_and_vary():
    rng = np.random.default_rng(0)
    xy = rng.integers(0, 200, (30, 2))
    boxes = np.concatenate([xy, xy + rng.integers(4, 56, (30, 2))], 1)  # inside 256 x 256
    k = 5
    for s in (1.0, 1.5, 2.0):
        crops = lesion_patch_sites(boxes, 256, 256, s=s, k=k, min_size=8, rng=1)
        assert crops.shape == (30 * k, 4)
        assert _contains(crops, np.repeat(boxes, k, 0))  # the k crops of a box follow each other
        side = crops[:, 2] - crops[:, 0]
        assert (side == crops[:, 3] - crops[:, 1]).all() and (crops >= 0).all() and (crops <= 256).all()
        expected = np.maximum(np.ceil(s * (boxes[:, 2:] - boxes[:, :2]).max(1)), 8)
        assert (side == np.repeat(np.minimum(expected, 256), k)).all()
        per_box = crops.reshape(30, k, 4)
        varied = [len({tuple(c) for c in b}) > 1 for b in per_box]
        assert sum(varied) >= 25 if s > 1 else sum(varied) >= 10  # s=1 varies along the box's shorter side only
    assert not np.array_equal(lesion_patch_sites(boxes, 256, 256, s=2, k=2, rng=1),
                              lesion_patch_sites(boxes, 256, 256, s=2, k=2, rng=2))
    assert np.array_equal(lesion_patch_sites(boxes, 256, 256, s=2, k=2, rng=1),
                          lesion_patch_sites(boxes, 256, 256, s=2, k=2, rng=1))


def test_centred_crops_put_the_box_in_the_middle():
    boxes = np.array([[100, 100, 140, 120], [0, 5, 30, 25], [230, 200, 256, 250], [10, 10, 11, 11]])
    crops = lesion_patch_sites(boxes, 256, 256, s=2.0, k=4, centre=True, rng=0)
    assert len(crops) == len(boxes) and _contains(crops, boxes)  # one crop per box: they would all agree
    mid_crop, mid_box = (crops[:, :2] + crops[:, 2:]) / 2, (boxes[:, :2] + boxes[:, 2:]) / 2
    assert np.abs(mid_crop[0] - mid_box[0]).max() <= 0.5  # room around it: centred
    assert crops[1, 0] == 0 and crops[2, 2] == 256  # at the image edge: shifted in only as far as needed
    assert np.abs(mid_crop[3] - mid_box[3]).max() <= 0.5  # a tiny box: centred in its grown crop


def test_empty_and_outside_boxes_give_no_crop():
    crops = lesion_patch_sites([[5, 5, 5, 9], [300, 300, 310, 310], [2, 2, 6, 6]], 64, 64, s=1.0, k=3, rng=0)
    assert len(crops) == 3 and _contains(crops, np.array([[2, 2, 6, 6]] * 3))


def test_s_parsing_and_lookup():
    assert parse_s(None) == 1.0 and parse_s(2) == 2.0 and parse_s(["1.5"]) == 1.5
    assert parse_s(["lower_limb=1", "2"]) == {"lower_limb": 1.0, "*": 2.0}
    assert parse_s(parse_s(["lower_limb=1", "upper_limb=2"])) == {"lower_limb": 1.0, "upper_limb": 2.0}
    for bad in (["lower_limb=1", "lower_limb=2"], ["0"], ["x=-1"]):
        with pytest.raises(ValueError):
            parse_s(bad)
    assert s_for_region({"a": 1.0, "*": 3.0}, "a") == 1.0 and s_for_region({"a": 1.0, "*": 3.0}, None) == 3.0
    with pytest.raises(ValueError, match="no s for region 'b'"):
        s_for_region({"a": 1.0}, "b")


# ----------------------------------------------------------------------------- patch sets


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, n=40, shard_size=10, size=48, lesion_every=4, box=(10, 12, 26, 30))
    return str(folder)


def test_patch_sets_keep_every_normal_patch_and_hold_out_groups(shards):
    kw = dict(patch_size=32, s=1.5, n=2, split="all", seed=1, progress=False)
    one = build_patch_sets(shards, **kw)
    many = build_patch_sets(shards, crops_per_box=3, holdout=0.2, **kw)
    assert one.info["lesion_patches"] == 10 and len(one.heldout_lesion) == 0  # 10 lesion images, one box each
    assert one.info["normal_patches"] > one.info["lesion_patches"]  # every normal patch kept (n=2 per image)
    assert many.info["lesion_images"] == 8 and many.info["heldout_lesion_images"] == 2  # ceil(20 % of 10)
    assert many.info["lesion_patches"] == 8 * 3 and len(many.lesion) == 24
    assert len(many.heldout_lesion) == 2 * HELDOUT_CROPS_PER_BOX and many.info["heldout_normal_images"] == 6
    assert many.info["normal_images"] + many.info["heldout_normal_images"] == one.info["normal_images"]
    held = {tuple(p.flatten()[:8].tolist()) for p in many.heldout_normal}  # no held-out patch is trained on
    assert not held & {tuple(p.flatten()[:8].tolist()) for p in many.normal}
    most = build_patch_sets(shards, holdout=0.95, **kw)  # ceil(95 % of 10) = 10 groups, but one stays to train on
    assert most.info["lesion_images"] == 1 and most.info["heldout_lesion_images"] == 9
    balanced = build_patch_sets(shards, crops_per_box=3, balance_sets=True, **kw)
    assert len(balanced.lesion) == len(balanced.normal) == min(30, one.info["normal_patches"])


def test_batches_and_augmentation_replay_from_the_generator_state():
    patches = torch.rand(50, 1, 16, 16)
    g = torch.Generator().manual_seed(0)
    draw_patches(patches, 8, g, torch.device("cpu"), "all", 0.1)
    state = g.get_state()  # a checkpoint here ...
    after = [draw_patches(patches, 8, g, torch.device("cpu"), "all", 0.1) for _ in range(3)]
    g2 = torch.Generator().manual_seed(123)
    g2.set_state(state)  # ... and a resumed run
    again = [draw_patches(patches, 8, g2, torch.device("cpu"), "all", 0.1) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(after, again))
    assert not torch.equal(after[0], after[1])


def test_patch_augmentation_is_a_symmetry_plus_a_mild_jitter():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 8, 8) * 0.5 + 0.25
    params = patch_aug_params(64, "all", 0.0, g)
    y = apply_patch_aug(x, params)
    assert torch.equal(apply_patch_aug(x, params), y)  # the same parameters, the same result
    for i in range(64):  # without jitter: exactly rot90 k, then the flip
        ref = torch.rot90(x[i], int(params["rot"][i]), (-2, -1))
        torch.testing.assert_close(y[i], ref.flip(-1) if params["hflip"][i] else ref)
    assert len({int(k) for k in params["rot"]}) == 4 and 0 < int(params["hflip"].sum()) < 64
    jittered = apply_patch_aug(x, patch_aug_params(64, "all", 0.2, torch.Generator().manual_seed(0)))
    assert 0 < float((jittered - y).abs().max()) <= 0.2 and float(jittered.min()) >= 0
    flips = patch_aug_params(64, "hflip", 0.2, torch.Generator().manual_seed(0))
    assert set(flips) == {"hflip"}  # the original recipe: horizontal flips only
    assert torch.equal(apply_patch_aug(x, patch_aug_params(64, "none", 0.2, g)), x)


def test_diffaug_translation_cutout_color():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 32, 32, requires_grad=True)
    params = diffaug_params(x.shape, ("translation",), g)
    params["shift"][:] = torch.tensor([2, -3])
    y = apply_diffaug(x, params)
    assert torch.equal(y[:, :, 2:, :-3], x[:, :, :-2, 3:]) and float(y[:, :, :2].detach().abs().sum()) == 0
    y.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0  # differentiable
    cut = apply_diffaug(torch.ones(3, 1, 32, 32), {"cutout": torch.tensor([[16, 16], [0, 0], [31, 5]])})
    assert (cut == 0).sum((1, 2, 3)).tolist() == [256, 64, 9 * 13]  # clipped at the edges
    color = diffaug_params((1000, 1, 4, 4), ("color",), g)
    assert -0.5 <= float(color["brightness"].min()) < float(color["brightness"].max()) <= 0.5
    assert 0.5 <= float(color["contrast"].min()) < float(color["contrast"].max()) <= 1.5
    assert torch.equal(diff_augment(x, (), g), x)
    with pytest.raises(ValueError, match="unknown DiffAugment"):
        diffaug_params(x.shape, ("zoom",), g)


# ----------------------------------------------------------------------------- quality score


def test_quality_score_prefers_the_lesion_painter_then_identity_then_noise():
    """Held-out normal = blobs, lesion = blobs with a dark disk: a translator that paints disks beats the
    identity, which beats noise: the score would pick the right one of these checkpoints."""
    g = torch.Generator().manual_seed(0)
    normal, lesion = blobs(96, 32, g), blobs(96, 32, g, disk=True)
    score = TranslationScore(normal, lesion)
    identity = IdentityTranslator()
    painter = lambda x: blobs(len(x), 32, torch.Generator().manual_seed(1), disk=True)  # noqa: E731
    noise = lambda x: torch.rand(x.shape, generator=torch.Generator().manual_seed(2))  # noqa: E731
    kids = {name: score(t)["kid"] for name, t in
            (("painter", painter), ("identity", identity.translate), ("noise", noise))}
    assert kids["painter"] < kids["identity"] < kids["noise"]
    assert score(identity.translate)["kid_ratio"] == pytest.approx(1.0)
    assert score(painter)["kid_ratio"] < 0.5
