"""Where the queries look: entropy and peak of an attention distribution, and its map over the patch grid.

An attention row (``attention_static``/``attention_dynamic`` of ``FoveatedVLM.forward(...,
return_attention=True)``, (B, T, K)) is a distribution over the encoder's tokens: the
``encoder.num_prefix_tokens`` CLS and register tokens first, then the P patches in row-major order on a
sqrt(P) x sqrt(P) grid, then (``deep`` with ``query_self_attention``) the query itself. Entropy is
log K for a uniform row (the query looks everywhere) and 0 for a one-hot row (it looks at one token).
Training logs these statistics (``metrics.jsonl``), ``fovea viz`` plots them.
"""

from __future__ import annotations

import math

import torch

STAT_KEYS = ("entropy_static", "entropy_dynamic", "peak_static", "peak_dynamic")


def attention_entropy(attention: torch.Tensor) -> torch.Tensor:
    """Rows summing to 1 (..., K) -> their entropy in nats (...), with 0 log 0 = 0; in float32."""
    return torch.special.entr(attention.float()).sum(dim=-1)


def attention_peak(attention: torch.Tensor) -> torch.Tensor:
    """Rows summing to 1 (..., K) -> their largest weight (...), in float32."""
    return attention.float().amax(dim=-1)


def attention_stats(static: torch.Tensor, dynamic: torch.Tensor) -> torch.Tensor:
    """Attention of both passes (B, T, K) -> ``STAT_KEYS`` as one tensor (4,), each a mean over B and T."""
    return torch.stack([attention_entropy(static).mean(), attention_entropy(dynamic).mean(),
                        attention_peak(static).mean(), attention_peak(dynamic).mean()])


def patch_maps(attention: torch.Tensor, num_prefix_tokens: int, grid: int) -> torch.Tensor:
    """Attention (..., K) -> its weights on the patches as images (..., grid, grid), row-major like the patches.

    The CLS/register columns before the patches and a self column after them are left out, so a map
    sums to the share of attention that went to the image itself.
    """
    patches = attention[..., num_prefix_tokens: num_prefix_tokens + grid * grid].float()   # (..., P)
    return patches.unflatten(-1, (grid, grid))                                            # (..., g, g)


def max_entropy(num_tokens: int) -> float:
    """The entropy of the uniform distribution over ``num_tokens`` tokens, log K."""
    return math.log(num_tokens)


def token_layout(num_tokens: int, num_prefix_tokens: int) -> tuple[int, int] | None:
    """(patches, self columns) of attention rows over ``num_tokens`` columns: ``num_prefix_tokens`` CLS/register
    columns, then a square grid of patches, then at most one column of the query itself; None if no square fits."""
    for self_columns in (1, 0):
        patches = num_tokens - num_prefix_tokens - self_columns
        if patches > 0 and math.isqrt(patches) ** 2 == patches:
            return patches, self_columns
    return None


def patch_attention_stats(attention: torch.Tensor, num_prefix_tokens: int, num_patches: int) -> dict[str, float]:
    """Attention rows (..., K) summarised over the image: entropy and peak of the weights on the patches
    renormalised to sum to 1 (a query looking at a register is not "focused" on the image), against the
    uniform distribution over the patches (log P, 1 / P), and the mean mass on the patches, on the CLS and
    register tokens (the attention sinks), and on the query itself. Means over rows, float32."""
    weights = attention.float().flatten(0, -2)                                            # (rows, K)
    patches = weights[:, num_prefix_tokens:num_prefix_tokens + num_patches]               # (rows, P)
    mass = patches.sum(dim=-1)                                                            # (rows,)
    image = patches / mass.clamp_min(1e-30)[:, None]                                      # renormalised
    log_p = math.log(num_patches)
    entropy = attention_entropy(image).mean().item()
    return {"entropy": entropy, "log_n": log_p, "ratio": entropy / log_p if log_p else 0.0,
            "peak": attention_peak(image).mean().item(), "uniform_peak": 1.0 / num_patches,
            "num_tokens": num_patches, "mass_patches": mass.mean().item(),
            "mass_prefix": weights[:, :num_prefix_tokens].sum(-1).mean().item(),
            "mass_self": weights[:, num_prefix_tokens + num_patches:].sum(-1).mean().item()}
