"""The contracts of the plugin kinds, as ``typing.Protocol`` classes checked when a part registers.

A class missing a method of its kind's contract is refused with one line naming the plugin and the
methods (``fovea.core.plugins``); attributes an instance sets in ``__init__`` (an encoder's ``dim``) are
checked when the part is built. Optional, documented extensions are not part of a contract: a probe
that needs one and does not find it is reported as "not measured" by the audit.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from fovea.core.objectives import Objective
from fovea.core.trackers import Tracker


@runtime_checkable
class Encoder(Protocol):
    """``cls(config)``; ``dim``; ``encode`` once per frame, ``attend`` once per pass.

    ``attend`` may give K > 1 tokens per frame, ``(N, K, D)``: the LLM then reads frame t's K tokens one after
    the other, and frame t is predicted from the state before its first token.

    Optional extensions: ``uses_query = False`` (a query-free encoder: the model runs one pass, whose coarse
    is its fine), ``num_prefix_tokens`` (CLS/register columns before the patches in the attention rows: the
    audit's attention statistics over the image, ``fovea viz``'s heatmaps), ``masked_forward`` (the reference
    the audit compares a cached query pass with), ``backbone_config`` (the backbone's transformers config:
    the audit's architecture check, the memory model), ``query_input_proj``/``query_output_proj``,
    ``compile_blocks(**torch_compile_options)`` (``[training] compile``: compile what runs per block) and an
    ``activation_checkpointing`` option in its ``Config`` (``[model.encoder] activation_checkpointing``).
    """

    dim: int

    def encode(self, frames: torch.Tensor) -> Any:
        """Frames (N, 3, H, W) float in [0, 1] -> an opaque per-frame cache."""

    def attend(self, queries: torch.Tensor, cache: Any, return_attention: bool = False):
        """Queries (N, dim), row i reading frame i -> features (N, dim) or (N, K, dim) [, attention (N, num_tokens)]."""


@runtime_checkable
class Head(Protocol):
    """``cls(config, hidden_size=H, latent_channels=C)``."""

    def forward(self, hidden: torch.Tensor, prev_latent: torch.Tensor) -> torch.Tensor:
        """Hidden (N, H) and the previous latent (N, C, h, w) -> the predicted latent (N, C, h, w)."""


@runtime_checkable
class ClipSource(Protocol):
    """``cls(config, num_frames=T, frame_size=S, seed=...)``: a map-style collection of ``fovea.core.data.Clip``."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int): ...


CONTRACTS: dict[str, type] = {"encoder": Encoder, "head": Head, "loader": ClipSource, "objective": Objective,
                              "tracker": Tracker}
