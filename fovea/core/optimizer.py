"""The optimizer and its learning-rate schedule: AdamW, linear warm-up, then constant or cosine decay.

nanoGPT's recipe: matrices decay, biases and norm gains do not; the schedule is a multiplier of the
peak ``training.lr`` per optimizer step (``lr_factor``), so a resumed scheduler continues exactly.
"""

from __future__ import annotations

import math

import torch

from fovea.core.config import FoveaConfig


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
    from torch.distributed.tensor import DTensor

    first = next(model.parameters())
    fused = first.is_cuda and not isinstance(first, DTensor)   # FSDP2's shards take the foreach kernels
    return torch.optim.AdamW(groups, lr=config.training.lr, betas=(0.9, 0.999), fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, config: FoveaConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The ``lr_factor`` schedule over ``optimizer``; stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
