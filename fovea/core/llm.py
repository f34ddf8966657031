"""The language model: SmolLM2 (Llama architecture) through transformers, used on embeddings only.

SPEC.md "Components": ``HuggingFaceTB/SmolLM2-135M-Instruct``; hidden 576, 30 layers, 9 heads, 3 KV
heads, FFN 1536, vocab 49152, tied embeddings.
"""

from __future__ import annotations

import torch

from fovea.core.config import LLMConfig
from fovea.core.pretrained import load_pretrained

SIZES: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256, max_position_embeddings=256, tie_word_embeddings=True),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192,
                         rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True),
}


def build_llm(config: LLMConfig):
    """The base ``LlamaModel`` (no LM head): from ``config.pretrained``, or random at ``config.size``."""
    from transformers import AutoModel, LlamaConfig, LlamaModel

    if config.pretrained:
        llm = load_pretrained(
            lambda p: AutoModel.from_pretrained(p, dtype=torch.float32, attn_implementation="sdpa"),
            config.pretrained, "language model", "model.llm.pretrained")
    else:
        llm = LlamaModel(LlamaConfig(**SIZES[config.size], attn_implementation="sdpa"))
    llm.requires_grad_(config.trainable)
    # Frames enter as embeddings and no text prompt is used yet, so the token embedding table is never
    # read: keep it out of the optimizer rather than carry parameters that can never get a gradient.
    llm.get_input_embeddings().requires_grad_(False)
    return llm


def load_tokenizer(config: LLMConfig):
    """The pretrained LLM's tokenizer (transformers ``AutoTokenizer``); None for a random-initialised LLM."""
    from transformers import AutoTokenizer

    if not config.pretrained:
        return None
    return load_pretrained(AutoTokenizer.from_pretrained, config.pretrained, "tokenizer", "model.llm.pretrained")
