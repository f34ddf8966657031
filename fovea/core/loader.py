"""The training loader: batches streamed from the clip cache by ``torchdata.nodes``.

indices (a seeded shuffle per epoch, endless) -> batches of indices -> parallel reads from the cache
(threads; shard reads are memory-mapped slices, so no decoding happens here) -> pinned memory (CUDA)
-> prefetch. ``Loader.state_dict()`` is saved with each checkpoint; loading it continues from the
same sample.
"""

from __future__ import annotations

from typing import Any

import torch
from torchdata.nodes import BaseNode, Batcher, Loader, Mapper, ParallelMapper, PinMemory, Prefetcher

from fovea.core.cache import ClipCache
from fovea.core.config import FoveaConfig
from fovea.core.errors import FoveaError


class ShuffledIndices(BaseNode[int]):
    """Clip indices forever: epoch e is a permutation drawn from (seed, e). State: epoch and position."""

    def __init__(self, num_clips: int, seed: int):
        super().__init__()
        self.num_clips, self.seed = num_clips, seed

    def _permutation(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_clips, generator=generator).tolist()

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        state = initial_state or {"epoch": 0, "position": 0}
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation()

    def next(self) -> int:
        if self.position == self.num_clips:
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation()
        self.position += 1
        return self._order[self.position - 1]

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}


def build_loader(cache: ClipCache, config: FoveaConfig, device: torch.device) -> Loader:
    """An endless, stateful loader of ``{"frames", "latents", "index"}`` batches of ``training.batch_size``."""
    data, batch_size = config.data, config.training.batch_size
    if batch_size > len(cache):
        raise FoveaError(f"training.batch_size ({batch_size}) is larger than the {len(cache)} clips in the data set")
    node: BaseNode = Batcher(ShuffledIndices(len(cache), config.run.seed), batch_size=batch_size, drop_last=True)
    if data.num_workers > 0:
        node = ParallelMapper(node, cache.read, num_workers=data.num_workers, method="thread", in_order=True)
    else:
        node = Mapper(node, cache.read)
    if data.pin_memory and device.type == "cuda":
        node = PinMemory(node)
    return Loader(Prefetcher(node, prefetch_factor=data.prefetch))


def shutdown(loader: Loader) -> None:
    """Stop the loader's worker threads now instead of at garbage collection (or a noisy interpreter exit)."""
    node = loader.root
    while node is not None:
        iterator = getattr(node, "_it", None)
        if iterator is not None and hasattr(iterator, "_shutdown"):
            iterator._shutdown()
        node = getattr(node, "source", None)
