"""Probes of the two-pass wiring: what each pass reads, and what each prediction may depend on.

Every probe runs the real ``FoveatedVLM.forward`` on a batch and watches it through
``fovea.core.instrument.wrap_encoder`` (the encoder's ``encode`` / ``attend`` calls) or forward hooks;
none re-implements a pass. SPEC.md "Two-pass training" and "Failure modes".
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from fovea.core.instrument import wrap_encoder


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


@torch.no_grad()
def prediction_scale(model, frames: torch.Tensor, latents: torch.Tensor, targets: dict | None = None) -> dict[str, float]:
    """Max |prediction| of each pass in one forward: the scale a leak is judged against."""
    out = model(frames, latents, targets)
    return {"pred_coarse": out.pred_coarse.abs().max().item(), "pred_fine": out.pred_fine.abs().max().item()}


@contextlib.contextmanager
def record_attend_calls(model) -> Iterator[list[torch.Tensor]]:
    """Record the queries of every ``model.encoder.attend`` call (pass 1 first, then pass 2)."""
    calls: list[torch.Tensor] = []

    def recording(attend, queries, cache, *args, **kwargs):
        calls.append(queries.detach().clone())
        return attend(queries, cache, *args, **kwargs)

    with wrap_encoder(model.encoder, attend=recording):
        yield calls


@contextlib.contextmanager
def record_attend_outputs(model) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Record ``(queries, features)`` of every ``model.encoder.attend`` call (pass 1 first, then pass 2)."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def recording(attend, queries, cache, *args, **kwargs):
        out = attend(queries, cache, *args, **kwargs)
        features = out[0] if isinstance(out, tuple) else out
        calls.append((queries.detach().clone(), features.detach().clone()))
        return out

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


@torch.no_grad()
def encode_calls(model, frames: torch.Tensor, latents: torch.Tensor, targets: dict | None = None) -> list[int]:
    """Frames per ``model.encoder.encode`` call in one forward (SPEC: one call reading all B*T frames)."""
    sizes: list[int] = []

    def counting(encode, pixels, *args, **kwargs):
        sizes.append(len(pixels))
        return encode(pixels, *args, **kwargs)

    with wrap_encoder(model.encoder, encode=counting):
        model(frames, latents, targets)
    return sizes


def _replace_features(out, replacement: torch.Tensor):
    """An ``attend`` result with its features replaced (the attention, when returned, kept)."""
    return (replacement, *out[1:]) if isinstance(out, tuple) else replacement


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

    def perturbed(attend, queries, cache, *args, **kwargs):
        out = attend(queries, cache, *args, **kwargs)
        calls.append(queries.detach().clone())
        if len(calls) == 1:                                                      # pass 1
            features = out[0] if isinstance(out, tuple) else out
            nudged = features.reshape(B, T, *features.shape[1:]).clone()          # (B, T, [K,] D)
            nudged[:, t] += features.float().std().clamp_min(1e-3).to(features.dtype)
            out = _replace_features(out, nudged.reshape(features.shape))
        return out

    with wrap_encoder(model.encoder, attend=perturbed):
        model(frames, latents, targets)
    if len(base) != 2 or len(calls) != 2:
        return {"attend_calls": len(calls), "t": t, "change": None, "scale": None}
    change = (calls[1] - base[1]).view(B, T, -1).abs().amax(dim=(0, 2))         # (T,) per frame
    return {"attend_calls": 2, "t": t, "change": change.tolist(), "scale": base[1].abs().max().item()}


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

    def noisy(attend, queries, cache, *args, **kwargs):
        out = attend(queries, cache, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:                                                      # pass 2
            features = out[0] if isinstance(out, tuple) else out
            generator = torch.Generator(device=features.device).manual_seed(0)
            noise = torch.randn(features.shape, generator=generator, device=features.device, dtype=features.dtype)
            out = _replace_features(out, noise * features.float().std().clamp_min(1e-3).to(features.dtype))
        return out

    with wrap_encoder(model.encoder, attend=noisy):
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
