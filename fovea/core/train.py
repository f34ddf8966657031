"""The training loop: AdamW with warm-up and cosine decay, gradient accumulation and clipping, autocast.

One optimizer step (``train_step``, shared with ``fovea profile``) = ``grad_accum`` micro-batches of
``batch_size`` clips. Losses are logged as means over each logging interval; the device is
synchronised only when a line is logged.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from fovea.core.config import FoveaConfig
from fovea.core.errors import FoveaError
from fovea.core.rundir import RunDir
from fovea.core.timing import PhaseTimer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FoveaError("run.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, config: FoveaConfig) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based): linear warm-up, then the schedule."""
    t = config.training
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return 1.0
    progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
    return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def build_optimizer(model: torch.nn.Module, config: FoveaConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters; matrices decay, biases and norm gains do not (nanoGPT's rule)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.training.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW(groups, lr=config.training.lr, betas=(0.9, 0.999), fused=fused or None)


def save_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """Model weights as safetensors, written to a temp file and renamed (never half-written)."""
    from safetensors.torch import save_model

    tmp = path.with_name(f".{path.name}.tmp")
    save_model(model, str(tmp))
    os.replace(tmp, path)


def train(config: FoveaConfig) -> RunDir:
    """Train the model ``config`` describes; returns the run directory it wrote.

    Everything that can fail on bad input (model loading, the data, the batch size) happens before the
    run directory is created, so a run that cannot start writes nothing and leaves ``latest`` alone.
    """
    from fovea.core.cache import build_cache
    from fovea.core.loader import build_loader, shutdown
    from fovea.core.model import build_model

    device = resolve_device(config.run.device)
    model = build_model(config).to(device).train()
    cache = build_cache(config, device, progress=config.run.progress)   # decoded once; later runs reuse it
    loader = build_loader(cache, config, device)
    seed_everything(config.run.seed)
    try:
        run = RunDir.create(config)
        run.write_json("data_report.json", cache.report())
        run.mark_latest()
        started = time.perf_counter()
        first, last = optimize(config, model, loader, run, device)
    finally:
        shutdown(loader)
    run.write_json("summary.json", summarize(config, model, len(cache), first, last, time.perf_counter() - started))
    return run


@dataclass
class TrainState:
    """Everything one optimizer step touches; made once by ``prepare_training``."""

    config: FoveaConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    trainable: list[torch.nn.Parameter]
    device: torch.device
    dtype: torch.dtype


def prepare_training(config: FoveaConfig, model: torch.nn.Module, device: torch.device) -> TrainState:
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    return TrainState(config, model, optimizer, scheduler, [p for p in model.parameters() if p.requires_grad],
                      device, DTYPES[config.precision.dtype])


def train_step(state: TrainState, batches: Iterator[dict], timer: PhaseTimer) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over ``grad_accum`` micro-batches, its phases timed by ``timer``.

    Returns (loss, loss_fine, loss_coarse) averaged over the micro-batches, (3,), and the gradient norm
    before clipping: both on the device, not synchronised.
    """
    t = state.config.training
    losses = torch.zeros(3, device=state.device)
    for _ in range(t.grad_accum):
        with timer("data"):
            batch = next(batches)
            frames = batch["frames"].to(state.device, non_blocking=True)    # (B, T, 3, S, S) uint8
            latents = batch["latents"].to(state.device, non_blocking=True)  # (B, T, C, h, w)
        with timer("forward"), torch.autocast(state.device.type, dtype=state.dtype,
                                              enabled=state.dtype != torch.float32):
            out = state.model(frames, latents)
        with timer("backward"):
            (out.loss / t.grad_accum).backward()
        losses += torch.stack([out.loss, out.loss_fine, out.loss_coarse]).detach() / t.grad_accum
    with timer("optimizer"):
        grad_norm = torch.nn.utils.clip_grad_norm_(state.trainable, t.grad_clip if t.grad_clip > 0 else math.inf)
        state.optimizer.step()
        state.scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)
    return losses, grad_norm.detach()


def optimize(config: FoveaConfig, model: torch.nn.Module, loader, run: RunDir, device: torch.device):
    """The optimisation loop; writes metrics and checkpoints into ``run``; returns the first and last log lines."""
    from tqdm.auto import tqdm

    t = config.training
    state = prepare_training(config, model, device)
    batches, timer = iter(loader), PhaseTimer()
    sums = torch.zeros(4, device=device)   # loss, loss_fine, loss_coarse, grad_norm over the log interval
    interval_steps, interval_start, started = 0, time.perf_counter(), time.perf_counter()
    first = last = None
    bar = tqdm(total=t.max_steps, desc=f"fovea {config.run.name}", disable=not config.run.progress, unit="step")
    for step in range(1, t.max_steps + 1):
        losses, grad_norm = train_step(state, batches, timer)
        sums += torch.cat([losses, grad_norm[None]])
        interval_steps += 1
        bar.update()

        if step % config.run.log_every == 0 or step == t.max_steps:
            loss, loss_fine, loss_coarse, gnorm = (sums / interval_steps).tolist()   # the only sync
            elapsed = time.perf_counter() - interval_start
            last = {"step": step, "loss": loss, "loss_fine": loss_fine, "loss_coarse": loss_coarse,
                    "ratio": loss_coarse / loss_fine if loss_fine > 0 else None, "grad_norm": gnorm,
                    "lr": state.scheduler.get_last_lr()[0],
                    "samples_per_s": interval_steps * config.effective_batch_size / elapsed,
                    "data_wait_share": timer.pop().get("data", 0.0) / elapsed,
                    "elapsed_s": time.perf_counter() - started}
            first = first or last
            run.append_metrics(last)
            bar.set_postfix(fine=f"{loss_fine:.4f}", coarse=f"{loss_coarse:.4f}")
            sums.zero_()
            interval_steps, interval_start = 0, time.perf_counter()
        if step % t.save_every == 0 or step == t.max_steps:
            save_checkpoint(model, run.checkpoint_file)
            run.write_json("loader_state.json", {"step": step, "state": loader.state_dict()})
    bar.close()
    return first, last


def summarize(config: FoveaConfig, model: torch.nn.Module, num_clips: int, first: dict, last: dict,
              wall: float) -> dict:
    """What ``summary.json`` holds: outcome, losses first and last, the spec's improvement, sizes."""
    def count(module: torch.nn.Module, trainable: bool | None = None) -> int:
        return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)

    improvement = (last["loss_coarse"] - last["loss_fine"]) / last["loss_coarse"] if last["loss_coarse"] else None
    return {
        "status": "completed",
        "steps": config.training.max_steps,
        "wall_time_s": wall,
        "first": first,
        "last": last,
        "improvement": improvement,   # SPEC: (loss_coarse - loss_fine) / loss_coarse
        "num_clips": num_clips,
        "epochs": config.training.max_steps * config.effective_batch_size / num_clips,
        "parameters": {"total": count(model), "trainable": count(model, True),
                       **{name: count(child) for name, child in model.named_children()}},
    }
