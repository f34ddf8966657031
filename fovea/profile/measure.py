"""What ``fovea profile`` measures on the real training step: time per phase over N steps, the FLOPs and saved
activations of one micro-batch, and the largest micro-batch that fits on the GPU.

The model's parts are timed from outside through the encoder contract (``encode``/``attend``) and module hooks
(LLM, head), so any plugin is profiled the same way; the device is synchronised at every phase boundary
(``PhaseTimer(sync=True)``) so GPU time lands in the phase that queued it.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch

from fovea.core.config import FoveaConfig
from fovea.core.profile_report import PHASES
from fovea.core.timing import PhaseTimer
from fovea.profile.resources import GB, ResourceSampler, memory_model

ACTIVATION_PARTS = ("encoder", "llm", "head", "other")
FORWARD_PARTS = ("encode", "attend_pass1", "attend_pass2", "llm", "head")   # timed inside "forward"


@contextlib.contextmanager
def instrument(model: torch.nn.Module, timer: PhaseTimer) -> Iterator[None]:
    """Time the model's parts inside ``timer("forward")``: encode, the two attends, LLM, head."""
    from fovea.core.instrument import wrap_encoder

    calls = {"attend": 0}

    def timed_encode(encode, frames):
        calls["attend"] = 0                      # a new forward: the next attend is pass 1
        with timer("encode"):
            return encode(frames)

    def timed_attend(attend, queries, cache, *args, **kwargs):
        calls["attend"] += 1
        with timer(f"attend_pass{min(calls['attend'], 2)}"):
            return attend(queries, cache, *args, **kwargs)

    handles = []
    for name, module in (("llm", model.llm), ("head", model.head)):
        handles.append(module.register_forward_pre_hook(lambda mod, args, _n=name: timer.start(_n)))
        handles.append(module.register_forward_hook(lambda mod, args, out, _n=name: timer.stop(_n)))
    try:
        with wrap_encoder(model.encoder, encode=timed_encode, attend=timed_attend):
            yield
    finally:
        for handle in handles:
            handle.remove()


def time_steps(state, batches: Iterator[dict], steps: int, warmup: int
               ) -> tuple[list[dict[str, float]], dict, dict[str, float] | None]:
    """``warmup`` steps of ``fovea.core.step.train_step``, then ``steps`` timed ones: per step its seconds
    (``step_s``) and each phase's (``PHASES``), the resource sampler's summary over the timed steps, and the
    GPU's peak memory during them (None on a CPU), read before anything else runs a larger batch."""
    from fovea.core.step import train_step

    device = state.device
    timer = PhaseTimer(device, sync=True)
    per_step: list[dict[str, float]] = []
    with instrument(state.module, timer):
        for _ in range(warmup):
            train_step(state, batches, timer)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        timer.pop()
        sampler = ResourceSampler(device).start()
        for _ in range(steps):
            start = time.perf_counter()
            train_step(state, batches, timer)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step_s = time.perf_counter() - start
            phases = timer.pop()
            phases["data_wait"] = phases.pop("data", 0.0)
            phases["forward_other"] = phases.pop("forward", 0.0) - sum(phases.get(p, 0.0) for p in FORWARD_PARTS)
            per_step.append({"step_s": step_s, **{p: phases.get(p, 0.0) for p in PHASES}})
        sampler.stop()
    return per_step, sampler.summary(), peak_memory(device)


def peak_memory(device: torch.device) -> dict[str, float] | None:
    """Peak allocated and reserved GPU memory since the last reset, and the device's total, in GB."""
    if device.type != "cuda":
        return None
    return {"peak_allocated_gb": torch.cuda.max_memory_allocated(device) / GB,
            "peak_reserved_gb": torch.cuda.max_memory_reserved(device) / GB,
            "device_total_gb": torch.cuda.get_device_properties(device).total_memory / GB}


class PartTracker(PhaseTimer):
    """Which part of the model is running now, told by ``instrument`` as a ``PhaseTimer`` is (a stack of
    phases): ``part`` is ``encoder`` (encode, both attends), ``llm``, ``head``, or ``other``. Times nothing."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []

    def start(self, phase: str) -> None:
        self.stack.append("encoder" if phase == "encode" or phase.startswith("attend") else phase)

    def stop(self, phase: str) -> None:
        self.stack.pop()

    @property
    def part(self) -> str:
        return self.stack[-1] if self.stack else "other"


def measure_micro_batch(state, batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
    """FLOPs of one micro-batch's forward and backward (what runs: frozen parts get no weight gradients),
    and the bytes of the tensors autograd saved for backward — the activations, measured on any device — by
    the part that saved them (``ACTIVATION_PARTS``). Under activation checkpointing a block saves only its
    inputs (what ``torch.utils.checkpoint`` keeps to run it again), so this shows what checkpointing saves.
    Compiled parts run eagerly here (a compiled graph hides what it saves from these hooks)."""
    from torch.utils.flop_counter import FlopCounterMode

    from fovea.core.compile import eager

    saved: dict[int, tuple[int, str]] = {}
    parts = PartTracker()

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        saved.setdefault(storage.data_ptr(), (storage.nbytes(), parts.part))   # a storage saved twice is held once
        return tensor

    weights = {_storage(p) for p in state.module.parameters()}   # FSDP2: the local shards

    def note_weights(module: torch.nn.Module, args) -> None:   # FSDP2's gathered copies, in use now
        weights.update(_storage(p) for p in module.parameters(recurse=False))

    frames, latents = batch["frames"].to(state.device), batch["latents"].to(state.device)
    targets = {k: v.to(state.device) for k, v in state.module.prepare(batch).items()}
    hooks = [module.register_forward_pre_hook(note_weights) for module in state.module.modules()]
    try:
        with eager(), instrument(state.module, parts), FlopCounterMode(display=False) as counter:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
                    torch.autocast(state.device.type, dtype=state.dtype, enabled=state.dtype != torch.float32):
                out = state.model(frames, latents, targets)
            out.loss.backward()
    finally:
        for hook in hooks:
            hook.remove()
    state.model.zero_grad(set_to_none=True)
    by_part = dict.fromkeys(ACTIVATION_PARTS, 0.0)
    for ptr, (size, part) in saved.items():
        if ptr not in weights:                        # weights are not activations
            by_part[part] += size
    return float(counter.get_total_flops()), by_part


def _storage(tensor: torch.Tensor) -> int:
    from torch.distributed.tensor import DTensor

    return (tensor.to_local() if isinstance(tensor, DTensor) else tensor).untyped_storage().data_ptr()


def probe_largest_batch(state, cache, config: FoveaConfig) -> int | None:
    """The largest micro-batch that runs forward and backward without running out of GPU memory:
    the memory model's guess first, then halving towards the configured batch on an OOM. Compiled parts run
    eagerly here (each new size would compile again)."""
    from fovea.core.compile import eager

    device = state.device
    free = torch.cuda.mem_get_info(device)[0] / GB
    per_clip = memory_model(config, state.module)["activations_per_clip_gb"]
    if not per_clip:
        return None
    size = min(len(cache), config.training.batch_size + int(0.9 * free / per_clip))
    with eager():
        while size > config.training.batch_size:
            try:
                batch = cache.read(list(range(size)))
                with torch.autocast(device.type, dtype=state.dtype, enabled=state.dtype != torch.float32):
                    out = state.model(batch["frames"].to(device), batch["latents"].to(device))
                out.loss.backward()
                return size
            except torch.cuda.OutOfMemoryError:
                size //= 2
            finally:
                state.model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
    return config.training.batch_size
