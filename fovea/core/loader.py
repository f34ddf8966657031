"""The training loader: batches streamed from the clip cache by ``torchdata.nodes``.

indices (a seeded shuffle per epoch, endless) -> batches of indices -> parallel reads from the cache
(threads; shard reads are memory-mapped slices, so no decoding happens here) -> pinned memory (CUDA)
-> prefetch. A damaged shard (``DamagedCache`` from a read in a worker thread) is raised again, as it
was, by the ``next`` that would have returned its batch, so the trainer stops before using it.
Under torchrun every rank draws the same global batches of ``batch_size x world_size``
clips and reads only its own slice of each, so N processes see exactly the clips one process with
an N times larger batch would. ``Loader.state_dict()`` is saved with each checkpoint; a resumed run builds its loader
at the clip position found in it (``sample_position``), so it continues from the same sample even
when ``num_workers``, ``prefetch`` or the batch size differ.
"""

from __future__ import annotations

from typing import Any

import torch
from torchdata.nodes import BaseNode, Batcher, Loader, Mapper, ParallelMapper, PinMemory, Prefetcher

from fovea.core.cache import ClipCache
from fovea.core.config import FoveaConfig
from fovea.core.errors import FoveaError


class ShuffledIndices(BaseNode[int]):
    """Clip indices forever: epoch e is a permutation of ``indices`` drawn from (seed, e). State: epoch and position."""

    def __init__(self, indices: list[int], seed: int, start: dict[str, int] | None = None):
        super().__init__()
        self.indices, self.seed, self.start = list(indices), seed, start or {"epoch": 0, "position": 0}

    def _permutation(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return [self.indices[i] for i in torch.randperm(len(self.indices), generator=generator).tolist()]

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        state = initial_state or self.start
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation()

    def next(self) -> int:
        if self.position == len(self.indices):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation()
        self.position += 1
        return self._order[self.position - 1]

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}


def build_loader(cache: ClipCache, config: FoveaConfig, device: torch.device,
                 position: dict[str, int] | None = None, rank: int = 0, world_size: int = 1,
                 indices: list[int] | None = None) -> Loader:
    """An endless, stateful loader of ``ClipCache.read`` batches (``{"frames", "latents", "index", "captions"}``)
    of ``training.batch_size``. The captions, a list of str or None, pass ``PinMemory`` unchanged.

    ``indices``: the cache's clips to train on (the training split; default all). ``position``
    (``sample_position`` of a saved state) starts it where a checkpointed loader stopped; it counts
    clips of the global stream, the same on every rank.
    """
    data, batch_size = config.data, config.training.batch_size
    indices = list(range(len(cache))) if indices is None else indices
    if batch_size * world_size > len(indices):
        across = f" x {world_size} processes" if world_size > 1 else ""
        raise FoveaError(f"training.batch_size ({batch_size}){across} is larger than the {len(indices)} training "
                         f"clips in the data set")
    if position is not None and not 0 <= position["position"] <= len(indices):
        raise FoveaError(f"the checkpoint's loader stopped at clip {position['position']} of an epoch, but the "
                         f"data set has {len(indices)} training clips: the data changed since the run started")
    stream = ShuffledIndices(indices, config.run.seed, position)
    node: BaseNode = Batcher(stream, batch_size=batch_size * world_size, drop_last=True)
    if world_size > 1:
        node = Mapper(node, lambda batch: batch[rank * batch_size:(rank + 1) * batch_size])   # this rank's slice
    read = _carry_errors(cache.read)
    if data.num_workers > 0:
        node = ParallelMapper(node, read, num_workers=data.num_workers, method="thread", in_order=True)
    else:
        node = Mapper(node, read)
    if data.pin_memory and device.type == "cuda":
        node = PinMemory(node)
    return Loader(Mapper(Prefetcher(node, prefetch_factor=data.prefetch), _raise_carried))   # in the caller's thread


class _ReadFailed:
    """A read's ``FoveaError``, carried as an item: torchdata would re-raise it wrapped in a worker's traceback."""

    def __init__(self, error: FoveaError):
        self.error = error


def _carry_errors(read):
    def carried(indices: list[int]):
        try:
            return read(indices)
        except FoveaError as exc:
            return _ReadFailed(exc)
    return carried


def _raise_carried(batch):
    if isinstance(batch, _ReadFailed):
        raise batch.error
    return batch


def sample_position(state: dict[str, Any]) -> dict[str, int]:
    """The clip stream's ``{"epoch", "position"}`` inside a saved ``Loader.state_dict()``, whatever nodes wrap it."""
    pending: list[Any] = [state]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            if set(item) == {"epoch", "position"} and all(isinstance(v, int) for v in item.values()):
                return dict(item)
            pending.extend(item.values())
    raise FoveaError("the saved loader state holds no clip position; the checkpoint is corrupt")


def shutdown(loader: Loader) -> None:
    """Stop the loader's worker threads now instead of at garbage collection (or a noisy interpreter exit)."""
    node = loader.root
    while node is not None:
        iterator = getattr(node, "_it", None)
        while iterator is not None:   # ParallelMapper keeps its threads one iterator further down
            if hasattr(iterator, "_shutdown"):
                iterator._shutdown()
            iterator = getattr(iterator, "_it", None)
        node = getattr(node, "source", None)
