"""``deep``: the query as an extra token through every ViT block, with a per-layer key/value cache.

SPEC.md "Query mechanism" §1 (deep masked injection), on either backbone (``backbone.py``: DINOv3, the
spec's, or DINOv2). At every layer the query attends to CLS, registers, patches and itself; no image
token attends to the query; the query gets no position information (no RoPE on DINOv3; on DINOv2 it
joins after the embeddings, which add the learned position embeddings). Because the image tokens never
see the query, their keys and values do not depend on it: ``encode`` runs the ordinary encoder forward
once and keeps each layer's keys/values, and ``attend`` then moves only the query token through the
layers against that cache (one token per layer instead of ~260). Pass 1 and pass 2 of the model share
one ``encode``; gradients flow through the cached keys/values into the encoder.

``masked_forward`` is the slow reference that the cache replaces: the whole encoder re-run with the
query appended and the asymmetric mask. It is used by the benchmark and the cross-checks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.checkpoint import checkpoint

from fovea.core.errors import ConfigError
from fovea.core.hookspecs import hookimpl
from fovea.plugins.encoders.backbone import BackboneEncoder, BackboneOptions


class DeepEncoder(BackboneEncoder):
    """A DINOv3 (or DINOv2) ViT with the query injected as an extra token into every block (the SPEC's mechanism)."""

    class Config(BackboneOptions):
        """Options of the ``deep`` encoder."""

        inject_from_layer: int = Field(0, ge=0)
        """The query joins at this block and runs through every later block; 0 = all layers (SPEC)."""
        query_self_attention: bool = True
        """The query attends to itself as well as to the image tokens at every layer (SPEC: true)."""

    def __init__(self, config: Config):
        super().__init__(config)
        num_layers = self.backbone.config.num_hidden_layers
        if not 0 <= config.inject_from_layer < num_layers:
            raise ConfigError(
                f"model.encoder.inject_from_layer = {config.inject_from_layer}, but the {self.vit.title} encoder has "
                f"{num_layers} layers: pick a block index from 0 (all layers, the SPEC) to {num_layers - 1}.")
        self.query_input_proj = nn.Linear(self.dim, self.dim, bias=False)  # no bias: SPEC failure mode
        self.query_output_proj = nn.Linear(self.dim, self.dim)
        self._compiled: dict = {}   # "frame"/"query" -> the compiled block step (functions: names unchanged)

    def compile_blocks(self, **options) -> None:
        """``torch.compile`` the per-block step of the frame pass and of the cached query pass
        (``[training] compile``); every block shares the compiled graph (the block is an input)."""
        self._compiled = {"frame": torch.compile(self.frame_block, **options),
                          "query": torch.compile(self.query_block, **options)}

    def _checkpointing(self) -> bool:
        return self.config.activation_checkpointing and self.training and torch.is_grad_enabled()

    def masked_forward(self, frames: torch.Tensor, queries: torch.Tensor):
        """The slow reference the cache replaces (module-level ``masked_forward``): the contract's optional extension."""
        return masked_forward(self, frames, queries)

    @property
    def query_layers(self) -> nn.ModuleList:
        """The blocks the query runs through: ``inject_from_layer`` to the last."""
        return self.vit.layers[self.config.inject_from_layer:]

    def encode(self, frames: torch.Tensor) -> dict[str, torch.Tensor | tuple[torch.Tensor, ...]]:
        """Frames (N, 3, H, W) in [0, 1] -> the per-frame cache the query passes read.

        ``"tokens"``: (N, K, D) final normed tokens ``[CLS, registers, patches]``, exactly the
        backbone's ``last_hidden_state`` (same meaning as ``posthoc``'s cache).
        ``"keys"`` / ``"values"``: one (N, heads, K, head_dim) tensor per query layer (from
        ``inject_from_layer`` on); keys after RoPE (DINOv3), as the attention used them.
        """
        vit = self.vit
        x, position = vit.embed(vit.pixels(frames))                         # (N, K, D), RoPE tables or None
        keys, values = [], []
        block, checkpointing = self._compiled.get("frame", self.frame_block), self._checkpointing()
        for index, layer in enumerate(vit.layers):
            if checkpointing:   # keep x for backward, run the block again there (keys/values are kept for the reads)
                x, k, v = checkpoint(block, layer, x, position, use_reentrant=False)
            else:
                x, k, v = block(layer, x, position)
            if index >= self.config.inject_from_layer:
                keys.append(k)
                values.append(v)
        return {"tokens": vit.final_norm(x), "keys": tuple(keys), "values": tuple(values)}

    def frame_block(self, layer: nn.Module, x: torch.Tensor, position):
        """One ViT block over the frames' tokens x (N, K, D) -> (x, its keys and values (N, heads, K, head_dim))."""
        vit, attention = self.vit, layer.attention
        # One forward computes the attention from the very q/k/v it caches: no second pass for K/V.
        q, k, v = vit.qkv(layer, x)                                         # (N, heads, K, head_dim)
        # DINOv3's RoPE tables are float32: keep q, k in the projections' dtype (what SDPA computes
        # in under autocast anyway), so the whole cache is in one dtype.
        q, k = (vit.rotate(t, position).to(v.dtype) for t in (q, k))
        # Contiguous per head (a no-op after RoPE's cat): the query passes multiply by the cached
        # keys/values as batched matrices, which would otherwise copy them on every pass.
        k, v = k.contiguous(), v.contiguous()
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=vit.dropout(attention),
                                             scale=attention.scaling)       # (N, heads, K, head_dim)
        x = x + layer.drop_path(layer.layer_scale1(attention.o_proj(out.transpose(1, 2).flatten(2))))
        x = x + layer.drop_path(layer.layer_scale2(layer.mlp(layer.norm2(x))))  # (N, K, D)
        return x, k, v

    def attend(self, queries: torch.Tensor, cache: dict, return_attention: bool = False, all_layers: bool = False):
        """Queries (N, D), row i reading frame i -> features (N, D) [, attention].

        Only the query token moves through the layers, against the cached keys/values, batched over
        all N rows. ``return_attention=True`` also returns the final layer's attention, mean over heads,
        (N, num_tokens) over ``[CLS, registers..., patches...]`` plus, when ``query_self_attention`` is
        on, a last column for the query itself; each row sums to 1. ``all_layers=True`` returns every
        query layer's instead: (N, num_query_layers, num_tokens).
        """
        vit, layers = self.vit, self.query_layers
        keys, values = cache["keys"], cache["values"]
        if len(keys) != len(layers):
            raise ValueError(f"the cache holds {len(keys)} layers of keys, the query runs through {len(layers)}: "
                             f"encode and attend with the same encoder")
        x = self.query_input_proj(queries.to(cache["tokens"].dtype))[:, None]  # (N, 1, D)
        maps, block = [], self._compiled.get("query", self.query_block)
        for index, layer in enumerate(layers):
            weights_wanted = return_attention and (all_layers or index == len(layers) - 1)
            x, weights = block(layer, x, keys[index], values[index], weights_wanted)
            if weights is not None:
                maps.append(weights.mean(dim=1)[:, 0])                      # (N, K'): mean over heads
        features = self.query_output_proj(vit.final_norm(x[:, 0]))         # (N, D)
        if not return_attention:
            return features
        return features, (torch.stack(maps, dim=1) if all_layers else maps[0])  # (N, L', K') or (N, K')

    def query_block(self, layer: nn.Module, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                    weights_wanted: bool):
        """The query token x (N, 1, D) through one block against the block's cached keys/values ->
        (x, the attention weights (N, heads, 1, K') or None). Not checkpointed: one token per frame."""
        vit, attention = self.vit, layer.attention
        q, k, v = vit.qkv(layer, x)                                         # (N, heads, 1, head_dim), no RoPE
        out, weights = self._query_attention(attention, q, k, v, keys, values, weights_wanted,
                                             vit.dropout(attention))
        # drop_path (0 in both backbones' presets; identity outside training) draws its own samples here,
        # independently of the frame's draw in ``encode``.
        x = x + layer.drop_path(layer.layer_scale1(attention.o_proj(out.transpose(1, 2).flatten(2))))
        x = x + layer.drop_path(layer.layer_scale2(layer.mlp(layer.norm2(x))))  # (N, 1, D)
        return x, weights

    def _query_attention(self, attention: nn.Module, q, k, v, keys, values, weights_wanted: bool, p: float):
        """The query (N, heads, 1, head_dim) over the cached keys/values (N, heads, K, head_dim) and,
        with ``query_self_attention``, its own k, v -> (output (N, heads, 1, head_dim), weights or None).

        SDPA takes one key tensor, so giving it the query's own key would copy the whole cache at every
        layer of every pass; instead the softmax is written out in two parts (cache, self), which reads
        the cache once, equals SDPA on the concatenation to float rounding, and is faster on CPU.
        SDPA is used as is when there is no self term and no weights are wanted. ``p``: attention dropout.
        """
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


def masked_forward(encoder: DeepEncoder, frames: torch.Tensor, queries: torch.Tensor):
    """The slow reference: the whole encoder re-run with the query token and the asymmetric mask.

    Frames (N, 3, H, W) in [0, 1], queries (N, D) -> (features (N, D), tokens (N, K, D)): the query's
    features as ``encoder.attend`` computes them, and the final normed image tokens (query removed).
    Every block runs on all K + 1 tokens through transformers' own layer (``DINOv3ViTLayer``,
    ``Dinov2Layer``) with an additive mask: no image token sees the query; the query sees every token
    (and itself when ``query_self_attention``). The query sits between the registers and the patches:
    after the embeddings (so DINOv2's learned position embeddings never reach it) and outside the last
    P tokens, the only ones DINOv3's RoPE rotates. What ``attend`` saves is exactly this: K + 1 tokens
    per layer instead of 1. Used by the benchmark and the tests.
    """
    vit, config = encoder.vit, encoder.config
    x, position = vit.embed(vit.pixels(frames))                             # (N, K, D), RoPE tables or None
    slot, num_tokens = encoder.num_prefix_tokens, x.shape[1] + 1
    image = torch.arange(num_tokens, device=x.device) != slot               # (K + 1,)
    blocked = image[:, None] & ~image[None, :]                              # image rows, query column
    if not config.query_self_attention:
        blocked[slot, slot] = True
    mask = torch.zeros(num_tokens, num_tokens, dtype=x.dtype, device=x.device).masked_fill(blocked, float("-inf"))
    for index, layer in enumerate(vit.layers):
        if index == config.inject_from_layer:
            query = encoder.query_input_proj(queries.to(x.dtype))[:, None]   # (N, 1, D)
            x = torch.cat([x[:, :slot], query, x[:, slot:]], dim=1)          # (N, K + 1, D)
        joined = index >= config.inject_from_layer
        x = vit.block(layer, x, mask[None, None] if joined else None, position)
    x = vit.final_norm(x)                                                   # (N, K + 1, D)
    tokens = torch.cat([x[:, :slot], x[:, slot + 1:]], dim=1)               # (N, K, D)
    return encoder.query_output_proj(x[:, slot]), tokens


@hookimpl
def fovea_register_encoders(register):
    register("deep", DeepEncoder)
