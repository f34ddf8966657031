"""One optimizer step: ``grad_accum`` micro-batches forward and backward under autocast, the NaN/inf
check, gradient clipping, the optimizer and the schedule.

Shared by the training loop (``fovea.core.train``) and ``fovea profile``, so what is profiled is what
trains.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterator

import torch

from fovea.core.attention import attention_stats
from fovea.core.nonfinite import NonFiniteStep

if TYPE_CHECKING:
    from fovea.core.state import TrainState
    from fovea.core.timing import PhaseTimer


def step_losses(out, model: torch.nn.Module) -> torch.Tensor:
    """A forward's losses in ``loss_names`` order, (3 + 2 x objectives,) float32, detached."""
    terms = [out.terms[name][mode].mean for name in model.objectives for mode in ("coarse", "fine")]
    return torch.stack([out.loss, out.loss_fine, out.loss_coarse, *terms]).detach().float()


def train_step(state: TrainState, batches: Iterator[dict], timer: PhaseTimer,
               attention: bool = False) -> tuple[torch.Tensor, ...]:
    """One optimizer step over ``grad_accum`` micro-batches, its phases timed by ``timer``.

    Returns the losses of ``loss_names`` averaged over the micro-batches, (K,), and the gradient norm
    before clipping: both on the device. ``attention=True`` (logging steps) also returns the attention
    statistics ``fovea.core.attention.STAT_KEYS`` (4,), means over the step's clips and frames, read from
    the forwards the step runs anyway (no extra forward, no random numbers drawn, so resume stays exact).
    If a loss or the gradient is not finite, raises ``NonFiniteStep`` before clipping and the optimizer
    (gradients cleared, weights, optimizer and schedule untouched); checking costs one device sync per step.
    Under torchrun gradients are reduced once, in the last micro-batch's backward, and the returned
    losses and statistics are means over all ranks (one all-reduce), so every rank decides alike.
    """
    from fovea.core import distributed

    t = state.config.training
    micro_losses, micro_stats, clips = [], [], []
    for micro_step in range(t.grad_accum):
        with timer("data"):
            batch = next(batches)
            frames = batch["frames"].to(state.device, non_blocking=True)    # (B, T, 3, S, S) uint8
            latents = batch["latents"].to(state.device, non_blocking=True)  # (B, T, C, h, w)
            targets = {k: v.to(state.device, non_blocking=True) for k, v in state.module.prepare(batch).items()}
        with distributed.gradient_sync(state.model, enabled=micro_step == t.grad_accum - 1):
            with timer("forward"), torch.autocast(state.device.type, dtype=state.dtype,
                                                  enabled=state.dtype != torch.float32):
                out = state.model(frames, latents, targets, return_attention=attention)
            with timer("backward"):
                (out.loss / t.grad_accum).backward()
        micro_losses.append(step_losses(out, state.module))                # (K,)
        if attention:
            micro_stats.append(attention_stats(out.attention_static.detach(), out.attention_dynamic.detach()))
        clips.append(batch["index"].tolist() if "index" in batch else [])
    K = len(micro_losses[0])
    with timer("optimizer"):
        # (grad_accum * K [+ 4],): every micro-batch's losses, the step's attention statistics; over ranks
        reduced = distributed.mean_over_ranks(torch.cat(
            [torch.stack(micro_losses).flatten()] + ([torch.stack(micro_stats).mean(0)] if attention else [])))
        micro_losses = reduced[:K * t.grad_accum].view(t.grad_accum, K)
        grads = [p.grad for p in state.trainable if p.grad is not None]
        grad_norm = distributed.full_tensor(torch.nn.utils.get_total_norm(grads))
        checked = torch.cat([micro_losses.flatten(), grad_norm[None]])              # (grad_accum * K + 1,)
        if not bool(torch.isfinite(checked).all()):                                  # the one sync
            bad = [name for name, p in state.module.named_parameters()
                   if p.grad is not None and not bool(torch.isfinite(distributed.full_tensor(p.grad)).all())]
            state.optimizer.zero_grad(set_to_none=True)
            every_rank = distributed.gather(clips)                                   # [rank][micro-batch]
            clips = [[i for rank in every_rank for i in rank[m]] for m in range(t.grad_accum)]
            raise NonFiniteStep(micro_losses.cpu(), grad_norm.float().cpu(), clips, bad, state.loss_names)
        torch.nn.utils.clip_grads_with_norm_(state.trainable, t.grad_clip if t.grad_clip > 0 else math.inf, grad_norm)
        state.optimizer.step()
        state.scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)
    losses = micro_losses.mean(0)                                                    # (K,)
    return (losses, grad_norm.detach()) + ((reduced[K * t.grad_accum:],) if attention else ())
