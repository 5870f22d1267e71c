"""Tiny generated shards for tests (no ../shared needed)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def file_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_manifest(folder: Path, shards: list[Path], counts: list[int], *, sha256: bool = True) -> None:
    """A packer-style ``manifest.json`` in ``folder`` listing ``shards`` (one split, ``all``)."""
    entries = [{"name": Path(p).name, "count": c, **({"sha256": file_sha256(p)} if sha256 else {})}
               for p, c in zip(shards, counts)]
    (Path(folder) / "manifest.json").write_text(json.dumps(
        {"format": "streamaug-shards/1", "splits": {"all": {"shards": entries, "count": sum(counts)}},
         "lesion_boxes": []}))


def tiny_image(i: int, size: int = 16) -> np.ndarray:
    """A deterministic 8-bit image whose top-left pixel encodes ``i``."""
    rng = np.random.default_rng(i)
    img = rng.integers(60, 250, size=(size, size), dtype=np.uint8)
    img[0, 0] = i % 256
    return img


def write_shards(folder: Path, n: int, shard_size: int, *, size: int = 16, lesion_every: int = 4,
                 manifest: bool = True, prefix: str = "t",
                 box: tuple[int, int, int, int] = (2, 3, 9, 10), sha256: bool = False,
                 lesion_value: int | None = None) -> list[Path]:
    """Write ``n`` samples (``k000000`` ...) into tar shards of ``shard_size`` samples.

    Every ``lesion_every``-th sample is a lesion (label ``tumor``) with one box. ``sha256``: the
    manifest records each shard's sha256, as the packer's does. ``lesion_value``: paint a lesion's
    box with this grey value (a visible lesion; default: the box looks like the rest of the noise).
    """
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    paths, entries = [], []
    for s, start in enumerate(range(0, n, shard_size)):
        path = folder / f"{prefix}-{s:06d}.tar"
        keys = range(start, min(n, start + shard_size))
        with tarfile.open(path, "w") as tar:
            for i in keys:
                lesion = i % lesion_every == 0
                meta = {"label": "tumor" if lesion else "normal", "region": "lower_limb", "view": "frontal",
                        "boxes": [list(box)] if lesion else [], "index": i}
                image = tiny_image(i, size)
                if lesion and lesion_value is not None:
                    image[box[1]:box[3], box[0]:box[2]] = lesion_value
                for ext, data in (("png", png_bytes(image)), ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"k{i:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
        entries.append({"name": path.name, "count": len(keys)})
        if sha256:
            entries[-1]["sha256"] = file_sha256(path)
    if manifest:
        (folder / "manifest.json").write_text(json.dumps(
            {"format": "streamaug-shards/1", "splits": {"all": {"shards": entries, "count": n}},
             "lesion_boxes": []}))
    return paths


def set_size_field(data: bytes, name: bytes, field: bytes) -> bytes:
    """Tar ``data`` with the size field of the header that holds ``name`` set to ``field`` (12 bytes)
    and its checksum fixed, so only the size is wrong."""
    out = bytearray(data)
    at = data.find(name) // 512 * 512
    out[at + 124:at + 136] = field
    out[at + 148:at + 156] = b" " * 8
    out[at + 148:at + 156] = b"%06o\0 " % sum(out[at:at + 512])
    return bytes(out)


def packed_phantom(root: Path, n_normal: int = 48, n_lesion: int = 24, *, size: int = 64, seed: int = 2,
                   shard_size: int = 8) -> str:
    """Phantom radiographs written into ``root/raw`` and packed into ``root/shards`` (train/val/test
    splits; the manifest holds the lesion boxes that site proposal needs); returns the shards folder."""
    from streamaug.cli.pack import pack
    from streamaug.phantom import write_phantom_dataset

    root = Path(root)
    write_phantom_dataset(root / "raw", n_normal=n_normal, n_lesion=n_lesion, size=(size, size), seed=seed)
    pack(root / "raw", root / "raw" / "metadata.csv", root / "shards", shard_size=shard_size, progress=False)
    return str(root / "shards")


def keys_of(samples) -> list[str]:
    """The keys of streamed samples, in order."""
    return [s["key"] for s in samples]


def loader_keys(ds, num_workers: int, batch_size: int = 3) -> list[str]:
    """The keys ``ds`` yields through a ``DataLoader`` with ``num_workers`` workers, in order."""
    from torch.utils.data import DataLoader

    from streamaug import collate_xray

    dl = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_xray)
    return [k for batch in dl for k in batch["key"]]
