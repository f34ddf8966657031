"""Probes: measure what the model does, instead of reading what the code says.

Each probe runs the real model (its own ``forward``, watched through ``fovea.core.instrument.wrap_encoder`` or
forward hooks, never a copy of it) on a real batch in eval mode and returns numbers; callers (the checks of
``fovea.audit.checks``, tests) decide what is good enough. SPEC.md "Two-pass training" and "Failure modes".
Every probe takes the objectives' ``targets`` (``FoveatedVLM.prepare``) for models that read text.

- ``wiring``: ``target_leak``, ``prediction_scale``, ``query_wiring``, ``pass1_perturbation``, ``encode_calls``,
  ``pass_independence`` (every objective), ``caption_causality``; ``record_attend_calls`` / ``record_attend_outputs``.
- ``query`` (any encoder that keeps the contract ``encode`` / ``attend`` / ``dim``): ``query_sensitivity``,
  ``patch_invariance``, ``pass_reads`` (what both passes read, and their attention), ``row_correlation``.
- ``head``: ``head_inputs`` (the head's arguments in a forward), ``head_probe``.
- ``learning``: ``gradient_reach``, ``loss_composition``, ``init_loss``, ``overfit_one_batch``, ``blank_frames``,
  ``clip_isolation``.
"""

from __future__ import annotations

from fovea.audit.probes.head import head_inputs, head_probe
from fovea.audit.probes.learning import (MODES, blank_frames, clip_isolation, gradient_reach, init_loss,
                                         loss_composition, overfit_one_batch, rescore, trivial_losses)
from fovea.audit.probes.query import (forward_with_attention, pass_reads, patch_invariance, query_sensitivity,
                                      reference_forward, row_correlation)
from fovea.audit.probes.wiring import (caption_causality, encode_calls, pass1_perturbation, pass_independence,
                                       prediction_scale, query_wiring, record_attend_calls, record_attend_outputs,
                                       repeat_targets, target_leak)

__all__ = ["MODES", "blank_frames", "caption_causality", "clip_isolation", "encode_calls", "forward_with_attention",
           "gradient_reach", "head_inputs", "head_probe", "init_loss", "loss_composition", "overfit_one_batch",
           "pass1_perturbation", "pass_independence", "pass_reads", "patch_invariance", "prediction_scale",
           "query_sensitivity", "query_wiring", "record_attend_calls", "record_attend_outputs", "reference_forward",
           "repeat_targets", "rescore", "row_correlation", "target_leak", "trivial_losses"]
