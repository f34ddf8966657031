"""Training objectives: building the ones a config names, and what they ask of training.

An objective (contract: ``fovea.core.contracts.Objective``) scores one pass from its hidden states
(``PassStates``) and is evaluated on both passes: its ``coarse`` term from pass 1, its ``fine`` term from
pass 2. The model trains ``loss = Σ_objectives weight · (fine + λ_coarse · coarse)``.

Objectives are stateless: the parameters they read (the FiLM head, the LLM's embeddings as its LM
head) belong to the model, so checkpoints, the optimizer and the audit see one module tree.

``Objective``, ``PassStates`` and ``Term`` live in ``fovea.core.contracts`` (below the plugin manager, which
checks them); they are importable from here too, as plugins written before that move import them.
"""

from __future__ import annotations

from fovea.core.contracts import Objective, PassStates, Term
from fovea.core.plugins import get_part

__all__ = ["Objective", "PassStates", "Term", "build_objectives", "needs_captions", "uses_text"]


def build_objectives(config) -> dict[str, Objective]:
    """The objectives ``[objectives]`` names, by name, built with their options."""
    return {name: get_part("objective", name).cls(table.options, model_config=config.model)
            for name, table in config.objectives.items()}


def needs_captions(config) -> bool:
    """Whether an objective of ``config`` trains on captions (clips without one are left out)."""
    return any(getattr(get_part("objective", name).cls, "needs_captions", False) for name in config.objectives)


def uses_text(config) -> bool:
    """Whether the LLM reads or writes text tokens: a prompt, or an objective that appends a suffix of tokens."""
    return bool(config.model.prompt) or needs_captions(config)
