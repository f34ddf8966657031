"""The two-pass foveated model (SPEC.md "Two-pass training").

Pass 1 (planning): every frame is read with the learned static query; the LLM turns the frame tokens
into one query per frame and a coarse prediction. Pass 2 (focused): frame t is read with the query
produced after frame t-1; the LLM makes the fine prediction. Both passes see only frames < t when
predicting frame t, and each frame is encoded once per step: only the cheap ``attend`` runs twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fovea.core.config import FoveaConfig


@dataclass
class FoveatedOutput:
    """What one forward pass returns. Shapes: B clips, T frames, D encoder dim, (C, h, w) latent."""

    loss: torch.Tensor           # loss_fine + lambda_coarse * loss_coarse
    loss_fine: torch.Tensor      # pass-2 MSE
    loss_coarse: torch.Tensor    # pass-1 MSE
    pred_fine: torch.Tensor      # (B, T, C, h, w): pass-2 prediction of frame t from frames < t
    pred_coarse: torch.Tensor    # (B, T, C, h, w): pass-1 prediction
    queries: torch.Tensor        # (B, T, D): pass-1 queries q_1..q_T
    attention_static: torch.Tensor | None = None   # (B, T, K) pass-1 attention over tokens
    attention_dynamic: torch.Tensor | None = None  # (B, T, K) pass-2 attention over tokens


class FoveatedVLM(nn.Module):
    """Encoder + LLM + prediction head, wired in two passes; parameter names follow SPEC.md."""

    def __init__(self, encoder: nn.Module, llm: nn.Module, head: nn.Module, *,
                 latent_shape: tuple[int, int, int], lambda_coarse: float = 1.0):
        super().__init__()
        self.encoder = encoder  # holds query_input_proj / query_output_proj
        self.llm = llm
        self.head = head
        self.lambda_coarse = lambda_coarse
        dim, hidden = encoder.dim, llm.config.hidden_size
        self.dino_to_llm = nn.Linear(dim, hidden)
        self.query_head = nn.Linear(hidden, dim)
        self.q_static = nn.Parameter(torch.randn(1, dim))   # std 1.0: a small query drowns in projection bias
        self.q_init = nn.Parameter(torch.randn(1, dim))
        self.z_vae_init = nn.Parameter(torch.zeros(1, *latent_shape))
        std = getattr(llm.config, "initializer_range", 0.02)
        self.coarse_token = nn.Parameter(torch.randn(1, 1, hidden) * std)
        self.fine_token = nn.Parameter(torch.randn(1, 1, hidden) * std)

    def _read_sequence(self, mode_token: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """LLM over ``[mode_token, z_1 .. z_T]`` -> hidden states (B, T + 1, H), causal."""
        tokens = self.dino_to_llm(features)                                    # (B, T, H)
        inputs = torch.cat([mode_token.expand(len(tokens), -1, -1).to(tokens.dtype), tokens], dim=1)
        return self.llm(inputs_embeds=inputs).last_hidden_state                 # (B, T + 1, H)

    def _predict(self, hidden: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """Hidden states at ``[mode, z_1 .. z_{T-1}]`` (B, T, H), latents of frames t-1 -> latents of t."""
        B, T = hidden.shape[:2]
        pred = self.head(hidden.flatten(0, 1), prev.flatten(0, 1).to(hidden.dtype))  # (B*T, C, h, w)
        return pred.view(B, T, *pred.shape[1:])

    def forward(self, frames: torch.Tensor, latents: torch.Tensor, return_attention: bool = False) -> FoveatedOutput:
        """Frames uint8 (B, T, 3, S, S) and their VAE latents (B, T, C, h, w) -> losses and predictions."""
        B, T = frames.shape[:2]
        pixels = frames.flatten(0, 1).float().div(255.0)                       # (B*T, 3, S, S)
        cache = self.encoder.encode(pixels)                                     # once per frame per step

        def attend(queries: torch.Tensor):                                      # (B*T, D) -> (B, T, D)
            out = self.encoder.attend(queries, cache, return_attention=return_attention)
            features, attention = out if return_attention else (out, None)
            return features.view(B, T, -1), None if attention is None else attention.view(B, T, -1)

        # Pass 1: the same static query reads every frame.
        z_static, att_static = attend(self.q_static.expand(B * T, -1))         # (B, T, D)
        h1 = self._read_sequence(self.coarse_token, z_static)                  # (B, T + 1, H)
        queries = self.query_head(h1[:, 1:])                                    # (B, T, D): q_t after frame t

        # Pass 2: frame t is read with the query produced after frame t-1.
        shifted = torch.cat([self.q_init.expand(B, 1, -1).to(queries.dtype), queries[:, :-1]], dim=1)
        z_dynamic, att_dynamic = attend(shifted.flatten(0, 1))                 # (B, T, D)
        h2 = self._read_sequence(self.fine_token, z_dynamic)                   # (B, T + 1, H)

        # Frame t is predicted from the state before z_t and the latent of frame t-1.
        prev = torch.cat([self.z_vae_init.expand(B, 1, -1, -1, -1), latents[:, :-1]], dim=1)  # (B, T, C, h, w)
        pred_coarse = self._predict(h1[:, :-1], prev)                           # (B, T, C, h, w)
        pred_fine = self._predict(h2[:, :-1], prev)
        loss_coarse = F.mse_loss(pred_coarse.float(), latents.float())
        loss_fine = F.mse_loss(pred_fine.float(), latents.float())
        return FoveatedOutput(
            loss=loss_fine + self.lambda_coarse * loss_coarse, loss_fine=loss_fine, loss_coarse=loss_coarse,
            pred_fine=pred_fine, pred_coarse=pred_coarse, queries=queries,
            attention_static=att_static, attention_dynamic=att_dynamic)

    def autoregressive(self, frames: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """What a deployed model does: one pass, frame t read with the query this pass made after frame t-1.

        The LLM runs over ``[fine_token, z_1 .. z_{T-1}]`` one frame at a time on its KV cache (frame T
        informs no prediction, so it is not read). Frames uint8 (B, T, 3, S, S), latents (B, T, C, h, w)
        -> predictions (B, T, C, h, w), frame t from frames < t. With queries that do not depend on what
        was read, this equals ``forward``'s ``pred_fine``.
        """
        import inspect

        from transformers import DynamicCache

        B, T = frames.shape[:2]
        # transformers 5 names the KV cache argument `cache`; 4.x `past_key_values`
        name = "cache" if "cache" in inspect.signature(self.llm.forward).parameters else "past_key_values"
        past = {name: DynamicCache()}

        def step(inputs: torch.Tensor) -> torch.Tensor:                       # (B, 1, H) -> state (B, H)
            return self.llm(inputs_embeds=inputs, use_cache=True, **past).last_hidden_state[:, -1]

        hidden = step(self.fine_token.expand(B, -1, -1))                        # (B, H): state before z_1
        query = self.q_init.expand(B, -1)                                       # (B, D): reads frame 1
        states = [hidden]
        for t in range(T - 1):                                                  # causal: frame by frame
            cache = self.encoder.encode(frames[:, t].float().div(255.0))        # frame t of every clip, once
            z = self.encoder.attend(query.to(hidden.dtype), cache)              # (B, D)
            tokens = self.dino_to_llm(z)[:, None]                               # (B, 1, H)
            hidden = step(tokens)                                               # state after frame t
            query = self.query_head(hidden)                                     # reads frame t + 1
            states.append(hidden)
        prev = torch.cat([self.z_vae_init.expand(B, 1, -1, -1, -1), latents[:, :-1]], dim=1)  # (B, T, C, h, w)
        return self._predict(torch.stack(states, dim=1), prev)                 # (B, T, C, h, w)


def build_encoder(config: FoveaConfig) -> nn.Module:
    from fovea.core.plugins import get_part

    table = config.model.encoder
    return get_part("encoder", table.name).cls(table.options)


def build_head(config: FoveaConfig, hidden_size: int, latent_channels: int) -> nn.Module:
    from fovea.core.plugins import get_part

    table = config.model.head
    return get_part("head", table.name).cls(table.options, hidden_size=hidden_size,
                                            latent_channels=latent_channels)


def build_model(config: FoveaConfig) -> FoveatedVLM:
    """The two-pass model the config describes; random parts are initialised from ``run.seed``."""
    from fovea.core.llm import build_llm
    from fovea.core.vae import latent_shape

    shape = latent_shape(config.model.vae, config.data.frame_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.run.seed)
        encoder = build_encoder(config)
        llm = build_llm(config.model.llm)
        head = build_head(config, llm.config.hidden_size, shape[0])
        return FoveatedVLM(encoder, llm, head, latent_shape=shape, lambda_coarse=config.model.lambda_coarse)
