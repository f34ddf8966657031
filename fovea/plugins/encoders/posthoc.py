"""``posthoc``: one softmax attention of the projected query over the backbone's final tokens (DINOv3 or DINOv2).

SPEC.md "Query mechanism" §2: the simplification the original code shipped, kept as the baseline and
ablation. It is known to collapse to near-uniform attention on DINO features (entropy ~ log N).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fovea.core.hookspecs import hookimpl
from fovea.plugins.encoders.backbone import BackboneEncoder, BackboneOptions, compile_layers


class PosthocEncoder(BackboneEncoder):
    """A DINOv3 (or DINOv2) ViT + post-hoc cross-attention of the query over the final tokens (baseline)."""

    class Config(BackboneOptions):
        """Options of the ``posthoc`` encoder."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.query_input_proj = nn.Linear(self.dim, self.dim, bias=False)  # no bias: SPEC failure mode
        self.query_output_proj = nn.Linear(self.dim, self.dim)

    def encode(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """Frames (N, 3, H, W) in [0, 1] -> {"tokens": (N, 1 + R + P, D)} final normed tokens."""
        return {"tokens": self.backbone(pixel_values=self.vit.pixels(frames)).last_hidden_state}

    def compile_blocks(self, **options) -> None:
        """``torch.compile`` each block of the backbone (``[training] compile``)."""
        compile_layers(self.backbone, self.config.backbone, **options)

    def attend(self, queries: torch.Tensor, cache: dict[str, torch.Tensor], return_attention: bool = False):
        """Queries (N, D), row i reading frame i -> features (N, D) [, attention (N, num_tokens)]."""
        tokens = cache["tokens"]                                           # (N, K, D)
        q = self.query_input_proj(queries.to(tokens.dtype))                # (N, D)
        scores = torch.einsum("nd,nkd->nk", q, tokens) / math.sqrt(self.dim)
        attention = scores.softmax(dim=-1)                                 # (N, K)
        features = self.query_output_proj(torch.einsum("nk,nkd->nd", attention, tokens))  # (N, D)
        return (features, attention) if return_attention else features


@hookimpl
def fovea_register_encoders(register):
    register("posthoc", PosthocEncoder)
