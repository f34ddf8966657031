"""Ablations: the same held-out evaluation with one cause removed, against the same clips unablated.

``shuffle_queries`` (pass 2 reads each clip with the queries of another clip), ``static_queries``
(pass 2 reads with ``q_static``, as pass 1) and ``blind`` (every frame replaced by the training clips'
mean frame).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable

import torch

from fovea.core.errors import FoveaError
from fovea.core.evaluation.losses import clip_losses
from fovea.core.evaluation.statistics import bootstrap_draws, mean_ci, relative_change
from fovea.core.split import ClipSet

ABLATIONS = ("shuffle_queries", "static_queries", "blind")


@contextlib.contextmanager
def ablated(model: torch.nn.Module, ablation: str | None):
    """The model with pass 2's reads ablated (``shuffle_queries``: each clip read with the queries of the next
    clip in its batch; ``static_queries``: with ``q_static``, as pass 1), or unchanged (None, ``blind``:
    that one replaces the frames, see ``clip_losses``)."""
    if ablation is not None and ablation not in ABLATIONS:
        raise FoveaError(f"--ablate {ablation!r}: choose from {', '.join(ABLATIONS)}")
    shift = model.shift_queries
    if ablation == "shuffle_queries":
        model.shift_queries = lambda queries: shift(queries).roll(1, dims=0)              # (B, T, D)
    elif ablation == "static_queries":
        model.shift_queries = lambda queries: model.q_static.expand_as(queries).to(queries.dtype)
    try:
        yield model
    finally:
        model.__dict__.pop("shift_queries", None)


@torch.no_grad()
def mean_frame(clips: ClipSet, batch_size: int) -> torch.Tensor:
    """The mean frame (T, 3, S, S) uint8 of ``clips`` at each frame position (the ``blind`` ablation's input)."""
    total, count = None, 0
    for batch in clips.batches(batch_size):
        frames = batch["frames"].double()                                     # (B, T, 3, S, S)
        total = frames.sum(0) if total is None else total + frames.sum(0)
        count += len(frames)
    return (total / count).round().to(torch.uint8)


def summarize_ablation(original: dict[str, torch.Tensor], ablated: dict[str, torch.Tensor]) -> dict[str, Any]:
    """One objective under an ablation, against the same clips unablated (losses (N, K) per mode): the
    ablated losses, the improvement left ``(coarse - ablated fine) / coarse`` and its share of the original
    improvement (None when the original's interval reaches 0), and the change of the fine loss
    ``(ablated - fine) / fine``, with paired intervals."""
    per_clip = {k: v.mean(dim=1) for k, v in original.items()}
    after = {k: v.mean(dim=1) for k, v in ablated.items()}
    draws = bootstrap_draws(len(per_clip["fine"]))
    left = relative_change(per_clip["coarse"], after["fine"], draws)
    before = relative_change(per_clip["coarse"], per_clip["fine"], draws)
    raised = relative_change(per_clip["fine"], after["fine"], draws)
    return {"modes": {k: {"loss": float(v.double().mean()), "ci95": mean_ci(v, draws)} for k, v in after.items()},
            # a share of an improvement that is not there (its interval reaches 0) would be noise
            "improvement_left": left["value"] / before["value"] if before["ci95"][0] > 0 else None,
            "improvement": left,
            "fine_change": {"value": -raised["value"], "ci95": [-raised["ci95"][1], -raised["ci95"][0]]}}


def evaluate_ablations(model: torch.nn.Module, clips: ClipSet, original: dict[str, dict[str, torch.Tensor]],
                       ablations: Iterable[str], train: ClipSet, batch_size: int, device, dtype,
                       progress: bool = False) -> dict[str, dict[str, Any]]:
    """``eval.json``'s ``ablations``: per ablation and objective, ``summarize_ablation`` against ``original``."""
    out: dict[str, dict[str, Any]] = {}
    for ablation in ablations:                   # an unknown name is refused by ``ablated``
        size = batch_size
        if ablation == "shuffle_queries":   # a batch of one clip would read its own queries
            size = max(2, size)
            while len(clips) % size == 1:
                size += 1
        blind = mean_frame(train, batch_size) if ablation == "blind" else None
        with ablated(model, ablation):
            losses = clip_losses(model, clips, {}, ("coarse", "fine"), size, device, dtype, progress, blind)
        out[ablation] = {name: summarize_ablation(original[name], table) for name, table in losses.items()}
    return out
