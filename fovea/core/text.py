"""Text for the LLM: one tokenizer, and every special-token rule in one place.

A pretrained LLM brings its own tokenizer (``fovea.core.llm.load_tokenizer``: transformers'
``AutoTokenizer``, from the same directory, hub id or GGUF file). A random-initialised LLM gets
``ByteTokenizer``: the UTF-8 bytes of the text, id = byte value, so the ``tiny`` preset's 256-entry
vocabulary fits it exactly and any text round-trips without a training step; byte 0 (NUL, never in a
caption) is its end-of-text token.

The rules (``TextCodec``): a prompt is its tokens, no BOS and no EOS (it is followed by the mode
token); a caption is its tokens then EOS (the model learns where a caption ends); captions of a batch
are right-padded with ``IGNORE`` (-100), which is also the label mask: a padded position is neither
read (its embedding is never attended to by a real token: captions come last in the causal sequence)
nor scored. Prompt and frame positions carry no label at all: only caption positions are scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fovea.core.errors import FoveaError

IGNORE = -100   # label of a position that is not scored (torch's cross_entropy ignore_index)


class ByteTokenizer:
    """UTF-8 bytes as token ids (0..255); id 0 ends a text."""

    vocab_size = 256
    eos_token_id = 0

    def encode(self, text: str) -> list[int]:
        return [b for b in text.encode("utf-8") if b != 0]

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 < i < 256).decode("utf-8", errors="replace")


@dataclass
class TextCodec:
    """A tokenizer (``ByteTokenizer`` or a transformers one) with fovea's special-token rules."""

    tokenizer: Any
    eos_id: int
    name: str          # "bytes" or the tokenizer's source, for reports

    @classmethod
    def for_llm(cls, llm_config, vocab_size: int) -> "TextCodec":
        """The LLM's own tokenizer when it is pretrained, else bytes (which must fit ``vocab_size``)."""
        from fovea.core.llm import load_tokenizer

        tokenizer = load_tokenizer(llm_config)
        if tokenizer is None:
            if vocab_size < ByteTokenizer.vocab_size:
                raise FoveaError(f"the random-initialised LLM has {vocab_size} token embeddings; text needs at "
                                 f"least {ByteTokenizer.vocab_size} for the byte-level tokenizer")
            return cls(ByteTokenizer(), ByteTokenizer.eos_token_id, "bytes")
        eos = tokenizer.eos_token_id
        if eos is None:
            raise FoveaError(f"the tokenizer of {llm_config.pretrained} has no end-of-text token")
        return cls(tokenizer, eos, llm_config.gguf_file or llm_config.pretrained)

    def encode(self, text: str) -> list[int]:
        """Text -> token ids, no special tokens."""
        if isinstance(self.tokenizer, ByteTokenizer):
            return self.tokenizer.encode(text)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        """Token ids -> text, up to the first EOS (excluded)."""
        ids = list(ids)
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        if isinstance(self.tokenizer, ByteTokenizer):
            return self.tokenizer.decode(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def prompt_ids(self, prompt: str) -> torch.Tensor:
        """The prompt's tokens (P,) long; empty for no prompt."""
        return torch.tensor(self.encode(prompt) if prompt else [], dtype=torch.long)

    def caption_ids(self, captions: list[str], max_tokens: int) -> torch.Tensor:
        """Captions -> (B, L) long: each caption's tokens (at most ``max_tokens - 1``) then EOS, right-padded
        with ``IGNORE``; L is the longest caption's length."""
        rows = [self.encode(text)[:max_tokens - 1] + [self.eos_id] for text in captions]
        width = max(len(row) for row in rows)
        return torch.tensor([row + [IGNORE] * (width - len(row)) for row in rows], dtype=torch.long)
