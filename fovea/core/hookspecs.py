"""Every hook a fovea plugin can implement, in one place (pytest's ``hookspec.py`` habit).

A plugin is a module with functions marked ``@fovea.hookimpl`` and named after a hook below. Each
hook receives a ``register(name, cls)`` callback: call it once per part the plugin provides. Core
rejects duplicate names, so plugins never touch a global registry.

Parts and their contracts (the ``typing.Protocol`` classes in ``fovea.core.contracts``, checked when a part
registers; README, "Writing a plugin"):

- **encoder**: ``nn.Module`` with a nested pydantic ``Config``, built as ``cls(config)``, attribute
  ``dim``; ``encode(frames (N, 3, H, W) float in [0, 1]) -> cache``; ``attend(queries (N, dim),
  cache, return_attention=False) -> (N, dim)`` or ``((N, dim), attention (N, num_tokens))``.
- **head**: ``nn.Module`` with a nested ``Config``, built as ``cls(config, hidden_size=...,
  latent_channels=...)``; ``forward(hidden (N, hidden_size), prev_latent (N, C, h, w)) -> (N, C, h, w)``.
- **source** (a clip source, what ``[data] name`` names): a class with a nested ``Config``, built as
  ``cls(config, num_frames=..., frame_size=..., seed=...)``; ``len(source)`` clips, ``source[i]`` -> a
  ``fovea.core.data.Clip`` of uint8 frames ``(T, 3, S, S)``. (Not the batch loader, ``fovea.core.loader``,
  which fovea builds itself from the clip cache.)
- **objective**: what the model is trained to predict, with a nested ``Config``, built as
  ``cls(config, model_config=...)``; contract ``Objective``: ``prepare(batch)`` -> the tensors it reads,
  ``suffix(model, targets)`` -> embeddings the LLM reads after the frames (or None), ``loss(model,
  states, latents, targets)`` -> a ``Term`` (per-clip losses) for one pass.
- **tracker**: an experiment tracker with a nested ``Config``, built as ``cls(config)``; contract
  ``Tracker``: ``require(config)`` (raise ``FoveaError`` when its library is missing), ``start(session)``
  -> the record kept in the run directory (its run id), ``log_metrics(row)``, ``log_summary(values,
  step)``, ``log_images(images, step)``, ``finish(status)``.

Older names: ``fovea_register_loaders`` is the hook clip sources were registered with before the kind was
called ``source``; it still works (its parts register as sources), so plugins written for it need no change.
"""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT = "fovea"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[[str, type], None]


@hookspec
def fovea_register_encoders(register: Register) -> None:
    """Register vision encoders: ``register("name", EncoderClass)``.

    An encoder reads each frame once (``encode``) and then extracts one feature per frame for a
    query (``attend``); pass 1 and pass 2 of the model reuse the same per-frame cache.
    """


@hookspec
def fovea_register_heads(register: Register) -> None:
    """Register prediction heads: ``register("name", HeadClass)``.

    A head maps the LLM hidden state that precedes frame t, and the VAE latent of frame t-1, to the
    predicted VAE latent of frame t.
    """


@hookspec
def fovea_register_sources(register: Register) -> None:
    """Register clip sources: ``register("name", SourceClass)``.

    A source is a map-style collection of clips, each ``num_frames`` uint8 frames of
    ``frame_size`` pixels; fovea computes the VAE targets once and batches them.
    """


@hookspec
def fovea_register_loaders(register: Register) -> None:
    """The older name of ``fovea_register_sources``, kept for plugins written before the rename: the
    classes it registers are clip sources, exactly as if registered through ``fovea_register_sources``."""


@hookspec
def fovea_register_objectives(register: Register) -> None:
    """Register training objectives: ``register("name", ObjectiveClass)``.

    An objective turns one pass's LLM hidden states into a loss per clip; it is evaluated on both passes
    (``<name>_coarse`` from pass 1, ``<name>_fine`` from pass 2) and weighted by ``[objectives.<name>] weight``.
    """


@hookspec
def fovea_register_trackers(register: Register) -> None:
    """Register experiment trackers: ``register("name", TrackerClass)``.

    A tracker copies what a run records (its config, every ``metrics.jsonl`` row, ``summary.json``, the
    audit's verdict counts, ``fovea viz``'s figures) to an experiment-tracking service; ``[run] trackers``
    turns it on. The run directory keeps the tracker's run id, so a resumed run continues the same tracker run.
    """
