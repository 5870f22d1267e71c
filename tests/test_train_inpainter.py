"""python -m streamaug.train inpainter: a short run, exact resume, refusals; the pairs it trains on
(real boxes, and for --normals random boxes inside the image that follow the real boxes' sizes)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp
from shardgen import write_shards

from streamaug.models.checkpoint import CheckpointError, load_inpainter
from streamaug.models.pix2pix import box_mask
from streamaug.train.__main__ import main as train_main
from streamaug.train.inpainter import InpainterRun, Pairs, draw_batch, random_boxes, read_pairs, train_inpainter

BOX = (10, 12, 26, 30)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inpainter_shards")
    write_shards(folder, n=24, shard_size=8, size=48, lesion_every=3, box=BOX)
    return str(folder)


def run_cfg(shards, out, steps, **kw):
    return InpainterRun(shards=[shards], out=str(out), preset="tiny", image_size=32, steps=steps, batch_size=3,
                        sample_every=2, ckpt_every=2, seed=3, **kw)


def test_cli_trains_and_writes_everything(shards, tmp_path):
    train_main(["inpainter", "--shards", shards, "--out", str(tmp_path), "--steps", "3", "--image-size", "32",
                "--batch-size", "2", "--sample-every", "2", "--ckpt-every", "2", "--split", "all", "--normals"])
    model = load_inpainter(tmp_path / "inpainter.pt")
    assert model.image_size == 32 and model.meta["step"] == 3 and model.id.endswith("-step3")
    losses = [json.loads(line) for line in (tmp_path / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses] == [1, 2, 3] and set(losses[0]) == {"step", "dis", "gen", "gen_adv", "l1"}
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_000002.png", "step_000003.png"]
    info = json.loads((tmp_path / "run.json").read_text())["data"]
    assert info == {**info, "positive_images": 8, "boxes": 8, "normal_images": 16, "image_size": 32}
    saved = model.meta["extra"]["run"]  # the resolved config, every field, travels with the weights
    assert set(saved) == {f.name for f in dataclasses.fields(InpainterRun)}
    assert saved["normals"] is True and saved["shards"] == [shards] and saved["batch_size"] == 2


def test_resume_continues_identically(shards, tmp_path):
    straight = train_inpainter(run_cfg(shards, tmp_path / "a", 4, normals=True, split="all"), progress=False)
    train_inpainter(run_cfg(shards, tmp_path / "b", 2, normals=True, split="all"), progress=False)
    with open(tmp_path / "b" / "losses.jsonl", "a") as log:  # logged by a run killed after its step-2 checkpoint
        log.write('{"step": 3, "l1": 9.0}\n{"step": 4, "l1": 9.0}\n{"step": 5, "l')
    resumed = train_inpainter(run_cfg(shards, tmp_path / "b", 4, normals=True, split="all"), resume=True,
                              progress=False)
    wa = torch.load(straight, weights_only=True)
    wb = torch.load(resumed, weights_only=True)
    assert wa["step"] == wb["step"] == 4 and wa["weights"].keys() == wb["weights"].keys()
    assert all(torch.equal(wa["weights"][k], wb["weights"][k]) for k in wa["weights"])
    assert (tmp_path / "a" / "losses.jsonl").read_text() == (tmp_path / "b" / "losses.jsonl").read_text()


def test_resume_refuses_a_changed_config_and_a_checkpoint_without_trainer_state(shards, tmp_path):
    ckpt = train_inpainter(run_cfg(shards, tmp_path, 2, split="all"), progress=False)
    with pytest.raises(CheckpointError, match="different config.*normals: saved False, given True"):
        train_inpainter(run_cfg(shards, tmp_path, 4, normals=True, split="all"), resume=True, progress=False)
    payload = torch.load(ckpt, weights_only=True)
    payload["trainer_state"] = None  # as an inference-only export
    torch.save(payload, ckpt)
    with pytest.raises(CheckpointError, match=r"inpainter\.pt: no trainer state"):
        train_inpainter(run_cfg(shards, tmp_path, 4, split="all"), resume=True, progress=False)
    del payload["trainer_state"]  # a file without the key at all
    torch.save(payload, ckpt)
    with pytest.raises(CheckpointError, match=r"inpainter\.pt: no trainer state"):
        train_inpainter(run_cfg(shards, tmp_path, 4, split="all"), resume=True, progress=False)


def test_normals_without_normal_images_are_refused(tmp_path):
    write_shards(tmp_path / "chest", n=4, shard_size=4, size=32, lesion_every=1)  # like NIH: positives only
    with pytest.raises(ValueError, match="4 lesion boxes and 0 normal images.*--normals needs normal images"):
        train_inpainter(run_cfg(str(tmp_path / "chest"), tmp_path / "out", 1, normals=True, split="all"),
                        progress=False)


def test_pairs_keep_the_real_boxes_and_mirror_them_with_the_image(shards):
    pairs = read_pairs(shards, size=32, split="all", progress=False)
    assert len(pairs.normals) == 0 and len(pairs.images) == 8
    s = 32 / 48
    torch.testing.assert_close(pairs.boxes, torch.tensor([BOX], dtype=torch.float32).expand(8, 4) * s)
    y, mask = draw_batch(pairs, 40, torch.Generator().manual_seed(0), flip=True)
    plain, mirrored = box_mask(pairs.boxes[:1], 32, 32)[0], box_mask(pairs.boxes[:1], 32, 32)[0].flip(-1)
    flags = [torch.equal(m, plain) for m in mask]
    assert all(f or torch.equal(m, mirrored) for f, m in zip(flags, mask)) and 0 < sum(flags) < len(flags)
    for yk, mk in zip(y, mask):  # each drawn image is a stored one, mirrored exactly when its box is
        stored = pairs.images.float()
        image = yk if torch.equal(mk, plain) else yk.flip(-1)
        assert any(torch.equal(image, x) for x in stored)


def test_pairs_use_only_the_listed_positives(shards):
    """The experiment's inpainter sees only the kept (rare) positives, like its translator and classifiers."""
    every = read_pairs(shards, size=32, split="all", progress=False)
    kept = every.keys[::3]
    pairs = read_pairs(shards, size=32, split="all", positives=kept, progress=False)
    assert pairs.keys == kept and len(pairs.boxes) == len(kept)
    with_normals = read_pairs(shards, size=32, split="all", positives=kept, normals=True, progress=False)
    assert len(with_normals.normals) == 16 and set(with_normals.keys) - set(kept) == {
        with_normals.keys[i] for i in with_normals.normals.tolist()}  # every normal, only the kept positives


def _real_sizes(n: int = 300) -> torch.Tensor:
    """Real-looking box sizes in a 64 px image: log-normal widths and heights, clipped to [2, 48]."""
    rng = np.random.default_rng(0)
    return torch.tensor(np.clip(rng.lognormal([2.3, 2.6], [0.5, 0.4], size=(n, 2)), 2, 48), dtype=torch.float32)


def test_random_boxes_stay_inside_and_follow_the_real_size_distribution():
    real = _real_sizes()
    boxes = random_boxes(real, 64, 80, 4000, torch.Generator().manual_seed(1))
    assert bool((boxes[:, :2] >= 0).all()) and bool((boxes[:, 2] <= 80).all()) and bool((boxes[:, 3] <= 64).all())
    w, h = (boxes[:, 2] - boxes[:, 0]).numpy(), (boxes[:, 3] - boxes[:, 1]).numpy()
    assert bool((w > 0).all() and (h > 0).all())
    rw, rh = real[:, 0].numpy(), real[:, 1].numpy()
    for drawn, want in ((w, rw), (h, rh), (w * h, rw * rh), (w / h, rw / rh)):  # sizes, areas, aspect: jointly
        assert ks_2samp(drawn, want).pvalue > 0.05
    uniform = np.random.default_rng(2).uniform(rw.min(), rw.max(), 4000)  # the check tells a wrong sampler apart
    assert ks_2samp(uniform, rw).pvalue < 1e-6
    places = boxes[:, 0] / (80 - torch.as_tensor(w))  # corners spread over the whole free range
    assert float(places.min()) < 0.05 and float(places.max()) > 0.95


def test_normal_pairs_get_random_boxes_of_real_sizes():
    g = torch.Generator().manual_seed(0)
    real = torch.tensor([[2.0, 3.0, 12.0, 9.0], [20.0, 20.0, 28.0, 30.0]])
    pairs = Pairs(torch.rand(5, 1, 32, 32).half(), real, torch.tensor([0, 1]), torch.tensor([2, 3, 4]),
                  [f"k{i}" for i in range(5)], {})
    _, mask = draw_batch(pairs, 200, g, flip=False)
    rows, cols = mask.any(-1)[:, 0], mask.any(-2)[:, 0]
    sizes = {(int(c.sum()), int(r.sum())) for r, c in zip(rows, cols)}
    # a random box of width 10 or 8 at a fractional place covers 10-11 or 8-9 whole pixels
    assert sizes <= {(10, 6), (11, 6), (10, 7), (11, 7), (8, 10), (9, 10), (8, 11), (9, 11)} and len(sizes) > 2


def test_resume_on_other_data_is_refused(tmp_path):
    """The same folder re-packed with other pixels (its manifest's sha256 change): resuming would mix two
    datasets in one model."""
    data = tmp_path / "data"
    write_shards(data, n=24, shard_size=8, size=48, lesion_every=3, box=BOX, sha256=True)
    train_inpainter(run_cfg(str(data), tmp_path / "out", 2, split="all"), progress=False)
    write_shards(data, n=24, shard_size=8, size=48, lesion_every=3, box=BOX, sha256=True, lesion_value=200)
    with pytest.raises(CheckpointError, match=r"inpainter\.pt: trained on other data.*new --out"):
        train_inpainter(run_cfg(str(data), tmp_path / "out", 4, split="all"), resume=True, progress=False)
