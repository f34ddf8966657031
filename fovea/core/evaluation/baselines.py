"""The trivial baselines a held-out figure must beat, fitted on training clips.

``next_latent``'s ``mean_latent`` (the mean latent for every frame) and ``copy_previous`` (frame t-1's
latent; the mean for frame 1) are built from the helpers here (``NextLatent.baselines``); every
objective's ``baselines(train, batch_size, codec)`` is collected by ``fit_baselines``.
"""

from __future__ import annotations

from typing import Callable

import torch

from fovea.core.errors import FoveaError
from fovea.core.split import ClipSet

BASELINES = ("mean_latent", "copy_previous")   # next_latent's; caption's are unigram and bigram

Baseline = Callable[[torch.Tensor, dict], torch.Tensor]   # (latents (B, T, C, h, w), targets) -> losses (B, K)


@torch.no_grad()
def mean_latent(clips: ClipSet, batch_size: int) -> torch.Tensor:
    """The mean latent (C, h, w) over every frame of ``clips`` (the ``mean_latent`` baseline's prediction)."""
    total, count = None, 0
    for batch in clips.batches(batch_size):
        latents = batch["latents"].double()                                    # (B, T, C, h, w)
        total = latents.sum((0, 1)) if total is None else total + latents.sum((0, 1))
        count += latents.shape[0] * latents.shape[1]
    if total is None:
        raise FoveaError("no training clips to average for the mean_latent baseline")
    return (total / count).float()


def per_frame_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, T, C, h, w) twice -> (B, T) squared error averaged over each frame's latent."""
    return (pred.float() - target.float()).square().mean(dim=(2, 3, 4))


def baseline_predictions(latents: torch.Tensor, mean: torch.Tensor) -> dict[str, torch.Tensor]:
    """The trivial predictions of latents (B, T, C, h, w): the mean latent, and the previous frame's latent."""
    mean = mean.to(latents.device, latents.dtype).expand_as(latents)           # (B, T, C, h, w)
    return {"mean_latent": mean,
            "copy_previous": torch.cat([mean[:, :1], latents[:, :-1]], dim=1)}


def fit_baselines(model: torch.nn.Module, train: ClipSet, batch_size: int) -> dict[str, dict[str, Baseline]]:
    """Each objective's trivial baselines fitted on ``train`` (the first training clips), by objective:
    the objective's optional ``baselines(train, batch_size, codec)``; none for an objective without it."""
    return {name: (objective.baselines(train, batch_size, model.codec) if hasattr(objective, "baselines") else {})
            for name, (objective, _) in model.objectives.items()}
