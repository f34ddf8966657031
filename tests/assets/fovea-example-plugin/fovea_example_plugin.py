"""An example third-party fovea plugin: one prediction head, registered through the ``fovea`` entry point."""

import torch
from pydantic import BaseModel
from torch import nn

import fovea


class AdditiveHead(nn.Module):
    """Previous latent through a conv, plus a per-channel shift from the LLM state."""

    class Config(BaseModel):
        kernel_size: int = 3

    def __init__(self, config: Config, *, hidden_size: int, latent_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(latent_channels, latent_channels, config.kernel_size, padding=config.kernel_size // 2)
        self.shift = nn.Linear(hidden_size, latent_channels)

    def forward(self, hidden: torch.Tensor, prev_latent: torch.Tensor) -> torch.Tensor:
        return self.conv(prev_latent) + self.shift(hidden)[..., None, None]


@fovea.hookimpl
def fovea_register_heads(register):
    register("additive", AdditiveHead)
