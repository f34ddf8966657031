"""Probes: measure what the model does, instead of reading what the code says.

Each probe runs the real model on a real batch in eval mode and returns numbers; callers (tests,
``fovea audit``) decide what is good enough. SPEC.md "Two-pass training" and "Failure modes".
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@torch.no_grad()
def target_leak(model, frames: torch.Tensor, latents: torch.Tensor) -> dict[str, float]:
    """Largest change of the prediction for frame t when frames >= t (and their latents) change.

    Copy t of the batch has frames t.. and latents t.. replaced by noise; all T copies run in one
    forward. In copy t the predictions for frames 0..t must not move: 0.0 means no leak.
    """
    B, T = frames.shape[:2]
    step = torch.arange(T, device=frames.device)
    changed = (step[None, :] >= step[:, None])                                   # (T copies, T frames)
    noise_frames = torch.randint_like(frames, 0, 256)
    noise_latents = torch.randn_like(latents)
    mask_f = changed[:, None, :, None, None, None]                               # (T, 1, T, 1, 1, 1)
    probed_frames = torch.where(mask_f, noise_frames[None], frames[None]).flatten(0, 1)   # (T*B, T, 3, S, S)
    probed_latents = torch.where(mask_f, noise_latents[None], latents[None]).flatten(0, 1)
    base = model(frames, latents)
    probed = model(probed_frames, probed_latents)
    must_hold = ~changed | torch.eye(T, dtype=torch.bool, device=frames.device)  # frames < t, and t itself
    report = {}
    for name in ("pred_coarse", "pred_fine"):
        diff = (getattr(probed, name).view(T, B, T, -1) - getattr(base, name)[None].view(1, B, T, -1)).abs()
        report[name] = diff.amax(dim=(1, 3))[must_hold].max().item()            # over copies and frames <= t
    return report


@contextlib.contextmanager
def record_attend_calls(model) -> Iterator[list[torch.Tensor]]:
    """Record the queries of every ``model.encoder.attend`` call (pass 1 first, then pass 2)."""
    calls: list[torch.Tensor] = []
    original = model.encoder.attend

    def recording(queries, cache, *args, **kwargs):
        calls.append(queries.detach().clone())
        return original(queries, cache, *args, **kwargs)

    model.encoder.attend = recording
    try:
        yield calls
    finally:
        del model.encoder.attend   # the instance attribute shadowed the method


@torch.no_grad()
def query_wiring(model, frames: torch.Tensor, latents: torch.Tensor) -> dict[str, float]:
    """How far the queries the encoder received are from the spec's wiring (0.0 = exact).

    ``pass1_static``: pass 1 reads every frame with ``q_static``. ``pass2_shift``: pass 2 reads
    frame t with the pass-1 query produced after frame t-1 (``q_init`` for the first frame).
    The pass-1 queries are taken from ``query_head``'s output by a forward hook.
    """
    B, T = frames.shape[:2]
    produced: list[torch.Tensor] = []
    handle = model.query_head.register_forward_hook(lambda mod, args, out: produced.append(out.detach()))
    try:
        with record_attend_calls(model) as calls:
            model(frames, latents)
    finally:
        handle.remove()
    if len(calls) != 2 or len(produced) != 1:
        return {"attend_calls": float(len(calls)), "pass1_static": float("inf"), "pass2_shift": float("inf")}
    pass1, pass2 = (c.view(B, T, -1) for c in calls)                            # (B, T, D) each
    q = produced[0]                                                              # (B, T, D): q_1..q_T
    expected = torch.cat([model.q_init.expand(B, 1, -1), q[:, :-1]], dim=1)     # (B, T, D)
    return {"attend_calls": 2.0,
            "pass1_static": (pass1 - model.q_static).abs().max().item(),
            "pass2_shift": (pass2 - expected).abs().max().item()}
