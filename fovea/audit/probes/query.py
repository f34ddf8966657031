"""Probes of the query mechanism, for any encoder that keeps the contract (``encode`` / ``attend`` / ``dim``):
whether its output depends on the query, whether the patch features do not, and what the two passes read.

SPEC.md "Query mechanism" and "Failure modes" (a query the encoder ignores: correlation ≈ 1).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from fovea.audit.probes.wiring import record_attend_outputs


def row_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of matching rows of a, b (N, D) -> (N,); identical rows give 1."""
    a = a.float() - a.float().mean(dim=-1, keepdim=True)
    b = b.float() - b.float().mean(dim=-1, keepdim=True)
    denominator = a.norm(dim=-1) * b.norm(dim=-1)
    same = (a - b).abs().amax(dim=-1) == 0
    return torch.where(same, torch.ones_like(denominator), (a * b).sum(-1) / denominator.clamp_min(1e-12))


@torch.no_grad()
def query_sensitivity(encoder, pixels: torch.Tensor, queries_a: torch.Tensor, queries_b: torch.Tensor) -> dict[str, float]:
    """How much the encoder's output depends on the query (SPEC failure mode: correlation ≈ 1).

    Pixels (N, 3, H, W) in [0, 1], encoded once, read with two query sets (N, D). ``correlation_*``: Pearson
    correlation of the two outputs per frame, over feature dimensions. ``query_vs_frame``: mean change
    of the output from switching the query, over the mean change from switching the frame (same query).
    """
    cache = encoder.encode(pixels)
    a, b = encoder.attend(queries_a, cache), encoder.attend(queries_b, cache)    # (N, D) each
    corr = row_correlation(a, b)                                                 # (N,)
    switch_query = (a - b).float().norm(dim=-1).mean()
    switch_frame = (a - a.roll(1, dims=0)).float().norm(dim=-1).mean() if len(a) > 1 else torch.tensor(0.0)
    return {"correlation_mean": corr.mean().item(), "correlation_min": corr.min().item(),
            "correlation_max": corr.max().item(),
            "query_vs_frame": (switch_query / switch_frame).item() if switch_frame > 0 else math.inf}


def _snapshot(value):
    """A deep copy of the tensors in a cache (dicts, lists, tuples of tensors)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: _snapshot(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_snapshot(item) for item in value)
    return value


def _largest_change(before, after) -> float:
    """Max |after - before| over a cache's tensors; inf when its structure changed."""
    if isinstance(before, torch.Tensor):
        if not isinstance(after, torch.Tensor) or after.shape != before.shape:
            return math.inf
        return (after.detach().float() - before.float()).abs().max().item() if before.numel() else 0.0
    if isinstance(before, dict):
        if not isinstance(after, dict) or after.keys() != before.keys():
            return math.inf
        return max((_largest_change(before[k], after[k]) for k in before), default=0.0)
    if isinstance(before, (list, tuple)):
        if not isinstance(after, (list, tuple)) or len(after) != len(before):
            return math.inf
        return max((_largest_change(x, y) for x, y in zip(before, after)), default=0.0)
    return 0.0


def reference_forward(encoder) -> Callable | None:
    """The encoder's slow reference with the query in the sequence, if it has one: the optional contract
    extension ``encoder.masked_forward(frames, queries)`` -> ``(features (N, D), image tokens (N, K, D))``."""
    method = getattr(encoder, "masked_forward", None)
    return method if callable(method) else None


@torch.no_grad()
def patch_invariance(encoder, pixels: torch.Tensor, queries_a: torch.Tensor, queries_b: torch.Tensor) -> dict:
    """Whether the per-frame encoding (the patch features) depends on the query (SPEC: it must not).

    Pixels (N, 3, H, W) in [0, 1]. ``cache_change``: largest change of any cached tensor after reads with
    both queries (a read must never write the cache that pass 2 reuses). ``reread_change``: query b's
    features before and after a read with query a (no hidden state between reads). With a reference
    forward (``reference_forward``): ``tokens_query_dependence``, the image tokens' largest difference
    between the two queries, and ``tokens_vs_cache`` / ``features_vs_cache`` against ``encode``/``attend``
    (the cache computes what the full forward computes). ``scale``: max |token| for relative tolerances.
    """
    cache = encoder.encode(pixels)
    before = _snapshot(cache)
    first_b = encoder.attend(queries_b, cache)
    features_a = encoder.attend(queries_a, cache)
    again_b = encoder.attend(queries_b, cache)
    tokens = cache.get("tokens") if isinstance(cache, dict) else None
    report: dict[str, Any] = {
        "cache_change": _largest_change(before, cache),
        "reread_change": (again_b - first_b).abs().max().item(),
        "features_scale": first_b.abs().max().item(),
        "scale": tokens.abs().max().item() if isinstance(tokens, torch.Tensor) else None,
        "reference": None, "tokens_query_dependence": None, "tokens_vs_cache": None, "features_vs_cache": None}
    reference = reference_forward(encoder)
    if reference is not None:
        ref_a, tokens_a = reference(pixels, queries_a)
        _, tokens_b = reference(pixels, queries_b)
        report.update(reference="masked_forward",
                      tokens_query_dependence=(tokens_a - tokens_b).abs().max().item(),
                      features_vs_cache=(ref_a - features_a).abs().max().item(),
                      scale=tokens_a.abs().max().item())
        if isinstance(tokens, torch.Tensor) and tokens.shape == tokens_a.shape:
            report["tokens_vs_cache"] = (tokens_a - before["tokens"]).abs().max().item()
    return report


def forward_with_attention(model, frames, latents, targets=None):
    """The forward with attention maps, or a plain one for an encoder without ``return_attention``."""
    try:
        return model(frames, latents, targets, return_attention=True)
    except TypeError:
        return model(frames, latents, targets)


@torch.no_grad()
def pass_reads(model, frames: torch.Tensor, latents: torch.Tensor, targets: dict | None = None) -> dict[str, Any]:
    """What the two passes read in one forward (with attention maps when the encoder returns them).

    ``attend_calls``; ``correlation``: the mean per-frame Pearson correlation of the pass-1 and pass-2
    features (None unless there were 2 calls: both passes reading the same features is a failure mode);
    ``static`` / ``dynamic``: the final-layer attention of every pass-1 / pass-2 read, (B, T, K'), or None.
    """
    with record_attend_outputs(model) as calls:
        out = forward_with_attention(model, frames, latents, targets)
    correlation = row_correlation(calls[0][1], calls[1][1]).mean().item() if len(calls) == 2 else None
    return {"attend_calls": len(calls), "correlation": correlation,
            "static": getattr(out, "attention_static", None), "dynamic": getattr(out, "attention_dynamic", None)}
