"""The two-pass foveated model (SPEC.md "Two-pass training").

Pass 1 (planning): every frame is read with the learned static query; the LLM turns the frame tokens
into one query per frame and a coarse prediction. Pass 2 (focused): frame t is read with the query
produced after frame t-1; the LLM makes the fine prediction. Both passes see only frames < t when
predicting frame t, and each frame is encoded once per step: only the cheap ``attend`` runs twice.
What each pass is scored on is up to the objectives (``fovea.core.objectives``): the next frame's
latent (SPEC phase 1, the default), a caption read after the frames, or a plugin's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fovea.core.config import FoveaConfig
from fovea.core.errors import ConfigError, FoveaError, PluginError
from fovea.core.contracts import Objective, PassStates, Term
from fovea.core.text import TextCodec


@dataclass
class FoveatedOutput:
    """What one forward pass returns. Shapes: B clips, T frames, D encoder dim, (C, h, w) latent."""

    loss: torch.Tensor           # loss_fine + lambda_coarse * loss_coarse
    loss_fine: torch.Tensor      # pass 2: sum over objectives of weight x mean loss
    loss_coarse: torch.Tensor    # pass 1: the same
    terms: dict[str, dict[str, Term]]   # objective -> {"coarse": pass-1 Term, "fine": pass-2 Term}
    queries: torch.Tensor | None  # (B, T, D): pass-1 queries q_1..q_T (None for a query-free encoder: one pass)
    attention_static: torch.Tensor | None = None   # (B, T, K) pass-1 attention over tokens
    attention_dynamic: torch.Tensor | None = None  # (B, T, K) pass-2 attention over tokens

    def _pred(self, mode: str) -> torch.Tensor | None:
        term = self.terms.get("next_latent", {}).get(mode)
        return None if term is None else term.detail["pred"]

    @property
    def pred_fine(self) -> torch.Tensor | None:
        """(B, T, C, h, w): pass-2 prediction of frame t from frames < t (None without ``next_latent``)."""
        return self._pred("fine")

    @property
    def pred_coarse(self) -> torch.Tensor | None:
        """(B, T, C, h, w): pass-1 prediction (None without ``next_latent``)."""
        return self._pred("coarse")


class FoveatedVLM(nn.Module):
    """Encoder + LLM + prediction head, wired in two passes; parameter names follow SPEC.md.

    ``objectives`` ({name: (objective, weight)}, default ``next_latent`` alone) score both passes;
    ``codec`` tokenizes text (the prompt ``prompt`` and captions) when an objective or the prompt uses it.
    """

    def __init__(self, encoder: nn.Module, llm: nn.Module, head: nn.Module, *,
                 latent_shape: tuple[int, int, int], lambda_coarse: float = 1.0,
                 objectives: dict[str, tuple[Objective, float]] | None = None, codec: TextCodec | None = None,
                 prompt: str = ""):
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
        if objectives is None:   # SPEC phase 1
            from fovea.core.plugins import get_part

            cls = get_part("objective", "next_latent").cls
            objectives = {"next_latent": (cls(cls.Config()), 1.0)}
        self.objectives = objectives
        self.codec = codec
        if prompt and codec is None:
            raise FoveaError("a prompt needs a tokenizer (codec)")
        # not persistent: the prompt is in the run's config, and checkpoints keep the same names with or without it
        self.register_buffer("prompt_ids", codec.prompt_ids(prompt) if prompt else torch.zeros(0, dtype=torch.long),
                             persistent=False)                                  # (P,)

    # ------------------------------------------------------------------ text

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (...) -> the LLM's input embeddings (..., H)."""
        return self.llm.get_input_embeddings()(ids)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., H) -> next-token logits (..., V) through the tied LM head (the embedding matrix)."""
        return F.linear(hidden, self.llm.get_input_embeddings().weight.to(hidden.dtype))

    def prepare(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The tensors the objectives read from a loader batch (CPU), e.g. caption token ids."""
        targets: dict[str, torch.Tensor] = {}
        for objective, _ in self.objectives.values():
            targets.update(objective.prepare(batch, self.codec))
        return targets

    def _suffix(self, targets: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """(B, L, H): what the objectives append after the frames (at most one of them appends)."""
        parts = [s for s in (o.suffix(self, targets) for o, _ in self.objectives.values()) if s is not None]
        if len(parts) > 1:
            raise FoveaError(f"{len(parts)} objectives append tokens after the frames; the sequence holds one "
                             f"suffix: train one of them")
        return parts[0] if parts else None

    def idle_parameters(self) -> list[str]:
        """Names of the parameters no trained objective reads: those only other objectives read (their
        ``reads`` prefixes), e.g. the head and ``z_vae_init`` when ``next_latent`` is not trained."""
        from fovea.core.plugins import get_parts

        used = [p for objective, _ in self.objectives.values() for p in getattr(objective, "reads", ())]
        others = [p for name, part in get_parts("objective").items() if name not in self.objectives
                  for p in getattr(part.cls, "reads", ())]
        return [n for n, _ in self.named_parameters()
                if any(n.startswith(p) for p in others) and not any(n.startswith(p) for p in used)]

    # ------------------------------------------------------------------ the two passes

    @property
    def single_pass(self) -> bool:
        """A query-free encoder (``uses_query = False``): one pass, whose coarse terms are its fine ones."""
        return not getattr(self.encoder, "uses_query", True)

    def _read_sequence(self, mode_token: torch.Tensor, features: torch.Tensor,
                       suffix: torch.Tensor | None = None) -> torch.Tensor:
        """LLM over ``[prompt, mode_token, z_1 .. z_T, suffix]`` -> hidden states (B, P + 1 + T·K + L, H), causal.

        ``features`` (B, T, D) or (B, T, K, D): frame t's K tokens follow each other."""
        tokens = self.dino_to_llm(features).flatten(1, -2)                    # (B, T·K, H)
        B, dtype = len(tokens), tokens.dtype
        parts = [self.embed_tokens(self.prompt_ids).expand(B, -1, -1), mode_token.expand(B, -1, -1), tokens]
        if suffix is not None:
            parts.append(suffix)
        inputs = torch.cat([part.to(dtype) for part in parts], dim=1)          # (B, P + 1 + T + L, H)
        return self.llm(inputs_embeds=inputs).last_hidden_state

    def predict_latents(self, hidden: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """Hidden states at ``[mode, z_1 .. z_{T-1}]`` (B, T, H), latents of frames t-1 -> latents of t."""
        B, T = hidden.shape[:2]
        pred = self.head(hidden.flatten(0, 1), prev.flatten(0, 1).to(hidden.dtype))  # (B*T, C, h, w)
        return pred.view(B, T, *pred.shape[1:])

    def shift_queries(self, queries: torch.Tensor) -> torch.Tensor:
        """Pass-1 queries (B, T, D) -> pass 2's reads ``[q_init, q_1 .. q_{T-1}]``: frame t read with the query made after t-1."""
        return torch.cat([self.q_init.expand(len(queries), 1, -1).to(queries.dtype), queries[:, :-1]], dim=1)

    def previous_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """``[z_vae_init, z_vae_1 .. z_vae_{T-1}]`` (B, T, C, h, w): what the head is conditioned on for frame t."""
        return torch.cat([self.z_vae_init.expand(len(latents), 1, -1, -1, -1), latents[:, :-1]], dim=1)

    def forward(self, frames: torch.Tensor, latents: torch.Tensor, targets: dict[str, torch.Tensor] | None = None,
                return_attention: bool = False) -> FoveatedOutput:
        """Frames uint8 (B, T, 3, S, S), their VAE latents (B, T, C, h, w) and the objectives' ``targets``
        (``prepare``) -> losses and predictions."""
        targets = targets or {}
        B, T = frames.shape[:2]
        P = len(self.prompt_ids)
        pixels = frames.flatten(0, 1).float().div(255.0)                       # (B*T, 3, S, S)
        cache = self.encoder.encode(pixels)                                     # once per frame per step


        def attend(queries: torch.Tensor):                      # (B*T, D) -> (B, T, D), or (B, T, K, D)
            out = self.encoder.attend(queries, cache, return_attention=return_attention)
            features, attention = out if return_attention else (out, None)
            shape = (B, T, -1) if features.dim() == 2 else (B, T, features.shape[1], -1)   # K tokens per frame
            return features.reshape(shape), None if attention is None else attention.reshape(B, T, -1)

        suffix = self._suffix(targets)                                          # (B, L, H) or None
        # Pass 1: the same static query reads every frame.
        z_static, att_static = attend(self.q_static.expand(B * T, -1))         # (B, T, D)
        if self.single_pass:   # a query-free encoder: pass 2 would read the same tokens again
            return self._single_pass(z_static, att_static, latents, targets, suffix)
        K = 1 if z_static.dim() == 3 else z_static.shape[2]
        coarse = PassStates(self._read_sequence(self.coarse_token, z_static, suffix), P, T, K)
        queries = self.query_head(coarse.after_frames)                          # (B, T, D): q_t after frame t

        # Pass 2: frame t is read with the query produced after frame t-1.
        z_dynamic, att_dynamic = attend(self.shift_queries(queries).flatten(0, 1))   # (B, T, D)
        fine = PassStates(self._read_sequence(self.fine_token, z_dynamic, suffix), P, T, K)

        # Each objective scores each pass from that pass's own states.
        terms = {name: {"coarse": objective.loss(self, coarse, latents, targets),
                        "fine": objective.loss(self, fine, latents, targets)}
                 for name, (objective, _) in self.objectives.items()}
        loss_coarse = sum(w * terms[name]["coarse"].mean for name, (_, w) in self.objectives.items())
        loss_fine = sum(w * terms[name]["fine"].mean for name, (_, w) in self.objectives.items())
        return FoveatedOutput(
            loss=loss_fine + self.lambda_coarse * loss_coarse, loss_fine=loss_fine, loss_coarse=loss_coarse,
            terms=terms, queries=queries, attention_static=att_static, attention_dynamic=att_dynamic)

    def _single_pass(self, features, attention, latents, targets, suffix) -> FoveatedOutput:
        """The model of a query-free encoder: one pass over ``[prompt, fine_token, tokens, suffix]``; each term is
        both its coarse and its fine one, and ``loss = Σ weight · fine`` (λ_coarse has nothing to weigh)."""
        states = PassStates(self._read_sequence(self.fine_token, features, suffix), len(self.prompt_ids),
                            features.shape[1], 1 if features.dim() == 3 else features.shape[2])
        terms = {name: dict.fromkeys(("coarse", "fine"), objective.loss(self, states, latents, targets))
                 for name, (objective, _) in self.objectives.items()}
        loss = sum(w * terms[name]["fine"].mean for name, (_, w) in self.objectives.items())
        return FoveatedOutput(loss=loss, loss_fine=loss, loss_coarse=loss, terms=terms, queries=None,
                              attention_static=attention, attention_dynamic=attention)

    # ------------------------------------------------------------------ deployed: one pass, frame by frame

    def read_frames(self, frames: torch.Tensor, read_last: bool = True):
        """What a deployed model does: one pass, frame t read with the query this pass made after frame t-1.

        The LLM runs over ``[prompt, fine_token, z_1 .. z_T]`` one frame at a time on its KV cache.
        Frames uint8 (B, T, 3, S, S) -> (states (B, P + 1 + T', H), ``step``): T' = T, or T - 1 without
        ``read_last`` (frame T informs no latent prediction); ``step(embeddings (B, n, H)) -> (B, n, H)``
        continues the same sequence (a caption, token by token).
        """
        import inspect

        from transformers import DynamicCache

        B, T = frames.shape[:2]
        # transformers 5 names the KV cache argument `cache`; 4.x `past_key_values`
        name = "cache" if "cache" in inspect.signature(self.llm.forward).parameters else "past_key_values"
        past = {name: DynamicCache()}

        def step(inputs: torch.Tensor) -> torch.Tensor:                       # (B, n, H) -> states (B, n, H)
            return self.llm(inputs_embeds=inputs, use_cache=True, **past).last_hidden_state

        first = torch.cat([self.embed_tokens(self.prompt_ids).expand(B, -1, -1),
                           self.fine_token.expand(B, -1, -1)], dim=1)           # (B, P + 1, H)
        states = [step(first)]
        query = self.q_init.expand(B, -1)                                       # (B, D): reads frame 1
        for t in range(T if read_last else T - 1):                              # causal: frame by frame
            cache = self.encoder.encode(frames[:, t].float().div(255.0))        # frame t of every clip, once
            z = self.encoder.attend(query.to(states[-1].dtype), cache)          # (B, D) or (B, K, D)
            states.append(step(self.dino_to_llm(z).reshape(B, -1, self.llm.config.hidden_size)))   # (B, K, H)
            query = self.query_head(states[-1][:, -1])                          # reads frame t + 1
        return torch.cat(states, dim=1), step

    def autoregressive(self, frames: torch.Tensor, latents: torch.Tensor,
                       targets: dict[str, torch.Tensor] | None = None) -> dict[str, Term]:
        """Each objective's loss in the deployed mode (``read_frames``), the suffix read after the frames.

        With queries that do not depend on what was read, this equals ``forward``'s fine terms.
        """
        targets = targets or {}
        suffix = self._suffix(targets)
        hidden, step = self.read_frames(frames, read_last=suffix is not None)
        P, T = len(self.prompt_ids), frames.shape[1]
        K = (hidden.shape[1] - P - 1) // max(1, T if suffix is not None else T - 1)   # tokens per frame read
        if suffix is not None:
            hidden = torch.cat([hidden, step(suffix.to(hidden.dtype))], dim=1)
        states = PassStates(hidden, P, T, K)
        return {name: objective.loss(self, states, latents, targets) for name, (objective, _) in self.objectives.items()}

    @torch.no_grad()
    def generate_text(self, frames: torch.Tensor, max_tokens: int = 64) -> list[list[int]]:
        """Greedy text after the frames, read in the deployed mode: token ids per clip, up to EOS (excluded)."""
        if self.codec is None:
            raise FoveaError("this model has no tokenizer: it was built without a text objective or prompt")
        hidden, step = self.read_frames(frames)
        B, eos = len(frames), self.codec.eos_id
        done = torch.zeros(B, dtype=torch.bool, device=frames.device)
        ids: list[torch.Tensor] = []
        state = hidden[:, -1:]                                                  # (B, 1, H): after frame T
        for _ in range(max_tokens):
            token = self.lm_logits(state[:, -1]).argmax(-1)                    # (B,)
            token = torch.where(done, torch.full_like(token, eos), token)
            ids.append(token)
            done |= token == eos
            if bool(done.all()):
                break
            state = step(self.embed_tokens(token)[:, None].to(hidden.dtype))  # (B, 1, H)
        rows = torch.stack(ids, dim=1).tolist() if ids else [[] for _ in range(B)]
        return [row[:row.index(eos)] if eos in row else row for row in rows]


def build_encoder(config: FoveaConfig) -> nn.Module:
    from fovea.core.plugins import get_part

    table = config.model.encoder
    part = get_part("encoder", table.name)
    encoder = part.cls(table.options)
    if not isinstance(getattr(encoder, "dim", None), int):
        raise PluginError(f"encoder '{table.name}' from {part.source}: an instance has no integer `dim` (the "
                          f"encoder contract, fovea.core.contracts.Encoder)")
    # A ViT (the optional `backbone_config` extension) would drop the pixels past its last whole patch: a frame
    # size that does not fit is refused here, before a run writes anything.
    patch, size = getattr(getattr(encoder, "backbone_config", None), "patch_size", None), config.data.frame_size
    if isinstance(patch, int) and size % patch:
        raise ConfigError(f"data.frame_size = {size} does not fit the encoder's {patch}-px patches; choose a "
                          f"multiple of {patch} (e.g. {4 * patch} or {16 * patch})")
    return encoder


def build_head(config: FoveaConfig, hidden_size: int, latent_channels: int) -> nn.Module:
    from fovea.core.plugins import get_part

    table = config.model.head
    return get_part("head", table.name).cls(table.options, hidden_size=hidden_size,
                                            latent_channels=latent_channels)


def build_model(config: FoveaConfig) -> FoveatedVLM:
    """The two-pass model the config describes; random parts are initialised from ``run.seed``."""
    from fovea.core.llm import build_llm
    from fovea.core.objectives import build_objectives, uses_text
    from fovea.core.vae import latent_shape

    shape = latent_shape(config.model.vae, config.data.frame_size)
    objectives = build_objectives(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.run.seed)
        encoder = build_encoder(config)
        llm = build_llm(config.model.llm)
        head = build_head(config, llm.config.hidden_size, shape[0])
        codec = None
        if uses_text(config):
            if not getattr(llm.config, "tie_word_embeddings", False):
                raise FoveaError("text (a prompt or a caption objective) is read and written through the LLM's "
                                 "token embeddings as its LM head, and this LLM's output embeddings are untied "
                                 "from them; use an LLM with tied embeddings (SmolLM2 is)")
            codec = TextCodec.for_llm(config.model.llm, llm.config.vocab_size)
            llm.get_input_embeddings().requires_grad_(config.model.llm.trainable)   # read and written: trained
        model = FoveatedVLM(encoder, llm, head, latent_shape=shape, lambda_coarse=config.model.lambda_coarse,
                            objectives={name: (objective, config.objectives[name].weight)
                                        for name, objective in objectives.items()},
                            codec=codec, prompt=config.model.prompt)
    idle = set(model.idle_parameters())       # no gradient can reach them: out of the optimizer (and DDP's reducer)
    for name, parameter in model.named_parameters():
        if name in idle:
            parameter.requires_grad_(False)
    return model
