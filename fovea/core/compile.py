"""How the model's parts run in training: ``torch.compile`` and activation checkpointing.

``[training] compile = true`` compiles, for training and ``fovea profile``, what runs once per block: the
encoder's blocks (through the encoder's ``compile_blocks``, an optional extension of the encoder contract; the
``deep`` encoder compiles its frame pass and its cached query pass per block), each decoder layer of the LLM and
the head. Modules are compiled in place (``nn.Module.compile``) and functions beside them, so parameter names —
and so checkpoints — are the same compiled or not: no ``_orig_mod.`` prefix. Blocks of one architecture share
one compiled graph (parameters are graph inputs), so a 30-layer LLM compiles once, not 30 times.

Activation checkpointing is per component (``[model.encoder] activation_checkpointing``, ``[model.llm]
activation_checkpointing``): a block keeps only its input for backward and is run again there (non-reentrant
``torch.utils.checkpoint``, which restores the RNG state for the recomputation, so dropout and the losses are
those of a run without it). Applied when the part is built: ``enable_activation_checkpointing`` for a
transformers model, the encoder's own blocks otherwise.
"""

from __future__ import annotations

import sys

import torch
from torch import nn


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing of every layer of a transformers model (active in training mode)."""
    options = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):          # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)


def checkpointed_parts(config) -> dict[str, bool]:
    """Whether the encoder's and the LLM's blocks are checkpointed (an encoder without the option: never)."""
    return {"encoder": bool(getattr(config.model.encoder.options, "activation_checkpointing", False)),
            "llm": config.model.llm.activation_checkpointing}


def compile_options(config) -> dict:
    """The ``torch.compile`` arguments of ``[training]``."""
    return {"backend": config.training.compile_backend}


def compile_model(model: nn.Module, config) -> None:
    """Compile the encoder's blocks, the LLM's decoder layers and the head of ``model`` in place (``[training] compile``)."""
    options = compile_options(config)
    encoder = model.encoder
    if hasattr(encoder, "compile_blocks"):
        encoder.compile_blocks(**options)
    else:
        print(f"warning: training.compile: the encoder {type(encoder).__name__} has no compile_blocks(), so it runs "
              f"uncompiled (the LLM and the head are compiled)", file=sys.stderr)
    layers = getattr(model.llm, "layers", None)
    for layer in layers if isinstance(layers, nn.ModuleList) else [model.llm]:
        layer.compile(**options)
    model.head.compile(**options)


def eager():
    """A context in which compiled code runs eagerly (measurements that a compiled graph would hide)."""
    import contextlib

    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()
