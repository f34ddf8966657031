"""``caption``: the clip's caption, read after the frames and scored by the LLM's own LM head.

Each pass's sequence continues after the frames with the caption's tokens (teacher forcing):
``[prompt, mode, z_1 … z_T, c_1 … c_{n}]``; the state at ``z_T`` predicts ``c_1``, the state at ``c_i``
predicts ``c_{i+1}`` and the state at ``c_n`` predicts the end-of-text token. Only those positions are
scored (cross-entropy, mean over the caption's tokens, then over clips): prompt and frame positions
carry no label, padding is ignored, and the causal mask keeps a caption token from seeing the ones
after it and a frame from seeing the caption. ``caption_coarse`` comes from pass 1's sequence,
``caption_fine`` from pass 2's: the dynamic queries help when the fine caption loss is the lower.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from fovea.core.errors import FoveaError
from fovea.core.hookspecs import hookimpl
from fovea.core.contracts import PassStates, Term
from fovea.core.text import IGNORE


class Caption:
    """Cross-entropy of the clip's caption, read after the frames (LM head = the LLM's tied embeddings)."""

    needs_captions = True   # clips without a caption are left out of training and evaluation

    class Config(BaseModel):
        """Options of the ``caption`` objective."""

        model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

        max_tokens: int = Field(128, ge=2)
        """Tokens of a caption read and scored, its end-of-text token included; longer captions are cut."""

    def __init__(self, config: Config, *, model_config=None):
        self.config = config

    def prepare(self, batch, codec) -> dict[str, torch.Tensor]:
        """``caption_ids`` (B, L): each caption's tokens and EOS, right-padded with ``IGNORE``."""
        captions = batch.get("captions")
        if captions is None or any(c is None for c in captions):
            raise FoveaError("the caption objective got clips without a caption; they should have been left out "
                             "(see the run's data_report.json)")
        return {"caption_ids": codec.caption_ids(list(captions), self.config.max_tokens)}

    def suffix(self, model, targets) -> torch.Tensor:
        """(B, L - 1, H): the caption's tokens read after the frames; the last one (EOS or padding) is only predicted."""
        return model.embed_tokens(targets["caption_ids"][:, :-1].clamp_min(0))

    def loss(self, model, states: PassStates, latents, targets) -> Term:
        """Per clip: mean cross-entropy over its caption's tokens; detail ``tokens`` (B, L), ``mask`` (B, L), ``logits``."""
        labels = targets["caption_ids"]                                          # (B, L)
        logits = model.lm_logits(states.text)                                   # (B, L, V)
        tokens = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                                 reduction="none").view(labels.shape)            # (B, L), 0 where ignored
        mask = labels != IGNORE
        return Term(tokens.sum(1) / mask.sum(1), {"tokens": tokens, "mask": mask, "logits": logits})

    def baselines(self, train, batch_size: int, codec) -> dict:
        """Frames-blind token models of the training captions of ``train``: ``unigram`` and ``bigram``,
        scored on the same tokens as the model (EOS included); losses per clip (B, 1)."""
        every = train.cache.captions()                                            # one copy, not one per clip
        captions = [every[i] for i in train.indices]
        rows = [codec.caption_ids([c], self.config.max_tokens)[0].tolist() for c in captions if c]
        if not rows:
            return {}
        model = TokenCounts.fit(rows)

        def baseline(order: int):
            def score(latents, targets) -> torch.Tensor:
                labels = targets["caption_ids"].tolist()                               # (B, L)
                return torch.tensor([[model.cross_entropy([t for t in row if t != IGNORE], order)]
                                     for row in labels])                                # (B, 1)
            return score

        return {"unigram": baseline(1), "bigram": baseline(2)}


class TokenCounts:
    """Unigram and bigram counts of token sequences, for the frames-blind caption baselines.

    Unigram: add-one smoothed over the tokens seen plus one unseen class. Bigram: Witten–Bell interpolation
    with the unigram (``λ = c(v) / (c(v) + distinct successors of v)``), no parameter to tune; the first
    token's context is the start of the caption.
    """

    START = -1

    def __init__(self, unigram: Counter, bigram: dict[int, Counter]):
        self.unigram, self.bigram = unigram, bigram
        self.total = sum(unigram.values())
        self.types = len(unigram) + 1                     # + one class for every unseen token
        self.context = {v: (sum(c.values()), len(c)) for v, c in bigram.items()}   # v -> (count, successors)

    @classmethod
    def fit(cls, rows: list[list[int]]) -> "TokenCounts":
        unigram: Counter = Counter()
        bigram: dict[int, Counter] = defaultdict(Counter)
        for row in rows:
            unigram.update(row)
            for previous, token in zip([cls.START] + row[:-1], row):
                bigram[previous][token] += 1
        return cls(unigram, dict(bigram))

    def p_unigram(self, token: int) -> float:
        return (self.unigram.get(token, 0) + 1) / (self.total + self.types)

    def p_bigram(self, previous: int, token: int) -> float:
        if previous not in self.context:
            return self.p_unigram(token)
        count, successors = self.context[previous]
        lam = count / (count + successors)
        return lam * self.bigram[previous].get(token, 0) / count + (1 - lam) * self.p_unigram(token)

    def cross_entropy(self, row: list[int], order: int) -> float:
        """Mean negative log-probability (nats) of the tokens of ``row`` under the unigram (1) or bigram (2)."""
        previous = [self.START] + row[:-1]
        logs = [math.log(self.p_unigram(t) if order == 1 else self.p_bigram(v, t)) for v, t in zip(previous, row)]
        return -sum(logs) / len(logs)


@hookimpl
def fovea_register_objectives(register):
    register("caption", Caption)
