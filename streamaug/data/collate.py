"""``collate_xray``: batch sample dicts whose boxes and sites differ in number."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

_STACKED = ("image", "mask")
_RAGGED = ("boxes", "sites")


class Ragged(Sequence):
    """A list of ``(k_i, C)`` tensors kept as one ``(sum k_i, C)`` tensor plus offsets.

    Indexing gives views (``ragged[i]`` is ``(k_i, C)``). A batch crosses from a DataLoader worker to
    the main process as one shared-memory tensor instead of one per sample, which mattered for speed.

    Examples:
        >>> r = Ragged.from_list([torch.zeros(2, 4), torch.ones(0, 4), torch.ones(1, 4)])
        >>> len(r), r[0].shape, r[1].shape, r[2].tolist()
        (3, torch.Size([2, 4]), torch.Size([0, 4]), [[1.0, 1.0, 1.0, 1.0]])
    """

    def __init__(self, data: torch.Tensor, offsets: Sequence[int]) -> None:
        self.data, self.offsets = data, list(offsets)

    @classmethod
    def from_list(cls, tensors: Sequence[torch.Tensor]) -> Ragged:
        tensors = [torch.as_tensor(t) for t in tensors]
        offsets = [0]
        for t in tensors:
            offsets.append(offsets[-1] + len(t))
        width = tensors[0].shape[-1] if tensors else 4
        data = torch.cat([t.reshape(-1, width) for t in tensors]) if tensors else torch.zeros(0, width)
        return cls(data, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int | slice) -> Any:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.data[self.offsets[i]:self.offsets[i + 1]]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"Ragged({len(self)} items, {len(self.data)} rows)"


def _stack(values: list[torch.Tensor], shared: bool) -> torch.Tensor:
    """``torch.stack``; with ``shared`` and inside a DataLoader worker, straight into shared memory
    (as torch's ``default_collate`` does), so sending the batch to the main process copies nothing more."""
    if not shared or torch.utils.data.get_worker_info() is None:
        return torch.stack(values)
    elem = values[0]
    storage = elem._typed_storage()._new_shared(len(values) * elem.numel(), device=elem.device)
    return torch.stack(values, out=elem.new(storage).resize_(len(values), *elem.shape))


def collate_xray(samples: Sequence[dict[str, Any]], shared: bool = False) -> dict[str, Any]:
    """Batch samples from :class:`streamaug.XRayShards` or :class:`streamaug.LesionStream`.

    ``image`` (and ``mask`` when every sample has one) are stacked to ``(B, 1, H, W)``;
    ``label`` becomes a ``(B,)`` long tensor and ``synthetic`` a ``(B,)`` bool tensor;
    ``boxes`` and ``sites`` become :class:`Ragged` sequences of ``(k_i, 4)`` tensors; everything
    else (``key``, ``meta``, ``provenance``) stays a list.

    Args:
        samples: sample dicts.
        shared: inside a DataLoader worker, stack ``image`` and ``mask`` directly into shared
            memory, as torch's ``default_collate`` does, instead of letting the worker's queue
            thread copy the batch there while the worker decodes the next one. Off by default:
            on the 2-core sandbox (``benchmarks/collate.py``, RESULTS.md) it gave ``XRayShards``
            +3 % with 2 workers but -6 % with 1, and a plain WebDataset decode -8 to -22 %.

    Raises:
        ValueError: when images differ in size (pass ``resize=`` to the stream).
    """
    if not samples:
        raise ValueError("collate_xray got an empty batch")
    sizes = {tuple(s["image"].shape) for s in samples}
    if len(sizes) > 1:
        raise ValueError(f"images in one batch differ in size {sorted(sizes)}; pass resize=(H, W) to the stream")
    batch: dict[str, Any] = {}
    for name in samples[0]:
        values = [s.get(name) for s in samples]
        if name in _STACKED:
            if all(v is not None for v in values):
                batch[name] = _stack(values, shared)
        elif name in _RAGGED and all(v is not None for v in values):
            batch[name] = Ragged.from_list(values)
        elif name == "label":
            batch[name] = torch.tensor(values, dtype=torch.long)
        elif name == "synthetic":
            batch[name] = torch.tensor([bool(v) for v in values])
        else:
            batch[name] = values
    if "synthetic" not in batch and any("synthetic" in s for s in samples):
        batch["synthetic"] = torch.tensor([bool(s.get("synthetic", False)) for s in samples])
    return batch


def unbatch(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Split a :func:`streamaug.collate_xray` batch back into sample dicts."""
    n = len(batch["image"])
    out = []
    for i in range(n):
        sample = {}
        for name, value in batch.items():
            item = value[i]
            sample[name] = int(item) if name == "label" else (bool(item) if name == "synthetic" else item)
        out.append(sample)
    return out


class HandOff(dict):
    """A sample dict that packs its tensors into one storage (:func:`one_storage`) only when it is
    pickled, that is when a DataLoader worker hands it over by itself (``batch_size=None``).

    Batched, a worker collates its samples and never pickles them, so the copy would be wasted:
    packing every sample cost about 5 % of the 2-worker batched loader (``benchmarks/loader.py``);
    handed over one by one it saves far more (figures in ``benchmarks/RESULTS.md``). Unpickled, it
    is a plain ``dict``.

    A shallow copy stays a ``HandOff`` (torch's ``default_convert``, which a per-sample loader runs
    in the worker, copies each sample before it is sent).

    Examples:
        >>> make, (packed,) = HandOff(image=torch.ones(1, 2, 2), boxes=torch.zeros(1, 4)).__reduce__()
        >>> make is dict, packed["image"].untyped_storage().data_ptr() == packed["boxes"].untyped_storage().data_ptr()
        (True, True)
    """

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any]]]:
        return dict, (one_storage(self),)

    def __copy__(self) -> HandOff:
        return HandOff(self)


def one_storage(sample: dict[str, Any]) -> dict[str, Any]:
    """A shallow copy of ``sample`` whose top-level tensors are views into one shared storage.

    A DataLoader worker hands each tensor of a sample to the main process through its own
    shared-memory segment and file descriptor, which costs far more than copying a few small
    arrays: a sample with ``image``, ``mask``, ``boxes`` and ``sites`` pays that four times where a
    plain decode (image, mask, JSON) pays it twice. With one storage, pickling shares it once per
    sample (``benchmarks/loader.py --per-sample`` compares; figures in ``benchmarks/RESULTS.md``).
    Values, dtypes and shapes are unchanged; each view starts at an 8-byte aligned offset.

    Examples:
        >>> s = one_storage({"image": torch.ones(1, 2, 2), "boxes": torch.zeros(1, 4, dtype=torch.int64), "key": "a"})
        >>> s["image"].untyped_storage().data_ptr() == s["boxes"].untyped_storage().data_ptr()
        True
        >>> s["boxes"].dtype, s["image"].sum().item(), s["key"]
        (torch.int64, 4.0, 'a')
    """
    tensors = [(k, v) for k, v in sample.items() if isinstance(v, torch.Tensor) and v.device.type == "cpu"]
    if len(tensors) < 2:
        return dict(sample)
    offsets, total = [], 0
    for _, v in tensors:
        total = -(-total // 8) * 8
        offsets.append(total)
        total += v.numel() * v.element_size()
    storage = torch.UntypedStorage(max(total, 8))
    out = dict(sample)
    for (name, v), offset in zip(tensors, offsets):
        view = torch.empty((), dtype=v.dtype).set_(storage, offset // v.element_size(), v.shape)
        out[name] = view.copy_(v)
    return out
