"""Probes: measure what the model does, instead of reading what the code says.

Each probe runs the real model on a real batch in eval mode and returns numbers; callers (tests,
``fovea audit``) decide what is good enough. SPEC.md "Two-pass training" and "Failure modes".

Wiring: ``target_leak``, ``query_wiring``, ``pass1_perturbation``, ``encode_calls``,
``pass_independence`` (every objective), ``caption_causality``. Every probe takes the objectives'
``targets`` (``FoveatedVLM.prepare``) for models that read text. Query mechanism
(any encoder that keeps the contract ``encode``/``attend``/``dim``): ``query_sensitivity``,
``patch_invariance`` (attention statistics: ``fovea.core.attention``). Head: ``head_probe``. Training: ``gradient_reach``.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Callable, Iterator

import torch


def repeat_targets(targets: dict | None, copies: int) -> dict | None:
    """Objective targets (B, ...) for ``copies`` copies of the batch stacked copy-major, (copies * B, ...)."""
    if not targets:
        return targets
    return {k: v.repeat(copies, *([1] * (v.dim() - 1))) for k, v in targets.items()}


@torch.no_grad()
def target_leak(model, frames: torch.Tensor, latents: torch.Tensor, targets: dict | None = None) -> dict[str, float]:
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
    base = model(frames, latents, targets)
    probed = model(probed_frames, probed_latents, repeat_targets(targets, T))
    must_hold = ~changed | torch.eye(T, dtype=torch.bool, device=frames.device)  # frames < t, and t itself
    report = {}
    for name in ("pred_coarse", "pred_fine"):
        diff = (getattr(probed, name).view(T, B, T, -1) - getattr(base, name)[None].view(1, B, T, -1)).abs()
        per_copy_frame = diff.amax(dim=(1, 3))                                   # (T copies, T frames)
        report[name] = per_copy_frame[must_hold].max().item()                    # over copies and frames <= t
        # The scale a leak is judged against: how much the predictions that may see the change
        # (frames > t in copy t) do move. Mean over those (copy, frame) pairs; 0 if T = 1.
        may_move = per_copy_frame[~must_hold]
        report[f"{name}_response"] = may_move.mean().item() if may_move.numel() else 0.0
    return report


@contextlib.contextmanager
def record_attend_calls(model) -> Iterator[list[torch.Tensor]]:
    """Record the queries of every ``model.encoder.attend`` call (pass 1 first, then pass 2)."""
    from fovea.core.instrument import wrap_encoder

    calls: list[torch.Tensor] = []

    def recording(attend, queries, cache, *args, **kwargs):
        calls.append(queries.detach().clone())
        return attend(queries, cache, *args, **kwargs)

    with wrap_encoder(model.encoder, attend=recording):
        yield calls


@torch.no_grad()
def query_wiring(model, frames: torch.Tensor, latents: torch.Tensor, targets: dict | None = None) -> dict[str, float]:
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
            model(frames, latents, targets)
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


@contextlib.contextmanager
def _replaced(obj, name: str, replacement) -> Iterator[None]:
    """Set ``obj.name`` on the instance for the block, then restore what was there."""
    had, old = name in vars(obj), vars(obj).get(name)
    setattr(obj, name, replacement)
    try:
        yield
    finally:
        if had:
            setattr(obj, name, old)
        else:
            delattr(obj, name)


@contextlib.contextmanager
def record_attend_outputs(model) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Record ``(queries, features)`` of every ``model.encoder.attend`` call (pass 1 first, then pass 2)."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = model.encoder.attend

    def recording(queries, cache, *args, **kwargs):
        out = original(queries, cache, *args, **kwargs)
        features = out[0] if isinstance(out, tuple) else out
        calls.append((queries.detach().clone(), features.detach().clone()))
        return out

    with _replaced(model.encoder, "attend", recording):
        yield calls


@torch.no_grad()
def encode_calls(model, frames: torch.Tensor, latents: torch.Tensor, targets: dict | None = None) -> list[int]:
    """Frames per ``model.encoder.encode`` call in one forward (SPEC: one call reading all B*T frames)."""
    sizes: list[int] = []
    original = model.encoder.encode

    def counting(pixels, *args, **kwargs):
        sizes.append(len(pixels))
        return original(pixels, *args, **kwargs)

    with _replaced(model.encoder, "encode", counting):
        model(frames, latents, targets)
    return sizes


@torch.no_grad()
def pass1_perturbation(model, frames: torch.Tensor, latents: torch.Tensor, t: int | None = None,
                       targets: dict | None = None) -> dict[str, Any]:
    """Which pass-2 reads change when the pass-1 read of frame ``t`` (0-based) is nudged.

    SPEC: pass 2 reads frame s with the query produced after frame s-1, so the queries of frames <= t
    must not move, and those of every frame > t must. The pass-1 features of frame t get one standard
    deviation of all pass-1 features added. Returns ``change`` (max |Δ| of the pass-2 queries per frame,
    a list of T), ``scale`` (max |pass-2 query|), ``t`` and ``attend_calls``.
    """
    B, T = frames.shape[:2]
    t = max(0, T // 2 - 1) if t is None else t
    with record_attend_calls(model) as base:
        model(frames, latents, targets)
    calls: list[torch.Tensor] = []
    original = model.encoder.attend

    def perturbed(queries, cache, *args, **kwargs):
        out = original(queries, cache, *args, **kwargs)
        calls.append(queries.detach().clone())
        if len(calls) == 1:                                                      # pass 1
            features, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, None)
            nudged = features.reshape(B, T, *features.shape[1:]).clone()          # (B, T, [K,] D)
            nudged[:, t] += features.float().std().clamp_min(1e-3).to(features.dtype)
            nudged = nudged.reshape(features.shape)
            out = nudged if rest is None else (nudged, *rest)
        return out

    with _replaced(model.encoder, "attend", perturbed):
        model(frames, latents, targets)
    if len(base) != 2 or len(calls) != 2:
        return {"attend_calls": len(calls), "t": t, "change": None, "scale": None}
    change = (calls[1] - base[1]).view(B, T, -1).abs().amax(dim=(0, 2))         # (T,) per frame
    return {"attend_calls": 2, "t": t, "change": change.tolist(), "scale": base[1].abs().max().item()}


def _row_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of matching rows of a, b (N, D) -> (N,); identical rows give 1."""
    a = a.float() - a.float().mean(dim=-1, keepdim=True)
    b = b.float() - b.float().mean(dim=-1, keepdim=True)
    denominator = a.norm(dim=-1) * b.norm(dim=-1)
    same = (a - b).abs().amax(dim=-1) == 0
    return torch.where(same, torch.ones_like(denominator), (a * b).sum(-1) / denominator.clamp_min(1e-12))


@torch.no_grad()
def query_sensitivity(encoder, cache, queries_a: torch.Tensor, queries_b: torch.Tensor) -> dict[str, float]:
    """How much the encoder's output depends on the query (SPEC failure mode: correlation ≈ 1).

    Reads the same frames (one cached ``encode``) with two query sets (N, D). ``correlation_*``: Pearson
    correlation of the two outputs per frame, over feature dimensions. ``query_vs_frame``: mean change
    of the output from switching the query, over the mean change from switching the frame (same query).
    """
    a, b = encoder.attend(queries_a, cache), encoder.attend(queries_b, cache)    # (N, D) each
    corr = _row_correlation(a, b)                                                # (N,)
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


def gradient_reach(model, frames: torch.Tensor, latents: torch.Tensor, targets: dict | None = None) -> dict[str, float]:
    """Largest |gradient| of the loss for every parameter, as if all were trainable (0.0: not reached).

    One forward and backward on a real batch with ``requires_grad`` switched on everywhere, so a
    frozen parameter shows whether the loss would reach it; flags and gradients are restored after.
    """
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    grads = {name: p.grad for name, p in model.named_parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(True)
            p.grad = None
        model(frames, latents, targets).loss.backward()
        return {name: (p.grad.abs().max().item() if p.grad is not None else 0.0)
                for name, p in model.named_parameters()}
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
            p.grad = grads[name]


@torch.no_grad()
def pass_independence(model, frames: torch.Tensor, latents: torch.Tensor, targets: dict | None = None) -> dict[str, Any]:
    """Each objective's coarse and fine losses when pass 2's reads change: the coarse ones must not move.

    SPEC: each pass predicts from its own states. The second ``attend`` call's output (pass 2's reads)
    is replaced by noise of the same scale; per objective, ``<name>_coarse`` is the largest change of the
    pass-1 loss per clip (must be 0), ``<name>_fine`` that of the pass-2 loss (must be > 0), with
    ``<name>_scale`` the loss's size.
    """
    base = model(frames, latents, targets)
    calls: list[int] = []
    original = model.encoder.attend

    def noisy(queries, cache, *args, **kwargs):
        out = original(queries, cache, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:                                                      # pass 2
            features, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, None)
            generator = torch.Generator(device=features.device).manual_seed(0)
            noise = torch.randn(features.shape, generator=generator, device=features.device, dtype=features.dtype)
            replaced = noise * features.float().std().clamp_min(1e-3).to(features.dtype)
            out = replaced if rest is None else (replaced, *rest)
        return out

    with _replaced(model.encoder, "attend", noisy):
        probed = model(frames, latents, targets)
    report: dict[str, Any] = {"attend_calls": len(calls)}
    for name, terms in base.terms.items():
        for mode in ("coarse", "fine"):
            change = (probed.terms[name][mode].per_clip - terms[mode].per_clip).abs().max().item()
            report[f"{name}_{mode}"] = change
        report[f"{name}_scale"] = terms["fine"].per_clip.abs().max().item()
    return report


@torch.no_grad()
def caption_causality(model, frames: torch.Tensor, latents: torch.Tensor, targets: dict) -> dict[str, Any]:
    """Whether a caption token's prediction sees the tokens after it, or another clip's caption.

    The caption's input token at position ``j`` (the middle of the shortest caption) of clip 0 is replaced:
    the logits of clip 0's positions ≤ j (which predict tokens ≤ j) must not move (``before``), those after
    it must (``after``), and no other clip's logits may move (``other_clips``), in both passes.
    """
    ids = targets["caption_ids"]                                                 # (B, L)
    length = int((ids != -100).sum(1).min())
    j = max(0, length // 2 - 1)
    changed = ids.clone()
    vocab = model.lm_logits(torch.zeros(1, model.llm.config.hidden_size, device=ids.device)).shape[-1]
    changed[0, j] = (ids[0, j] + 1) % vocab
    base = model(frames, latents, targets)
    probed = model(frames, latents, {**targets, "caption_ids": changed})
    report: dict[str, Any] = {"position": j, "caption_tokens": length}
    for mode in ("coarse", "fine"):
        a, b = base.terms["caption"][mode].detail["logits"], probed.terms["caption"][mode].detail["logits"]
        diff = (a.float() - b.float()).abs().amax(dim=-1)                       # (B, L)
        report[f"{mode}_before"] = diff[0, :j + 1].max().item()
        report[f"{mode}_after"] = diff[0, j + 1:length].max().item() if j + 1 < length else 0.0
        report[f"{mode}_other_clips"] = diff[1:].max().item() if len(diff) > 1 else 0.0
        report[f"{mode}_scale"] = a.float().abs().max().item()
    return report
