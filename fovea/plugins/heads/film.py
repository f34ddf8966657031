"""``film``: the spec's prediction head (SPEC.md "Prediction head").

The LLM hidden state gives FiLM parameters (gamma, beta) that modulate a conv encoding of the previous
frame's VAE latent; a conv decoder predicts the **full** next latent (a residual head can collapse to
"nothing changes").
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from fovea.core.hookspecs import hookimpl


def _conv_stack(widths: list[int]) -> nn.Sequential:
    """Conv3x3 between consecutive widths with GELU in between (none after the last)."""
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(zip(widths, widths[1:])):
        if i:
            layers.append(nn.GELU())
        layers.append(nn.Conv2d(cin, cout, kernel_size=3, padding=1))
    return nn.Sequential(*layers)


class FiLMHead(nn.Module):
    """FiLM-conditioned conv head predicting the full next VAE latent (the spec's head)."""

    class Config(BaseModel):
        """Options of the ``film`` head."""

        model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

        channels: tuple[int, int, int] = (64, 128, 256)
        """Conv widths of the latent encoder (the decoder mirrors them) (SPEC: 64, 128, 256)."""
        film_hidden: int = Field(512, ge=1)
        """Hidden width of ``h_to_film`` (SPEC: 512)."""

    def __init__(self, config: Config, *, hidden_size: int, latent_channels: int):
        super().__init__()
        width = config.channels[-1]
        self.h_to_film = nn.Sequential(
            nn.Linear(hidden_size, config.film_hidden), nn.GELU(), nn.Linear(config.film_hidden, 2 * width))
        self.encoder = _conv_stack([latent_channels, *config.channels])
        self.decoder = _conv_stack([*reversed(config.channels), latent_channels])

    def forward(self, hidden: torch.Tensor, prev_latent: torch.Tensor) -> torch.Tensor:
        """Hidden (N, H), previous latent (N, C, h, w) -> predicted next latent (N, C, h, w)."""
        gamma, beta = self.h_to_film(hidden).chunk(2, dim=-1)           # (N, W) each
        features = self.encoder(prev_latent)                             # (N, W, h, w)
        features = gamma[..., None, None] * features + beta[..., None, None]
        return self.decoder(features)


@hookimpl
def fovea_register_heads(register):
    register("film", FiLMHead)
