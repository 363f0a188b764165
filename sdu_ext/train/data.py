"""Training data and its batches: what one rank reads in each step."""
import hashlib
from typing import List, Tuple

import torch

from ..checks import check_training_data

__all__ = ["TrainingData", "to_device", "seed_for", "train_batches", "eval_batches", "world_and_rank",
           "check_targets"]


def world_and_rank() -> Tuple[int, int]:
    """``(world size, rank)`` of the initialised process group, else ``(1, 0)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def to_device(obj, device):
    """``obj`` (a tensor, or lists/tuples/dicts of them) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def seed_for(seed: int, epoch: int) -> int:
    """A 63-bit seed derived from ``(seed, epoch)`` (the shuffle of each epoch, noise seeds)."""
    digest = hashlib.sha256(f"{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class TrainingData:
    """Indexable training/validation data: a tuple of tensors (fast path: one gather
    per tensor), a TensorDataset, or any map-style Dataset (collated per batch)."""

    def __init__(self, data, name):
        if not isinstance(data, torch.Tensor):  # one tensor stands for (tensor,)
            check_training_data(data, name)
        if isinstance(data, torch.utils.data.TensorDataset):
            data = data.tensors
        if isinstance(data, torch.Tensor):
            data = (data,)
        if isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
            sizes = {t.shape[0] if t.dim() else -1 for t in data}
            if len(sizes) != 1 or -1 in sizes:
                raise ValueError(f"{name}: expected tensors with one common first (sample) dimension, "
                                 f"got shapes {[tuple(t.shape) for t in data]}")
            self.tensors, self.dataset, self.size = tuple(data), None, data[0].shape[0]
        elif hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, (str, bytes)):
            self.tensors, self.dataset, self.size = None, data, len(data)
        else:
            raise ValueError(f"{name}: expected a tuple of tensors or a map-style Dataset, got {type(data).__name__}")
        if self.size < 1:
            raise ValueError(f"{name}: expected at least one sample, got an empty data set")

    def __len__(self):
        return self.size

    def keep_on(self, device) -> "TrainingData":
        """Keep the tensors on ``device`` from now on (one copy; the caller's tensors are left
        as they are). Map-style datasets stay where they are."""
        if self.tensors is not None:
            self.tensors = tuple(t.to(device) for t in self.tensors)
        return self

    def place(self, batches: List[torch.Tensor]) -> List[torch.Tensor]:
        """The index tensors ``batches`` moved to the device of the tensors in one copy (pinned
        and asynchronous from the host to an accelerator), so that :meth:`get` gathers there."""
        if self.tensors is None or not batches or batches[0].device == self.tensors[0].device:
            return batches
        flat = torch.cat(batches)
        if flat.device.type == "cpu" and self.tensors[0].device.type != "cpu" and torch.cuda.is_available():
            flat = flat.pin_memory()
        return list(torch.split(flat.to(self.tensors[0].device, non_blocking=True), [len(b) for b in batches]))

    def get(self, idx, device):
        """The samples ``idx`` (1-D int64, on the host or where the tensors live) as a batch on ``device``."""
        if self.tensors is not None:
            return tuple(t[idx].to(device, non_blocking=True) for t in self.tensors)
        batch = torch.utils.data.default_collate([self.dataset[i] for i in idx.tolist()])
        return to_device(batch, device)


def train_batches(n: int, batch_size: int, seed: int, epoch: int, world: int = 1, rank: int = 0,
                  drop_last: bool = False, shuffle: bool = True) -> List[torch.Tensor]:
    """This rank's index shards of the global batches of ``epoch`` (same order on every
    rank): a seeded permutation of ``range(n)`` (or the stored order without ``shuffle``)
    cut into batches of ``batch_size``, each split into ``world`` contiguous shards. The
    last, incomplete batch is dropped with ``drop_last`` or when it has fewer samples than ranks."""
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed_for(seed, epoch)))
    else:
        order = torch.arange(n)
    out = []
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        if idx.numel() < batch_size and (drop_last or idx.numel() < world):
            continue
        out.append(torch.tensor_split(idx, world)[rank])
    return out


def eval_batches(n: int, batch_size: int, world: int = 1, rank: int = 0) -> List[torch.Tensor]:
    """This rank's contiguous shard of ``range(n)`` in batches of ``batch_size``."""
    shard = torch.tensor_split(torch.arange(n), world)[rank]
    return list(torch.split(shard, batch_size)) if shard.numel() else []


def check_targets(batch, output, same_dtype=True):
    """ValueError unless ``batch[1]`` (the targets y*) has the shape of ``output`` (a layer's
    output (B, ...)), as the squared error needs, and its dtype with ``same_dtype`` (as the
    distance residual's fused op needs)."""
    y = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
    if not isinstance(y, torch.Tensor) or y.shape != output.shape:
        got = f"shape {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"y*: expected the targets batch[1] of shape {tuple(output.shape)} (a layer's "
                         f"output), got {got}")
    if same_dtype and y.dtype != output.dtype:
        raise ValueError(f"y*: expected the targets batch[1] in {output.dtype} (the dtype of the "
                         f"iterates), got {y.dtype}")
