"""``deep``: the query as an extra token through every DINOv3 block, with a per-layer key/value cache.

SPEC.md "Query mechanism" §1 (deep masked injection). At every layer the query attends to CLS,
registers, patches and itself; no image token attends to the query; the query gets no RoPE. Because
the image tokens never see the query, their keys and values do not depend on it: ``encode`` runs the
ordinary encoder forward once and keeps each layer's keys/values, and ``attend`` then moves only the
query token through the layers against that cache (one token per layer instead of ~260). Pass 1 and
pass 2 of the model share one ``encode``; gradients flow through the cached keys/values into the
encoder.

``masked_forward`` is the slow reference that the cache replaces: the whole encoder re-run with the
query appended and the asymmetric mask. It is used by the benchmark and the cross-checks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from fovea.core.errors import ConfigError
from fovea.core.hookspecs import hookimpl
from fovea.plugins.encoders.dinov3 import DINOv3Options, load_dinov3, normalize


class DeepEncoder(nn.Module):
    """DINOv3 with the query injected as an extra token into every block (the SPEC's mechanism)."""

    class Config(DINOv3Options):
        """Options of the ``deep`` encoder."""

        inject_from_layer: int = Field(0, ge=0)
        """The query joins at this block and runs through every later block; 0 = all layers (SPEC)."""
        query_self_attention: bool = True
        """The query attends to itself as well as to the image tokens at every layer (SPEC: true)."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.backbone = load_dinov3(config)
        num_layers = self.backbone.config.num_hidden_layers
        if not 0 <= config.inject_from_layer < num_layers:
            raise ConfigError(
                f"model.encoder.inject_from_layer = {config.inject_from_layer}, but the DINOv3 encoder has "
                f"{num_layers} layers: pick a block index from 0 (all layers, the SPEC) to {num_layers - 1}.")
        self.dim = self.backbone.config.hidden_size
        self.num_prefix_tokens = 1 + self.backbone.config.num_register_tokens  # CLS + registers
        self.query_input_proj = nn.Linear(self.dim, self.dim, bias=False)  # no bias: SPEC failure mode
        self.query_output_proj = nn.Linear(self.dim, self.dim)

    @property
    def backbone_config(self):
        """The backbone's transformers config (the contract's optional extension the audit's architecture check reads)."""
        return self.backbone.config

    def masked_forward(self, frames: torch.Tensor, queries: torch.Tensor):
        """The slow reference the cache replaces (module-level ``masked_forward``): the contract's optional extension."""
        return masked_forward(self, frames, queries)

    @property
    def query_layers(self) -> nn.ModuleList:
        """The blocks the query runs through: ``inject_from_layer`` to the last."""
        return self.backbone.model.layer[self.config.inject_from_layer:]

    def encode(self, frames: torch.Tensor) -> dict[str, torch.Tensor | tuple[torch.Tensor, ...]]:
        """Frames (N, 3, H, W) in [0, 1] -> the per-frame cache the query passes read.

        ``"tokens"``: (N, K, D) final normed tokens ``[CLS, registers, patches]``, exactly
        ``DINOv3ViTModel``'s ``last_hidden_state`` (same meaning as ``posthoc``'s cache).
        ``"keys"`` / ``"values"``: one (N, heads, K, head_dim) tensor per query layer (from
        ``inject_from_layer`` on); keys after RoPE, as the attention used them.
        """
        backbone = self.backbone
        pixels = normalize(frames).to(backbone.embeddings.patch_embeddings.weight.dtype)
        x = backbone.embeddings(pixels)                                     # (N, K, D)
        cos, sin = backbone.rope_embeddings(pixels)                         # (P, head_dim) each
        keys, values = [], []
        for index, layer in enumerate(backbone.model.layer):
            attention = layer.attention
            # One forward computes the attention from the very q/k/v it caches: no second pass for K/V.
            q, k, v = self._qkv(layer, x)                                   # (N, heads, K, head_dim)
            # The RoPE tables are float32: keep q, k in the projections' dtype (what SDPA computes in
            # under autocast anyway), so the whole cache is in one dtype.
            q, k = (_rope_patches(t, cos, sin).to(v.dtype) for t in (q, k))
            # Contiguous per head (RoPE's cat already makes k so): the query passes multiply by the
            # cached keys/values as batched matrices, which would otherwise copy them on every pass.
            v = v.contiguous()
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=_dropout(attention),
                                                 scale=attention.scaling)   # (N, heads, K, head_dim)
            x = x + layer.drop_path(layer.layer_scale1(attention.o_proj(out.transpose(1, 2).flatten(2))))
            x = x + layer.drop_path(layer.layer_scale2(layer.mlp(layer.norm2(x))))  # (N, K, D)
            if index >= self.config.inject_from_layer:
                keys.append(k)
                values.append(v)
        return {"tokens": backbone.norm(x), "keys": tuple(keys), "values": tuple(values)}

    def attend(self, queries: torch.Tensor, cache: dict, return_attention: bool = False, all_layers: bool = False):
        """Queries (N, D), row i reading frame i -> features (N, D) [, attention].

        Only the query token moves through the layers, against the cached keys/values, batched over
        all N rows. ``return_attention=True`` also returns the final layer's attention, mean over heads,
        (N, num_tokens) over ``[CLS, registers..., patches...]`` plus, when ``query_self_attention`` is
        on, a last column for the query itself; each row sums to 1. ``all_layers=True`` returns every
        query layer's instead: (N, num_query_layers, num_tokens).
        """
        layers = self.query_layers
        keys, values = cache["keys"], cache["values"]
        if len(keys) != len(layers):
            raise ValueError(f"the cache holds {len(keys)} layers of keys, the query runs through {len(layers)}: "
                             f"encode and attend with the same encoder")
        x = self.query_input_proj(queries.to(cache["tokens"].dtype))[:, None]  # (N, 1, D)
        maps = []
        for index, layer in enumerate(layers):
            attention = layer.attention
            q, k, v = self._qkv(layer, x)                                   # (N, heads, 1, head_dim), no RoPE
            weights_wanted = return_attention and (all_layers or index == len(layers) - 1)
            out, weights = self._query_attention(attention, q, k, v, keys[index], values[index], weights_wanted)
            if weights is not None:
                maps.append(weights.mean(dim=1)[:, 0])                      # (N, K'): mean over heads
            # drop_path (0 in DINOv3's presets; identity outside training) draws its own samples here,
            # independently of the frame's draw in ``encode``.
            x = x + layer.drop_path(layer.layer_scale1(attention.o_proj(out.transpose(1, 2).flatten(2))))
            x = x + layer.drop_path(layer.layer_scale2(layer.mlp(layer.norm2(x))))  # (N, 1, D)
        features = self.query_output_proj(self.backbone.norm(x[:, 0]))     # (N, D)
        if not return_attention:
            return features
        return features, (torch.stack(maps, dim=1) if all_layers else maps[0])  # (N, L', K') or (N, K')

    def _query_attention(self, attention: nn.Module, q, k, v, keys, values, weights_wanted: bool):
        """The query (N, heads, 1, head_dim) over the cached keys/values (N, heads, K, head_dim) and,
        with ``query_self_attention``, its own k, v -> (output (N, heads, 1, head_dim), weights or None).

        SDPA takes one key tensor, so giving it the query's own key would copy the whole cache at every
        layer of every pass; instead the softmax is written out in two parts (cache, self), which reads
        the cache once, equals SDPA on the concatenation to float rounding, and is faster on CPU.
        SDPA is used as is when there is no self term and no weights are wanted.
        """
        p = _dropout(attention)
        if not (self.config.query_self_attention or weights_wanted):
            return F.scaled_dot_product_attention(q, keys, values, dropout_p=p, scale=attention.scaling), None
        scores = q @ keys.transpose(-1, -2)                                 # (N, heads, 1, K)
        if self.config.query_self_attention:
            own = (q * k).sum(dim=-1, keepdim=True).to(scores.dtype)        # (N, heads, 1, 1)
            scores = torch.cat([scores, own], dim=-1)                       # (N, heads, 1, K + 1)
        weights = (scores * attention.scaling).softmax(dim=-1)              # (N, heads, 1, K')
        dropped = F.dropout(weights, p, training=True) if p > 0 else weights
        out = dropped[..., :keys.shape[-2]] @ values                        # (N, heads, 1, head_dim)
        if self.config.query_self_attention:
            out = out + dropped[..., -1:] * v
        return out, (weights if weights_wanted else None)

    @staticmethod
    def _qkv(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens (N, T, D) -> per-head queries, keys, values (N, heads, T, head_dim), before RoPE."""
        attention = layer.attention
        h = layer.norm1(x)                                                  # (N, T, D)
        shape = (*x.shape[:2], attention.num_heads, attention.head_dim)
        return tuple(proj(h).view(shape).transpose(1, 2)
                     for proj in (attention.q_proj, attention.k_proj, attention.v_proj))


def _rope_patches(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on the patch tokens (the last P) of x (N, heads, K, head_dim); CLS and registers unrotated."""
    prefix, patches = x.split((x.shape[-2] - cos.shape[-2], cos.shape[-2]), dim=-2)
    half = patches.shape[-1] // 2
    rotated = torch.cat([-patches[..., half:], patches[..., :half]], dim=-1)
    return torch.cat([prefix, patches * cos + rotated * sin], dim=-2)


def _dropout(attention: nn.Module) -> float:
    """The attention-dropout probability in force (DINOv3's is 0; only ever active in training)."""
    return attention.dropout if attention.training else 0.0


def masked_forward(encoder: DeepEncoder, frames: torch.Tensor, queries: torch.Tensor):
    """The slow reference: the whole encoder re-run with the query token and the asymmetric mask.

    Frames (N, 3, H, W) in [0, 1], queries (N, D) -> (features (N, D), tokens (N, K, D)): the query's
    features as ``encoder.attend`` computes them, and the final normed image tokens (query removed).
    Every block runs on all K + 1 tokens through transformers' own ``DINOv3ViTLayer`` with an additive
    mask: no image token sees the query; the query sees every token (and itself when
    ``query_self_attention``). The query sits between the registers and the patches, where
    transformers' RoPE, applied to the last P tokens only, leaves it unrotated. What ``attend`` saves
    is exactly this: K + 1 tokens per layer instead of 1. Used by the benchmark and the tests.
    """
    backbone, config = encoder.backbone, encoder.config
    pixels = normalize(frames).to(backbone.embeddings.patch_embeddings.weight.dtype)
    x = backbone.embeddings(pixels)                                         # (N, K, D)
    position_embeddings = backbone.rope_embeddings(pixels)
    slot, num_tokens = encoder.num_prefix_tokens, x.shape[1] + 1
    image = torch.arange(num_tokens, device=x.device) != slot               # (K + 1,)
    blocked = image[:, None] & ~image[None, :]                              # image rows, query column
    if not config.query_self_attention:
        blocked[slot, slot] = True
    mask = torch.zeros(num_tokens, num_tokens, dtype=x.dtype, device=x.device).masked_fill(blocked, float("-inf"))
    for index, layer in enumerate(backbone.model.layer):
        if index == config.inject_from_layer:
            query = encoder.query_input_proj(queries.to(x.dtype))[:, None]   # (N, 1, D)
            x = torch.cat([x[:, :slot], query, x[:, slot:]], dim=1)          # (N, K + 1, D)
        joined = index >= config.inject_from_layer
        x = layer(x, attention_mask=mask[None, None] if joined else None, position_embeddings=position_embeddings)
    x = backbone.norm(x)                                                    # (N, K + 1, D)
    tokens = torch.cat([x[:, :slot], x[:, slot + 1:]], dim=1)               # (N, K, D)
    return encoder.query_output_proj(x[:, slot]), tokens


@hookimpl
def fovea_register_encoders(register):
    register("deep", DeepEncoder)
