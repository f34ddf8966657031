"""The batch loader: training batches streamed from the clip cache by ``torchdata.nodes``.

The clips in the cache come from a clip source (a ``source`` plugin, ``fovea.core.data``); this module batches them.

indices (a seeded shuffle per epoch, endless) -> batches of indices -> parallel reads from the cache
(threads; shard reads are memory-mapped slices; JPEG frames are decoded here, on the GPU with nvJPEG
when training on CUDA) -> pinned memory (CUDA) -> prefetch. A damaged shard (``DamagedCache`` from a read in a worker thread) is raised again, as it
was, by the ``next`` that would have returned its batch, so the trainer stops before using it.
Under torchrun every rank draws the same global batches of ``batch_size x world_size``
clips and reads only its own slice of each, so N processes see exactly the clips one process with
an N times larger batch would. ``Loader.state_dict()`` is saved with each checkpoint; a resumed run builds its loader
at the clip position found in it (``sample_position``), so it continues from the same sample even
when ``num_workers``, ``prefetch`` or the batch size differ.

Two orders (``data.shuffle``): ``clips``, one global permutation of every clip per epoch (the default
for a local cache: the best mix, every shard touched all the time); ``shards`` (``ShardOrder``, the
default for a cache under a URL): shards permuted per epoch and dealt to the ranks, each rank streaming
only its own shards with their clips shuffled within windows of ``data.shuffle_window`` shards, so a
process needs only a window's shards on its local disk. Both are pure functions of (seed, epoch,
position): a resumed run reads the same clips in the same order, whatever arrived over the network when.
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
        # one int64 tensor, not a list of Python ints: 8 bytes a clip, also at 10^6 clips
        self.indices = torch.as_tensor(list(indices) if not isinstance(indices, torch.Tensor) else indices,
                                       dtype=torch.int64)                                   # (N,)
        self.seed, self.start = seed, start or {"epoch": 0, "position": 0}

    def _permutation(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return self.indices[torch.randperm(len(self.indices), generator=generator)]        # (N,)

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
        return int(self._order[self.position - 1])

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}


class ShardOrder(BaseNode[int]):
    """This rank's clip indices forever, shard by shard (``data.shuffle = "shards"``).

    Epoch e: the shards in a permutation drawn from (seed, e), dealt round-robin to the ``world_size`` ranks;
    this rank walks its shards in windows of ``window``, the clips of a window (those in ``allowed``)
    shuffled together. Every rank's epoch is cut to the shortest rank's number of clips, so the ranks
    stay in step and the position is the same on all of them. State: epoch and position in it.
    """

    def __init__(self, starts: torch.Tensor, counts: torch.Tensor, allowed: torch.Tensor, seed: int, window: int,
                 rank: int = 0, world_size: int = 1, start: dict[str, int] | None = None):
        super().__init__()
        self.starts, self.counts, self.allowed = starts, counts, allowed   # (shards,), (shards,), (clips,) bool
        self.seed, self.window, self.rank, self.world_size = seed, window, rank, world_size
        self.start = start or {"epoch": 0, "position": 0}
        shard_of = torch.repeat_interleave(torch.arange(len(counts)), counts)                 # (clips,)
        self.usable = torch.bincount(shard_of[allowed], minlength=len(counts))                # (shards,)

    def _generator(self, *keys: int) -> torch.Generator:
        seed = self.seed
        for key in keys:
            seed = (seed * 1_000_003 + key) % (2**63)
        return torch.Generator().manual_seed(seed)

    def shards(self, epoch: int) -> torch.Tensor:
        """Every rank's shards of ``epoch``, in order: (world_size, ceil(shards / world_size)), -1 padded."""
        order = torch.randperm(len(self.counts), generator=self._generator(epoch))
        padded = torch.full((-(-len(order) // self.world_size) * self.world_size,), -1, dtype=torch.int64)
        padded[:len(order)] = order
        return padded.view(-1, self.world_size).T                                           # (ranks, n)

    def epoch_length(self, epoch: int) -> int:
        """Clips each rank reads in ``epoch``: the fewest any rank's shards hold."""
        shards = self.shards(epoch)
        usable = torch.where(shards >= 0, self.usable[shards.clamp(min=0)], 0)
        return int(usable.sum(1).min())

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        mine = self.shards(epoch)[self.rank]
        mine = mine[mine >= 0]
        pieces = []
        for w in range(0, len(mine), self.window):
            clips = torch.cat([torch.arange(int(self.starts[s]), int(self.starts[s] + self.counts[s]))
                               for s in mine[w:w + self.window].tolist()])
            clips = clips[self.allowed[clips]]
            pieces.append(clips[torch.randperm(len(clips), generator=self._generator(epoch, w + 1))])
        return torch.cat(pieces)[:self.epoch_length(epoch)]                                 # (clips of the epoch,)

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        state = initial_state or self.start
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._epoch_order(self.epoch)

    def next(self) -> int:
        while self.position >= len(self._order):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._epoch_order(self.epoch)
        self.position += 1
        return int(self._order[self.position - 1])

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}


def shuffle_mode(config: FoveaConfig) -> str:
    """``data.shuffle`` resolved: ``auto`` is ``shards`` for a cache under a URL, else ``clips``."""
    from fovea.core.files import is_url

    if config.data.shuffle != "auto":
        return config.data.shuffle
    return "shards" if is_url(config.data.cache_dir) else "clips"


def decode_device(config: FoveaConfig, cache: ClipCache, device: torch.device) -> torch.device:
    """Where the loader decodes JPEG frames (``data.decode_device``): the training GPU or the CPU."""
    import sys

    from fovea.core.codec import gpu_decoding_available

    wanted = config.data.decode_device
    if cache.format["codec"] != "jpeg" or wanted == "cpu" or (wanted == "auto" and device.type != "cuda"):
        return torch.device("cpu")
    problem = gpu_decoding_available()
    if problem is None:
        return device if device.type == "cuda" else torch.device("cuda")
    if wanted == "cuda":
        raise FoveaError(f"data.decode_device = 'cuda' but JPEG frames cannot be decoded on the GPU here: {problem}; "
                         f"set data.decode_device = 'auto' or 'cpu'")
    print(f"warning: JPEG frames are decoded on the CPU: {problem}", file=sys.stderr)
    return torch.device("cpu")


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
    if shuffle_mode(config) == "shards":
        allowed = torch.zeros(len(cache), dtype=torch.bool)
        allowed[torch.as_tensor(indices, dtype=torch.int64)] = True
        if world_size > len(cache.shard_counts):
            raise FoveaError(f"the clip cache has {len(cache.shard_counts)} shards, fewer than the {world_size} "
                             f"processes, and data.shuffle = 'shards' gives each process its own: precompute "
                             f"with a smaller data.shard_size, or set data.shuffle = 'clips'")
        stream: BaseNode = ShardOrder(cache.shard_starts, cache.shard_counts, allowed, config.run.seed,
                                      data.shuffle_window, rank, world_size, position)
        if stream.epoch_length(position["epoch"] if position else 0) < batch_size:
            raise FoveaError(f"training.batch_size ({batch_size}) is larger than the training clips one process "
                             f"reads per epoch with data.shuffle = 'shards'; use fewer processes or set "
                             f"data.shuffle = 'clips'")
        node: BaseNode = Batcher(stream, batch_size=batch_size, drop_last=True)   # each rank its own stream
    else:
        stream = ShuffledIndices(indices, config.run.seed, position)
        node = Batcher(stream, batch_size=batch_size * world_size, drop_last=True)
        if world_size > 1:
            node = Mapper(node, lambda batch: batch[rank * batch_size:(rank + 1) * batch_size])   # this rank's slice
    where = decode_device(config, cache, device)
    read = _carry_errors(cache.read if where.type == "cpu" else lambda batch: cache.read(batch, where))
    if data.num_workers > 0:
        node = ParallelMapper(node, read, num_workers=data.num_workers, method="thread", in_order=True)
    else:
        node = Mapper(node, read)
    if data.pin_memory and device.type == "cuda" and where.type == "cpu":   # frames decoded on the GPU: there already
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
