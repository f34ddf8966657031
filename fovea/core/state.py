"""What one optimizer step touches (``TrainState``) and how a run makes it (``prepare_training``).

It sits below the step (``fovea.core.step``), the checkpoints (``fovea.core.checkpoint``) and the loop
(``fovea.core.train``): each of them uses a ``TrainState``, and none has to import another for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fovea.core.config import FoveaConfig


@dataclass
class TrainState:
    """Everything one optimizer step touches; made once by ``prepare_training``."""

    config: FoveaConfig
    model: torch.nn.Module               # what the step calls: the model, its DDP wrapper, or FSDP2-sharded
    module: torch.nn.Module              # the model itself (DDP's ``.module``): parts, names, summaries
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    trainable: list[torch.nn.Parameter]
    device: torch.device
    dtype: torch.dtype

    @property
    def loss_names(self) -> tuple[str, ...]:
        """The losses a step returns, in order: the total, both passes, then each objective's coarse and fine."""
        return loss_names(self.module)


def loss_names(model: torch.nn.Module) -> tuple[str, ...]:
    """``loss, loss_fine, loss_coarse`` then ``<objective>_coarse, <objective>_fine`` per objective."""
    return ("loss", "loss_fine", "loss_coarse") + tuple(
        f"{name}_{mode}" for name in model.objectives for mode in ("coarse", "fine"))


def prepare_training(config: FoveaConfig, model: torch.nn.Module, device: torch.device) -> TrainState:
    """Compile ``model``'s parts (``training.compile``), spread it over the torchrun processes
    (``distributed.strategy``), then its optimizer and schedule."""
    from fovea.core.devices import DTYPES
    from fovea.core.distributed import parallelize
    from fovea.core.optimizer import build_optimizer, build_scheduler

    if config.training.compile:
        from fovea.core.compile import compile_model

        compile_model(model, config)
    wrapped = parallelize(model, config.distributed.strategy, device)
    optimizer = build_optimizer(wrapped, config)     # FSDP2: over the shards it made
    scheduler = build_scheduler(optimizer, config)
    return TrainState(config, wrapped, model, optimizer, scheduler,
                      [p for p in wrapped.parameters() if p.requires_grad], device, DTYPES[config.precision.dtype])
