"""Query-free baselines with K tokens per frame: is one foveated token better than simply more tokens?

Both read the backbone's final patch tokens (DINOv3, or DINOv2 with ``backbone = "dinov2"``) and ignore
the query (``uses_query = False``): the model runs one pass, whose "coarse" is its "fine"
(``FoveatedVLM._single_pass``).

- ``pooled``: the patch grid (g × g) average-pooled to k × k regions, K = k² tokens, each through one
  linear ``projection`` (D → D). With K = 1 a frame's token is ``projection(mean of its patch features)``.
- ``pixel_shuffle`` (SmolVLM2-style): each r × r block of neighbouring patches concatenated (r² D) and
  projected to D, K = (g / r)² tokens.

The grid must divide: k (or r) a divisor of g = frame_size / patch_size; a frame size that does not
fit is one clear error at the first read.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from fovea.core.errors import ConfigError
from fovea.core.hookspecs import hookimpl
from fovea.plugins.encoders.backbone import BackboneEncoder, BackboneOptions, compile_layers


class _PatchBaseline(BackboneEncoder):
    """The shared part: the backbone, ``encode`` to the final patch tokens, uniform "attention" over them."""

    uses_query = False

    def __init__(self, config: BackboneOptions):
        super().__init__(config)

    def compile_blocks(self, **options) -> None:
        """``torch.compile`` each block of the backbone (``[training] compile``)."""
        compile_layers(self.backbone, self.config.backbone, **options)

    def encode(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """Frames (N, 3, H, W) in [0, 1] -> {"patches": (N, g, g, D)} the final normed patch tokens on their grid."""
        tokens = self.backbone(pixel_values=self.vit.pixels(frames)).last_hidden_state[:, self.num_prefix_tokens:]
        N, P, D = tokens.shape
        side = math.isqrt(P)
        return {"patches": tokens.reshape(N, side, side, D)}

    def _grid_divides(self, side: int, cells: int, what: str) -> None:
        if side % cells:
            raise ConfigError(f"model.encoder: {what} {cells} does not divide the {side} x {side} patch grid "
                              f"(data.frame_size / patch size); choose a divisor of {side}")

    def _output(self, tokens: torch.Tensor, side: int, return_attention: bool):
        """Tokens (N, K, D) -> (N, D) when K = 1, else (N, K, D); with uniform weights over the patches."""
        out = tokens[:, 0] if tokens.shape[1] == 1 else tokens
        if not return_attention:
            return out
        N = len(tokens)
        attention = tokens.new_zeros(N, self.num_prefix_tokens + side * side)
        attention[:, self.num_prefix_tokens:] = 1.0 / (side * side)              # every patch, alike
        return out, attention


class PooledEncoder(_PatchBaseline):
    """The backbone's patch grid average-pooled to K tokens per frame, projected; no query (one pass)."""

    class Config(BackboneOptions):
        """Options of the ``pooled`` encoder."""

        tokens: int = Field(1, ge=1)
        """Tokens per frame K: a square (1, 4, 16, 64 …) whose side divides the patch grid's."""

        @model_validator(mode="after")
        def _square(self):
            if math.isqrt(self.tokens) ** 2 != self.tokens:
                raise ValueError(f"tokens = {self.tokens} is not a square (1, 4, 16, 64, …)")
            return self

    def __init__(self, config: Config):
        super().__init__(config)
        self.projection = nn.Linear(self.dim, self.dim)

    def attend(self, queries: torch.Tensor, cache: dict[str, torch.Tensor], return_attention: bool = False):
        """The query is not read. -> (N, D) for K = 1, else (N, K, D) [, uniform attention (N, prefix + P)]."""
        grid = cache["patches"]                                                  # (N, g, g, D)
        N, side, _, D = grid.shape
        cells = math.isqrt(self.config.tokens)
        self._grid_divides(side, cells, "tokens side")
        pooled = F.adaptive_avg_pool2d(grid.permute(0, 3, 1, 2), cells)         # (N, D, k, k)
        tokens = self.projection(pooled.flatten(2).transpose(1, 2))              # (N, K, D)
        return self._output(tokens, side, return_attention)


class PixelShuffleEncoder(_PatchBaseline):
    """SmolVLM2-style: each r x r block of patches concatenated and projected, K = patches / r²; no query."""

    class Config(BackboneOptions):
        """Options of the ``pixel_shuffle`` encoder."""

        ratio: int = Field(2, ge=1)
        """r: the side of the block of neighbouring patches that becomes one token (K = patches / r²; it must
        divide the patch grid's side)."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.projection = nn.Linear(config.ratio ** 2 * self.dim, self.dim)

    def attend(self, queries: torch.Tensor, cache: dict[str, torch.Tensor], return_attention: bool = False):
        """The query is not read. -> (N, D) for K = 1, else (N, K, D) [, uniform attention (N, prefix + P)]."""
        grid = cache["patches"]                                                  # (N, g, g, D)
        N, side, _, D = grid.shape
        r = self.config.ratio
        self._grid_divides(side, r, "ratio")
        blocks = grid.reshape(N, side // r, r, side // r, r, D).permute(0, 1, 3, 2, 4, 5)   # (N, g/r, g/r, r, r, D)
        tokens = self.projection(blocks.reshape(N, (side // r) ** 2, r * r * D))           # (N, K, D)
        return self._output(tokens, side, return_attention)


@hookimpl
def fovea_register_encoders(register):
    register("pooled", PooledEncoder)
    register("pixel_shuffle", PixelShuffleEncoder)
