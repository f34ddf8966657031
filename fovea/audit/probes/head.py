"""Probes of the prediction head: what it is called with in the real forward, what its output depends on,
and whether it predicts the full latent (SPEC.md "Prediction head": FiLM, not a residual)."""

from __future__ import annotations

import copy

import torch


@torch.no_grad()
def head_inputs(model, frames: torch.Tensor, latents: torch.Tensor, targets: dict | None = None) -> list[tuple]:
    """The positional arguments of every call of ``model.head`` in one forward (a forward hook; pass 2's last)."""
    captured: list[tuple] = []
    handle = model.head.register_forward_hook(lambda module, args, output: captured.append(args))
    try:
        model(frames, latents, targets)
    finally:
        handle.remove()
    return captured


@torch.no_grad()
def head_probe(head, hidden: torch.Tensor, prev: torch.Tensor) -> dict[str, float]:
    """What the prediction head's output depends on, and whether it predicts the full latent.

    Hidden (N, H) and previous latents (N, C, h, w) as the model feeds them. ``hidden_sensitivity`` /
    ``prev_sensitivity``: mean |Δ output| when the hidden states (or previous latents) are swapped
    between rows, over mean |output| (FiLM conditioning: the LLM must move the prediction).
    ``zeroed_vs_prev``: with every head weight set to zero, ||output − prev|| / ||prev||: 0 means the
    head adds to the previous latent (a residual head); a full-latent head gives about 1.
    """
    base = head(hidden, prev)
    scale = base.abs().mean().clamp_min(1e-12)
    shift = 1 if len(hidden) > 1 else 0
    other_hidden = hidden.roll(shift, 0) if shift else torch.randn_like(hidden)
    other_prev = prev.roll(shift, 0) if shift else torch.randn_like(prev)
    zeroed = copy.deepcopy(head)
    for parameter in zeroed.parameters():
        parameter.zero_()
    out_zero = zeroed(hidden, prev)
    prev_norm = prev.float().norm().clamp_min(1e-12)
    return {"output_shape_matches": float(base.shape == prev.shape),
            "hidden_sensitivity": ((head(other_hidden, prev) - base).abs().mean() / scale).item(),
            "prev_sensitivity": ((head(hidden, other_prev) - base).abs().mean() / scale).item(),
            "zeroed_vs_prev": ((out_zero.float() - prev.float()).norm() / prev_norm).item()}
