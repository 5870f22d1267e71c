"""A zarr store of X-rays: random access by key, streamed as the same sample dicts as the shards.

Layout (``format = "streamaug-zarr/1"``), one zarr group:

* ``images/<key>``: one 2-D array ``(H, W)`` per image, one chunk per image (zarr's default
  lossless compression), dtype as given (``uint8``, ``uint16`` or ``float32``). One array per image,
  not a stacked ``(N, H, W)`` array, so images of different sizes fit and a read touches one chunk.
* ``masks/<key>``: ``uint8`` ``(H, W)`` in ``{0, 1}``, only for images that have a mask.
* Root attribute ``samples``: the metadata table, a list (in write order) of
  ``{"key", "meta", "shape", "dtype", "scale", "mask"}`` where ``meta`` is the caller's JSON-able
  metadata (``label``, ``boxes``, ``region``, ``view``, ...) and ``scale`` the divisor that maps
  the stored values to ``[0, 1]`` (255, 65535, ``2**bits - 1`` when ``meta["bits"]`` says so, or
  1 for floats).

Examples:
    >>> import numpy as np, tempfile, os
    >>> root = os.path.join(tempfile.mkdtemp(), "x.zarr")
    >>> img = np.full((8, 8), 255, np.uint8)
    >>> _ = write_zarr(root, [("a", img, {"label": "tumor", "boxes": [[1, 1, 4, 4]]})])
    >>> s = next(iter(ZarrXRays(root, shuffle=False)))
    >>> s["key"], tuple(s["image"].shape), s["label"], s["boxes"].tolist()
    ('a', (1, 8, 8), 1, [[1.0, 1.0, 4.0, 4.0]])
"""
from __future__ import annotations

import json
import numbers
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from streamaug._optional import optional_import
from streamaug.data.decode import box_array
from streamaug.data.distributed import current_slot
from streamaug.io.errors import SampleError
from streamaug.io.labels import to_int_label

__all__ = ["write_zarr", "ZarrXRays", "ZARR_FORMAT"]

ZARR_FORMAT = "streamaug-zarr/1"


def write_zarr(
    path: str | os.PathLike,
    images: Iterable[tuple[str, Any, Mapping[str, Any]] | tuple[str, Any, Mapping[str, Any], Any]],
    *,
    overwrite: bool = False,
) -> list[str]:
    """Write images and their metadata into a zarr group (layout in the module docstring).

    Args:
        path: the zarr directory to create.
        images: ``(key, image, meta)`` or ``(key, image, meta, mask)`` tuples. ``image`` is an
            array or tensor ``(H, W)`` or ``(1, H, W)``: ``uint8``, ``uint16`` (scaled by
            ``2**meta["bits"] - 1`` when ``meta`` has ``bits``, else 65535) or float in ``[0, 1]``
            (stored as ``float32``). ``meta`` must be JSON-serialisable (tuples become lists); its
            ``boxes`` (``[[x0, y0, x1, y1], ...]``) must lie inside the image.
            ``mask`` is ``(H, W)`` or ``(1, H, W)``; nonzero means lesion.
        overwrite: replace an existing store at ``path`` (default: refuse).

    Returns:
        The keys written, in order.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        ValueError: a duplicate or invalid key, a bad shape/dtype, a float image outside
            ``[0, 1]``, a ``uint16`` image with values above ``2**bits - 1`` or a ``bits`` outside
            1..16, ``boxes`` that are not ``(k, 4)`` or break the packer's box rule
            (:func:`streamaug.data.decode.box_array`), a mask whose shape differs from its image, or
            non-JSON metadata.
    """
    zarr = optional_import("zarr", extra="streamaug[zarr]", purpose="the zarr source")

    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    group = zarr.open_group(str(path), mode="w")
    table: list[dict] = []
    seen: set[str] = set()
    for item in images:
        key, image, meta = item[0], item[1], item[2]
        mask = item[3] if len(item) > 3 else None
        _check_key(key, seen)
        arr = _as_2d(image, f"image {key!r}")
        arr, scale = _storable(arr, meta, key)
        _, problem = box_array(meta.get("boxes"), *arr.shape)
        if problem is not None:
            raise ValueError(f"write_zarr: boxes {str(meta.get('boxes'))[:120]} of {key!r} are unusable: {problem}; "
                             "give [[x0, y0, x1, y1], ...] inside the image (end-exclusive pixels)")
        try:
            meta_json = json.loads(json.dumps(dict(meta), default=_json_default))
        except (TypeError, ValueError) as err:
            raise ValueError(f"write_zarr: metadata of {key!r} is not JSON-serialisable: {err}") from err
        group.create_array(f"images/{key}", shape=arr.shape, dtype=arr.dtype, chunks=arr.shape)[...] = arr
        has_mask = mask is not None
        if has_mask:
            m = _as_2d(mask, f"mask {key!r}")
            if m.shape != arr.shape:
                raise ValueError(f"write_zarr: mask of {key!r} is {m.shape}, image is {arr.shape}")
            m = (m > 0).astype(np.uint8)
            group.create_array(f"masks/{key}", shape=m.shape, dtype=m.dtype, chunks=m.shape)[...] = m
        table.append({"key": key, "meta": meta_json, "shape": list(arr.shape), "dtype": str(arr.dtype),
                      "scale": scale, "mask": has_mask})
    group.attrs.update({"format": ZARR_FORMAT, "samples": table})
    return [row["key"] for row in table]


class ZarrXRays(torch.utils.data.IterableDataset):
    """Stream a store written by :func:`write_zarr` as shard-style sample dicts.

    Each sample: ``key`` (str), ``image`` float32 ``(1, H, W)`` in ``[0, 1]``, ``label`` int
    (:func:`streamaug.io.labels.to_int_label` of ``meta["label"]``), ``boxes`` float32 ``(k, 4)``
    (``meta["boxes"]``, ``x0 y0 x1 y1``), ``meta`` (the stored metadata plus ``source``,
    ``format="zarr"``, ``size``, ``shard`` = the store path), and ``mask`` float32 ``(1, H, W)``
    when the image has one.

    Splitting: the (shuffled) key order is dealt round-robin over all readers
    (``streamaug.data.distributed.current_slot()``: ranks x DataLoader workers), so every key is read
    exactly once per epoch across the job; reader counts may differ by one sample. With
    ``resampled=True`` each reader draws keys with replacement forever (seeded by seed, epoch and
    its slot). The order depends only on ``(seed, epoch)``: call :meth:`set_epoch` before each
    epoch (with ``persistent_workers=True`` workers keep the epoch they were started with).

    Args:
        path: the zarr store.
        shuffle: shuffle the key order per epoch (default ``True``).
        seed: base seed of the shuffle.
        resampled: sample with replacement, endlessly.
    """

    def __init__(self, path: str | os.PathLike, *, shuffle: bool = True, seed: int = 0, resampled: bool = False):
        super().__init__()
        zarr = optional_import("zarr", extra="streamaug[zarr]", purpose="the zarr source")

        self.path = str(path)
        try:
            group = zarr.open_group(self.path, mode="r")
        except Exception as err:  # noqa: BLE001 - zarr raises several types for a missing store
            raise FileNotFoundError(f"{self.path}: not a zarr store ({err}); write one with write_zarr") from err
        if group.attrs.get("format") != ZARR_FORMAT:
            raise ValueError(f"{self.path}: not a streamaug zarr store (format "
                             f"{group.attrs.get('format')!r}, expected {ZARR_FORMAT!r})")
        samples = group.attrs.get("samples")
        if not isinstance(samples, list) or not all(isinstance(r, dict) and "key" in r for r in samples):
            raise ValueError(f"{self.path}: the store's 'samples' table is missing or damaged (a list of "
                             "{'key', 'meta', 'shape', 'dtype', 'scale', 'mask'} rows); re-write it with write_zarr")
        self.samples: list[dict] = list(samples)
        self.shuffle, self.seed, self.resampled = shuffle, int(seed), resampled
        self.epoch = 0
        self._group = None  # opened lazily in each worker

    @property
    def keys(self) -> list[str]:
        """All keys in write order."""
        return [s["key"] for s in self.samples]

    def __len__(self) -> int:
        """Number of images in the store (the whole job's epoch, not one reader's share)."""
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of ``epoch`` (call before iterating)."""
        self.epoch = int(epoch)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """Indices of the whole job's epoch order, before splitting over readers."""
        n = len(self.samples)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch if epoch is None else epoch]).permutation(n)

    def __iter__(self) -> Iterator[dict]:
        slot = current_slot()
        if self.resampled:
            rng = np.random.default_rng([self.seed, self.epoch, slot.index, 1])
            while len(self.samples):
                yield self.load(int(rng.integers(len(self.samples))))
            return
        for i in self.order()[slot.index :: slot.total]:
            yield self.load(int(i))

    def load(self, index: int) -> dict:
        """Read sample ``index`` (position in :attr:`keys`) as a sample dict.

        Raises:
            SampleError: naming the store and the key: an array missing, or whose shape or dtype
                differs from the table (the store changed after writing), or unusable boxes.
        """
        zarr = optional_import("zarr", extra="streamaug[zarr]", purpose="the zarr source")

        if self._group is None:
            self._group = zarr.open_group(self.path, mode="r")
        row = self.samples[index]
        key = row["key"]
        try:
            arr = self._array(f"images/{key}", row.get("shape"), row.get("dtype"))
            image = torch.from_numpy(arr.astype(np.float32) / np.float32(row["scale"])).unsqueeze(0)
            meta = dict(row["meta"])
            boxes, problem = box_array(meta.get("boxes"), *arr.shape)
            if problem is not None:
                raise ValueError(f"its boxes {str(meta.get('boxes'))[:120]} are unusable: {problem}")
            mask = self._array(f"masks/{key}", row.get("shape"), "uint8") if row.get("mask") else None
        except SampleError:
            raise
        except Exception as err:  # noqa: BLE001 - zarr raises several types for a missing or damaged array
            raise SampleError(f"zarr store {self.path}, key {key!r}: {type(err).__name__}: {err}. The store changed "
                              "after writing or is damaged; re-write it with write_zarr") from err
        meta.update(source=f"{self.path}::{key}", format="zarr", size=tuple(row["shape"]), shard=self.path)
        sample = {
            "key": key,
            "image": image,
            "label": to_int_label(meta.get("label")),
            "boxes": torch.from_numpy(boxes.astype(np.float32)),
            "meta": meta,
        }
        if mask is not None:
            sample["mask"] = torch.from_numpy(mask.astype(np.float32)).unsqueeze(0)
        return sample

    def _array(self, name: str, shape: Any, dtype: Any) -> np.ndarray:
        """The array ``name`` of the store, once its shape and dtype match the table's ``shape``/``dtype``."""
        try:
            array = self._group[name]
        except KeyError as err:
            raise SampleError(f"zarr store {self.path}: array {name!r} is missing (deleted or renamed after "
                              "writing); re-write the store with write_zarr") from err
        if list(array.shape) != list(shape or []) or str(array.dtype) != str(dtype):
            raise SampleError(f"zarr store {self.path}: array {name!r} is {tuple(array.shape)} {array.dtype}, but "
                              f"the store's table says {tuple(shape or [])} {dtype} (replaced after writing); "
                              "re-write the store with write_zarr")
        return np.asarray(array[...])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_group"] = None  # reopen in the worker
        return state


def _check_key(key: Any, seen: set[str]) -> None:
    if not isinstance(key, str) or not key or "/" in key or key.startswith((".", "__")):
        raise ValueError(f"write_zarr: invalid key {key!r} (non-empty str, no '/', no leading '.' or '__')")
    if key in seen:
        raise ValueError(f"write_zarr: duplicate key {key!r}")
    seen.add(key)


def _as_2d(value: Any, what: str) -> np.ndarray:
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"write_zarr: {what} must be (H, W) or (1, H, W), got shape {arr.shape}")
    return arr


def _storable(arr: np.ndarray, meta: Mapping[str, Any], key: str) -> tuple[np.ndarray, float]:
    """The array to store and the divisor that maps it to ``[0, 1]``."""
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8), 1.0
    if arr.dtype == np.uint8:
        return arr, 255.0
    if arr.dtype == np.uint16:
        bits = meta.get("bits")
        if bits is None:
            return arr, 65535.0
        whole = isinstance(bits, numbers.Real) and not isinstance(bits, bool) and float(bits).is_integer()
        if not whole or not 1 <= int(bits) <= 16:  # numbers.Real: numpy numbers too, 12.0 from a pandas row
            raise ValueError(f"write_zarr: meta['bits'] of {key!r} is {bits!r}; give a whole number 1..16 (the "
                             "bits the uint16 values use) or leave it out (scaled by 65535)")
        top = int(arr.max()) if arr.size else 0
        if top > 2 ** int(bits) - 1:
            raise ValueError(f"write_zarr: image {key!r} holds {top}, above {2 ** int(bits) - 1}, the most "
                             f"meta['bits'] = {bits} allows (it would read as {top / (2 ** int(bits) - 1):.2f}, not "
                             "in [0, 1]); give the bits the data use, or leave 'bits' out (scaled by 65535)")
        return arr, float(2 ** int(bits) - 1)
    if arr.dtype.kind == "f":
        if arr.size and (not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1):
            raise ValueError(f"write_zarr: float image {key!r} must lie in [0, 1] "
                             f"(got {arr.min()}..{arr.max()}); normalise it or pass uint8/uint16")
        return arr.astype(np.float32), 1.0
    raise ValueError(f"write_zarr: image {key!r} has dtype {arr.dtype}; use uint8, uint16 or float in [0, 1]")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")
