"""Many processes, one run: the torchrun job, its process groups, DDP/FSDP2, and agreeing across ranks.

``torchrun --nproc_per_node=N -m fovea run CONFIG`` starts N copies of ``fovea run``; torchrun sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in each. ``process_group`` joins them (NCCL on CUDA, gloo
on CPU) plus a gloo *control* group for host-side decisions (errors, stop signals, run paths) that
must not touch the GPU stream. Rank 0 does everything that writes shared files; the others wait for
its outcome through ``main_first``/``from_main``, so a bad input stops every rank with rank 0's
message instead of leaving them blocked in a collective.

Without torchrun every function here is a no-op for a world of one process.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import nn

from fovea.core.errors import FoveaError

T = TypeVar("T")
# Host-side waits can be long: rank 0 may be decoding the whole data set into the clip cache.
CONTROL_TIMEOUT = timedelta(hours=24)
_control: Any = None   # the gloo group of host-side agreement, set by ``process_group``


class PeerFailed(FoveaError):
    """Another rank (rank 0) failed; its own message says why."""

    def __init__(self) -> None:
        super().__init__("stopped because rank 0 failed; its error is above")


@dataclass(frozen=True)
class World:
    """This process's place in the job: its rank and the number of processes."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def is_main_process() -> bool:
    """True except in the ranks > 0 of a torchrun job (also after its process group is gone)."""
    return os.environ.get("RANK", "0") == "0"


def initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def current() -> World:
    """The world of this process: the joined process group, or a single process."""
    import torch.distributed as dist

    if not initialized():
        return World()
    return World(dist.get_rank(), dist.get_world_size())


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each process takes the GPU of its local rank."""
    if device.type == "cuda" and launched_by_torchrun():
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


@contextlib.contextmanager
def process_group(backend: str, device: torch.device) -> Iterator[World]:
    """Join the torchrun job for the block (nothing to do without torchrun, or when already joined)."""
    import torch.distributed as dist

    global _control
    if not launched_by_torchrun() or initialized():
        yield current()
        return
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise FoveaError("distributed.backend = 'nccl' needs CUDA devices; use 'gloo' (or 'auto') on CPU")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
    except (RuntimeError, ValueError) as exc:
        raise FoveaError(f"could not join the torchrun job ({exc}); check torchrun's --rdzv/--master_addr "
                         f"settings and that every node can reach the others") from None
    try:
        _control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
        yield current()
    finally:
        _control = None
        dist.destroy_process_group()


# --------------------------------------------------------------------------- agreeing across ranks


def _broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0, group=_control)
    return box[0]


def _main_then_tell(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 and tell every rank whether it succeeded: rank 0 re-raises its own error,
    the others raise ``PeerFailed``. Returns ``fn``'s result on rank 0, None on the others."""
    if current().is_main:
        try:
            result = fn()
        except BaseException:
            _broadcast(False)
            raise
        _broadcast(True)
        return result
    if not _broadcast(None):
        raise PeerFailed()
    return None


def main_first(fn: Callable[[], T]) -> T:
    """``fn`` on rank 0, then on the others once it succeeded (rank 0 fills a cache, downloads, checks)."""
    if not initialized():
        return fn()
    result = _main_then_tell(fn)
    return result if current().is_main else fn()


def from_main(fn: Callable[[], T]) -> T:
    """``fn`` run on rank 0 only; every rank gets its (picklable) result, or ``PeerFailed``."""
    if not initialized():
        return fn()
    return _broadcast(_main_then_tell(fn))


def on_main(fn: Callable[[], None]) -> None:
    """``fn`` (a write to the run directory) on rank 0 only; the other ranks wait for it to succeed."""
    if initialized():
        _main_then_tell(fn)
    else:
        fn()


def agree_max(value: float) -> float:
    """The largest ``value`` over all ranks (host-side, no device sync)."""
    import torch.distributed as dist

    if not initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=_control)
    return tensor.item()


def gather(value: T) -> list[T]:
    """Every rank's ``value``, in rank order, on every rank (host-side)."""
    import torch.distributed as dist

    if not initialized():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value, group=_control)
    return values


def mean_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` averaged over ranks, in place, on its device (NaN anywhere stays NaN everywhere)."""
    import torch.distributed as dist

    if initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


# --------------------------------------------------------------------------- the model over many processes


def parallelize(model: nn.Module, strategy: str, device: torch.device) -> nn.Module:
    """What the training step calls: ``model`` itself in one process, else its DDP wrapper or, with
    ``fsdp``, the model sharded in place by FSDP2 (each LLM block a unit, the rest one root unit).

    The encoder stays in the root unit: encoders such as ``deep`` call their blocks' sub-modules
    directly (the key/value cache), and FSDP2 gathers a unit's weights only when its ``forward`` runs.
    """
    if not initialized():
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    import warnings

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # The model returns views (predictions reshaped to (B, T, ...)) and never modifies them in place.
    warnings.filterwarnings("ignore", message=".*returned a view tensor.*")
    mesh = init_device_mesh(device.type, (current().world_size,))
    for block in getattr(getattr(model, "llm", None), "layers", []):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def unwrap(model: nn.Module) -> nn.Module:
    """The model under a DDP wrapper (FSDP2 shards in place: nothing to unwrap)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Reduce gradients across ranks in this block's backward only if ``enabled`` (the last micro-batch)."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
    elif is_sharded(model):
        model.set_requires_gradient_sync(enabled)
        yield
    else:
        yield


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) value gathered whole on every rank; a plain tensor as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
