"""Probes of learning: which parameters the loss reaches, the loss's composition, and whether the model can
learn at all (the checks every practitioner's checklist asks first).

``gradient_reach`` (which parameters a real batch's loss reaches), ``loss_composition`` (each term's weight in
the trained loss, and each term scored again on the true targets), ``init_loss`` (the initialisation's loss
against a trivial output's), ``overfit_one_batch``, ``blank_frames``, ``clip_isolation`` (clip i's loss
reaches clip i's pixels only).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

MODES = ("coarse", "fine")


def loss_composition(model, frames, latents, targets, lambda_coarse: float, weights: dict[str, float]) -> dict:
    """The weight each term has in the trained loss (d loss / d term per clip × B), against the config's, and
    the largest gap between each term and the same term scored again on the true targets."""
    with torch.enable_grad():
        out = model(frames, latents, targets)
        names = list(out.terms)
        terms = [out.terms[n][m].per_clip for n in names for m in MODES]
        grads = torch.autograd.grad(out.loss, terms, allow_unused=True) if out.loss.requires_grad else [None] * len(terms)
    B = len(frames)
    report: dict[str, Any] = {}
    for (name, mode), grad in zip([(n, m) for n in names for m in MODES], grads):
        expected = weights.get(name, 0.0) * (lambda_coarse if mode == "coarse" else 1.0)
        report[f"{name}_{mode}_weight"] = 0.0 if grad is None else float(grad.double().mean() * B)
        report[f"{name}_{mode}_expected"] = expected
        rescored = rescore(name, out.terms[name][mode], latents, targets)
        report[f"{name}_{mode}_rescored_gap"] = (None if rescored is None else
                                                 float((rescored - out.terms[name][mode].per_clip.detach().float())
                                                       .abs().max()))
        report[f"{name}_{mode}_scale"] = float(out.terms[name][mode].per_clip.detach().abs().max())
    return report


def rescore(name: str, term, latents: torch.Tensor, targets: dict) -> torch.Tensor | None:
    """A term's loss per clip scored again from its own predictions on the true targets (None: not known)."""
    import torch.nn.functional as F

    if name == "next_latent" and "pred" in term.detail:
        pred = term.detail["pred"].detach().float()                               # (B, T, C, h, w)
        return (pred - latents.float()).square().mean(dim=(2, 3, 4)).mean(dim=1)  # frame t against frame t
    if name == "caption" and "logits" in term.detail and "caption_ids" in targets:
        labels = targets["caption_ids"]                                           # (B, L)
        logits = term.detail["logits"].detach().float()                          # (B, L, V)
        ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100,
                             reduction="none").view(labels.shape)
        return ce.sum(1) / (labels != -100).sum(1)
    return None


@torch.no_grad()
def trivial_losses(model, latents: torch.Tensor, targets: dict) -> dict[str, float]:
    """Per objective, the loss of the output an initialisation should be close to: zeros (``next_latent``: the
    mean square of the latents), uniform next-token probabilities (``caption``: log V)."""
    found = {}
    if "next_latent" in model.objectives:
        found["next_latent"] = float(latents.float().square().mean())
    if "caption" in model.objectives:
        found["caption"] = math.log(model.llm.get_input_embeddings().weight.shape[0])
    return found


@torch.no_grad()
def init_loss(initial, frames, latents, targets) -> dict[str, dict[str, float]]:
    """The initialisation's fine loss per objective (``losses``) and the loss of the output it should be close
    to (``trivial``, ``trivial_losses``) on the same batch."""
    out = initial(frames, latents, targets)
    return {"losses": {name: float(terms["fine"].mean) for name, terms in out.terms.items()},
            "trivial": trivial_losses(initial, latents, targets)}


def overfit_one_batch(initial, frames, latents, targets, steps: int, lr: float = 1e-3) -> dict[str, Any]:
    """A copy of ``initial`` trained ``steps`` AdamW steps on this batch alone: its first and last loss."""
    model = copy.deepcopy(initial).train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    losses = []
    with torch.enable_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for _ in range(steps):
            loss = model(frames, latents, targets).loss
            optimizer.zero_grad(set_to_none=True)
            if loss.requires_grad:
                loss.backward()
                optimizer.step()
            losses.append(loss.item())
    return {"steps": steps, "lr": lr, "first": losses[0], "last": losses[-1],
            "drop": 1 - losses[-1] / losses[0] if losses[0] > 0 else 0.0}


@torch.no_grad()
def blank_frames(model, frames, latents, targets) -> dict[str, float]:
    """The trained model's loss on the batch, and with every frame blank (mid grey)."""
    real = float(model(frames, latents, targets).loss)
    blank = float(model(torch.full_like(frames, 128), latents, targets).loss)
    return {"real": real, "blank": blank, "rise": (blank - real) / real if real > 0 else 0.0}


def clip_isolation(model, frames, latents, targets) -> dict[str, Any]:
    """|d loss of clip 0 / d pixels| summed per clip: only clip 0's entry may be non-zero."""
    from fovea.core.instrument import wrap_encoder

    captured: list[torch.Tensor] = []

    def leaf_encode(encode, pixels, *args, **kwargs):
        pixels = pixels.detach().requires_grad_(True)                            # (B*T, 3, S, S)
        captured.append(pixels)
        return encode(pixels, *args, **kwargs)

    with wrap_encoder(model.encoder, encode=leaf_encode), torch.enable_grad():
        out = model(frames, latents, targets)
        loss = sum(out.terms[n][m].per_clip[0] for n in out.terms for m in MODES)
        (grad,) = torch.autograd.grad(loss, captured[0], allow_unused=True)
    B, T = frames.shape[:2]
    per_clip = ([0.0] * B if grad is None else
                grad.reshape(B, T, -1).abs().sum(dim=(1, 2)).tolist())               # (B,)
    return {"per_clip": per_clip, "own": per_clip[0], "others": max(per_clip[1:], default=0.0)}


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
