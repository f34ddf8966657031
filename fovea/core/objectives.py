"""Training objectives: the contract a part of kind ``objective`` keeps, and what it is handed.

Both passes of the model run the LLM over one sequence ``[prompt (P), mode token, z_1 … z_T, suffix (L)]``
(SPEC.md: ``[text?, coarse_token, z°_1 … z°_T]``; the suffix is what objectives append after the frames,
e.g. a caption's tokens). An objective scores one pass from its hidden states (``PassStates``) and is
evaluated on both: its ``coarse`` term from pass 1, its ``fine`` term from pass 2. The model trains
``loss = Σ_objectives weight · (fine + λ_coarse · coarse)``.

Objectives are stateless: the parameters they read (the FiLM head, the LLM's embeddings as its LM
head) belong to the model, so checkpoints, the optimizer and the audit see one module tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch


@dataclass
class PassStates:
    """One pass's LLM hidden states over ``[prompt (P), mode, z_1 … z_T, suffix (L)]``, (B, P + 1 + T·K + L, H),
    where frame t gives K tokens ``z_t = z_t^1 … z_t^K`` (K = 1 for the foveated encoders)."""

    hidden: torch.Tensor
    prompt_len: int          # P
    num_frames: int          # T
    tokens_per_frame: int = 1    # K

    @property
    def before_frames(self) -> torch.Tensor:
        """(B, T, H): the state just before each frame's first token (the mode token, then the last token of
        frame t-1); entry t has seen only frames < t."""
        P, T, K = self.prompt_len, self.num_frames, self.tokens_per_frame
        return self.hidden[:, P:P + T * K:K]

    @property
    def after_frames(self) -> torch.Tensor:
        """(B, T, H): the state after each frame's last token (where the queries come from)."""
        P, T, K = self.prompt_len, self.num_frames, self.tokens_per_frame
        return self.hidden[:, P + K:P + T * K + 1:K]

    @property
    def text(self) -> torch.Tensor:
        """(B, 1 + L, H): the states at ``[last token of frame T, suffix_1 … suffix_L]``; entry i predicts suffix
        token i + 1."""
        return self.hidden[:, self.prompt_len + self.num_frames * self.tokens_per_frame:]


@dataclass
class Term:
    """An objective's loss on one pass: per clip (the training loss is their mean), and what else it made."""

    per_clip: torch.Tensor                                      # (B,) float32
    detail: dict[str, torch.Tensor] = field(default_factory=dict)   # e.g. "pred", "per_frame", "tokens"

    @property
    def mean(self) -> torch.Tensor:
        return self.per_clip.mean()


@runtime_checkable
class Objective(Protocol):
    """The contract of an ``objective`` part, built as ``cls(config, model_config=FoveaConfig.model)``.

    Optional extensions: a class attribute ``needs_captions = True`` makes training and evaluation use
    only clips that carry a caption (the others are listed in the run's data report); ``reads``, the
    prefixes of the model's parameters only this objective reads (without it they are idle: frozen, and
    the audit says so); ``baselines(train_clips, batch_size, codec)``, trivial predictors ``fovea eval``
    compares with (``fovea.core.evaluation``).
    """

    Config: ClassVar[type]

    def prepare(self, batch: dict[str, Any], codec) -> dict[str, torch.Tensor]:
        """The tensors this objective reads, from a loader batch (CPU; e.g. token ids of the captions)."""

    def suffix(self, model, targets: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Embeddings (B, L, H) the LLM reads after the frames in both passes, or None."""

    def loss(self, model, states: PassStates, latents: torch.Tensor, targets: dict[str, torch.Tensor]) -> Term:
        """This pass's loss per clip; ``latents`` (B, T, C, h, w) are the frames' VAE latents."""


def build_objectives(config) -> dict[str, Objective]:
    """The objectives ``[objectives]`` names, by name, built with their options."""
    from fovea.core.plugins import get_part

    return {name: get_part("objective", name).cls(table.options, model_config=config.model)
            for name, table in config.objectives.items()}


def needs_captions(config) -> bool:
    """Whether an objective of ``config`` trains on captions (clips without one are left out)."""
    from fovea.core.plugins import get_part

    return any(getattr(get_part("objective", name).cls, "needs_captions", False) for name in config.objectives)


def uses_text(config) -> bool:
    """Whether the LLM reads or writes text tokens: a prompt, or an objective that appends a suffix of tokens."""
    return bool(config.model.prompt) or needs_captions(config)
