"""The device path on a GPU: each stage on CUDA makes what it makes on the CPU, the streams resume
exactly there, and the trainers write checkpoints a CPU-only machine loads.

Skipped without CUDA. ``STREAMAUG_TEST_DEVICE=cpu`` runs the same checks with the CPU standing in for
the device (a check of the tests themselves, where no GPU is lent); ``benchmarks/device/check.sh``
runs them on a lent GPU. The CPU comparisons use float32 on both sides (TF32 switched off).
"""
from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from shardgen import packed_phantom, write_shards

from streamaug import LesionStream, PseudoLabel, SynthesisStage
from streamaug.models import get_classifier
from streamaug.models.checkpoint import load_classifier, load_inpainter, load_translator, save_translator
from streamaug.models.pix2pix import Pix2Pix, pix2pix_preset
from streamaug.models.unit import UNIT, unit_preset
from streamaug.sites import LesionBoxBank, SiteProposer
from streamaug.synth import CopyPaste, Inpaint, LesionCrops

DEVICE = os.environ.get("STREAMAUG_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else None)
pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs a CUDA device (STREAMAUG_TEST_DEVICE=cpu to "
                                                       "check these tests on the CPU)")
BOX = (10, 12, 26, 30)
BANK = LesionBoxBank.from_records([{"key": "L", "region": "lower_limb", "view": "frontal", "width": 48,
                                    "height": 48, "boxes": [list(BOX)], "label": "tumor"}])


@pytest.fixture(autouse=True)
def float32_on_the_device():
    """cuDNN convolutions default to TF32 (about 1e-3 relative error): compare at float32."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """48 px images, one positive in three with box BOX painted bright (a visible lesion)."""
    folder = tmp_path_factory.mktemp("cuda_shards")
    write_shards(folder, n=36, shard_size=6, size=48, lesion_every=3, box=BOX, lesion_value=250)
    return str(folder)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return packed_phantom(tmp_path_factory.mktemp("cuda_phantom"), n_normal=32, n_lesion=16)


def normals(b: int = 4, size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``b`` bright images and two sites of each: ``(images, boxes (2b, 4), source (2b,))``."""
    images = 0.5 + 0.4 * torch.rand(b, 1, size, size, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[4, 6, 36, 38], [24, 20, 56, 52]] * b)
    return images, boxes, torch.arange(b).repeat_interleave(2)


def seeded(make, seed: int):
    torch.manual_seed(seed)
    return make()


def both(make_stage):
    """The same stage on the CPU and on DEVICE (its modules copied, not shared)."""
    return make_stage("cpu"), make_stage(DEVICE)


def assert_same_candidates(cpu, dev, atol: float = 1e-4) -> None:
    assert torch.equal(cpu.source, dev.source.cpu()) and torch.equal(cpu.boxes, dev.boxes.cpu())
    assert dev.images.device.type == torch.device(DEVICE).type
    torch.testing.assert_close(dev.images.cpu(), cpu.images, atol=atol, rtol=0)


def test_translate_blend_and_ranked_filter_match_the_cpu():
    unit = seeded(lambda: UNIT(unit_preset("tiny")), 0)
    drn = seeded(lambda: get_classifier("drn_tiny")(), 1)

    def stage(device):
        filt = PseudoLabel(copy.deepcopy(drn), threshold=None, device=device)
        return SynthesisStage(copy.deepcopy(unit), filter=filt, device=device, min_intensity=None, seed=3)

    images, boxes, source = normals()
    cpu, dev = (s.synthesize(images, boxes, source, want=3) for s in both(stage))
    assert_same_candidates(cpu, dev)
    torch.testing.assert_close(dev.translated.cpu(), cpu.translated, atol=1e-4, rtol=0)
    torch.testing.assert_close(dev.scores.cpu(), cpu.scores, atol=1e-4, rtol=0)
    assert int(dev.keep.sum()) == 3 and torch.equal(dev.keep.cpu(), cpu.keep)


def test_copy_paste_and_inpaint_match_the_cpu():
    lesion = torch.full((1, 48, 48), 0.2)
    lesion[:, 12:30, 10:26] = 0.9
    crops = LesionCrops.from_samples([{"key": "L", "label": 1, "image": lesion,
                                       "boxes": torch.tensor([BOX], dtype=torch.float32)}], size=32)
    images, boxes, source = normals()
    cpu, dev = (SynthesisStage(synthesizer=CopyPaste(crops=crops, device=d), device=d, min_intensity=None, seed=5)
                .synthesize(images, boxes, source) for d in ("cpu", DEVICE))
    assert_same_candidates(cpu, dev, atol=1e-5)
    assert dev.params["lesion"].tolist() == cpu.params["lesion"].tolist()  # the draws are made on the CPU

    pix = seeded(lambda: Pix2Pix(pix2pix_preset("tiny", image_size=32, depth=4)), 2)
    cpu, dev = (SynthesisStage(synthesizer=Inpaint(copy.deepcopy(pix), device=d), device=d, seed=5)
                .synthesize(images, boxes[::2], source[::2]) for d in ("cpu", DEVICE))
    assert_same_candidates(cpu, dev)
    for k, (x0, y0, x1, y1) in enumerate(boxes[::2].tolist()):  # the kept box is the source's, bit for bit
        assert torch.equal(dev.images[k, :, y0:y1, x0:x1].cpu(), images[k, :, y0:y1, x0:x1])


@pytest.mark.skipif(DEVICE != "cuda", reason="bfloat16 autocast is a CUDA setting")
def test_bfloat16_translation_stays_close_to_float32():
    unit = seeded(lambda: UNIT(unit_preset("tiny")), 0)
    images, boxes, source = normals()
    f32, bf16 = (SynthesisStage(copy.deepcopy(unit), device="cuda", dtype=dtype, min_intensity=None, seed=3)
                 .synthesize(images, boxes, source) for dtype in (None, torch.bfloat16))
    assert bf16.images.dtype == torch.float32
    torch.testing.assert_close(bf16.images, f32.images, atol=0.05, rtol=0)


def _stream(shards, device=DEVICE):
    drn = seeded(lambda: get_classifier("drn_tiny")(), 1)
    return LesionStream(shards, translator=seeded(lambda: UNIT(unit_preset("tiny")), 0),
                        filter=PseudoLabel(drn, threshold=None, device=device), device=device,
                        sites=SiteProposer(BANK, n=4, min_intensity=0.0), min_intensity=None, device_batch=8,
                        synthetic_fraction=0.3, epoch_length=30, seed=7)


@pytest.mark.parametrize("k", [0, 11])
def test_lesion_stream_on_the_device_resumes_exactly(shards, k):
    full = list(_stream(shards))
    first = _stream(shards)
    it = iter(first)
    head = [next(it) for _ in range(k)]
    resumed = _stream(shards)
    resumed.load_state_dict(first.state_dict())
    again = head + list(resumed)
    assert [s["key"] for s in again] == [s["key"] for s in full]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(full, again))
    assert all(s["image"].device.type == torch.device(DEVICE).type for s in full)
    made = [s for s in full if s["synthetic"]]
    assert made and all(s["provenance"]["synthesizer"] == "translate" for s in made)


def test_lesion_stream_real_samples_do_not_depend_on_the_device(shards):
    on_cpu, on_dev = list(_stream(shards, device="cpu")), list(_stream(shards))
    assert [s["synthetic"] for s in on_cpu] == [s["synthetic"] for s in on_dev]  # the mix is drawn on the CPU
    real = [[(s["key"], s["label"]) for s in run if not s["synthetic"]] for run in (on_cpu, on_dev)]
    assert real[0] == real[1] and 0 < len(real[0]) < 30
    for a, b in zip(on_cpu, on_dev):
        if not a["synthetic"] and not b["synthetic"]:
            assert torch.equal(a["image"], b["image"].cpu())


def test_classifier_trainer_on_the_lesion_stream_writes_checkpoints_a_cpu_loads(phantom, tmp_path):
    from streamaug.train.classifier import train_classifier
    from streamaug.train.classifier_data import RunConfig

    config = unit_preset("tiny")
    translator = save_translator(tmp_path / "translator.pt", seeded(lambda: UNIT(config), 0), config=config,
                                 patch_size=config.patch_size, s=1.0, region="any", manifest_sha256="0" * 64, step=0)
    base = dict(train_shards=[phantom], val_shards=[phantom], train_split="train", val_split="val", image_size=32,
                batch_size=8, seed=1, device=DEVICE)
    filt = train_classifier(RunConfig(**base, out=str(tmp_path / "base"), epochs=1), progress=False)
    aug = dict(stream="lesion", synthesizer="mix", translator=str(translator), filter_classifier=str(filt),
               filter_mode="rank", synthetic_per_positive=1.0)
    train_classifier(RunConfig(**base, out=str(tmp_path / "aug"), epochs=1, **aug), progress=False)
    # --resume on the device: the RNG states in last.pt must come back to the CPU
    best = train_classifier(RunConfig(**base, out=str(tmp_path / "aug"), epochs=2, **aug), resume=True,
                            progress=False)
    loaded = load_classifier(best)  # on the CPU
    assert next(loaded.model.parameters()).device.type == "cpu"
    assert loaded.model(torch.rand(2, 1, 32, 32)).shape == (2,)
    assert load_classifier(tmp_path / "aug" / "last.pt").extra["stream"][-1]["emitted"]["synthetic"] > 0


def test_translator_and_inpainter_trainers_on_the_device(shards, tmp_path):
    from streamaug.train.__main__ import main as train_main

    bf16 = ["--bf16"] if DEVICE == "cuda" else []

    def run(kind, out, steps, *extra):
        train_main([kind, "--shards", shards, "--split", "all", "--out", str(tmp_path / out), "--steps", str(steps),
                    "--ckpt-every", "2", "--sample-every", "2", "--device", DEVICE, *bf16, *extra])

    unit_args = ("--s", "1.5", "--n", "2", "--batch-size", "4")
    run("translator", "unit", 3, *unit_args)
    run("translator", "unit", 4, *unit_args, "--resume")  # from the step-3 checkpoint, on the device
    unit = load_translator(tmp_path / "unit" / "translator.pt")
    assert unit.meta["step"] == 4
    out = unit.translate(torch.rand(2, 1, unit.patch_size, unit.patch_size))
    assert torch.isfinite(out).all() and float(out.min()) >= 0 and float(out.max()) <= 1
    run("inpainter", "pix", 3, "--image-size", "32", "--batch-size", "2")
    pix = load_inpainter(tmp_path / "pix" / "inpainter.pt")
    assert pix.meta["step"] == 3 and pix.image_size == 32


def test_translator_resume_on_the_device_replays_its_latent_noise(shards, tmp_path):
    """UNIT's latent noise (``randn_like`` of a device tensor) draws from the device's generator. Before,
    last.pt kept only the CPU's, so a resumed run on CUDA drew other noise from step 3 on."""
    from streamaug.train.__main__ import main as train_main

    def run(out, steps, *extra):
        train_main(["translator", "--shards", shards, "--split", "all", "--out", str(tmp_path / out), "--steps",
                    str(steps), "--ckpt-every", "2", "--sample-every", "100", "--score-every", "0", "--device", DEVICE,
                    "--s", "1.5", "--n", "2", "--batch-size", "4", *extra])

    run("straight", 4)
    run("resumed", 2)
    torch.manual_seed(123)  # the process's generators move on between a crash and a --resume
    if DEVICE == "cuda":
        torch.cuda.manual_seed(123)
    run("resumed", 4, "--resume")
    logs = [[json.loads(line) for line in (tmp_path / out / "losses.jsonl").read_text().splitlines()]
            for out in ("straight", "resumed")]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [1, 2, 3, 4]
    for a, b in zip(*logs):  # cuDNN may differ in the last bits; other noise moves the losses by percents
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-4 * max(1.0, abs(a[k])) for k in a)
