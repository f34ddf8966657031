"""Does learning work at all? The loss's composition, and the probes every practitioner's checklist asks first.

- ``training.loss_composition``: the loss trained is ``Σ weight · (fine + λ_coarse · coarse)`` with each term
  on the true targets (``next_latent``: frame t's own latent; ``caption``: the caption's tokens), measured by
  the gradient of the loss with respect to each term (a detached term or a wrong λ shows) and by scoring the
  model's own predictions again against the targets (a target off by one frame shows).
- ``learning.init_loss``: the initialisation's loss against the output an initialisation should be close to
  (zeros, uniform token probabilities) on the same batch.
- ``learning.overfit_one_batch``: a copy of the initialisation trained on the probe batch alone must lose
  most of its loss in a few dozen steps; if not, something is broken before any data question.
- ``learning.blank_frames``: the trained model's loss with blank frames must be higher (it uses vision).
- ``learning.clip_isolation``: the gradient of clip i's loss reaches clip i's pixels only (a reshape that
  mixes clips or frames shows up here).

Each check takes the audit's evidence (``fovea.audit.run.Evidence``: the run's config, spec, models and
probe batch) and returns ``Check`` records.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from fovea.audit.findings import Check, _fmt, _pct

MODES = ("coarse", "fine")


# --------------------------------------------------------------------------- probes


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


# --------------------------------------------------------------------------- checks


def check_loss_composition(ev) -> list[Check]:
    """``training.loss_composition``: the loss trained is the spec's, on the true targets."""
    config, model = ev.config, ev.model
    weights = {name: table.weight for name, table in config.objectives.items()}
    found = loss_composition(model, ev.frames, ev.latents, ev.targets, config.model.lambda_coarse, weights)
    tol = 1e-3
    wrong, unscored = [], []
    for name in model.objectives:
        for mode in MODES:
            got, want = found[f"{name}_{mode}_weight"], found[f"{name}_{mode}_expected"]
            if abs(got - want) > tol * max(abs(want), 1.0):
                wrong.append(f"{name}_{mode} weighs {_fmt(got)} in the loss, expected {_fmt(want)}"
                             + (" (detached: no gradient)" if got == 0 and want else ""))
            gap = found[f"{name}_{mode}_rescored_gap"]
            if gap is None:
                unscored.append(f"{name}_{mode}")
            elif gap > tol * max(found[f"{name}_{mode}_scale"], 1e-6):
                wrong.append(f"{name}_{mode} differs from its predictions scored on the true targets by {_fmt(gap)} "
                             f"(a target off by one frame or token?)")
    observed = "; ".join(f"{n}: coarse × {_fmt(found[f'{n}_coarse_weight'])}, fine × {_fmt(found[f'{n}_fine_weight'])}"
                         for n in model.objectives)
    if unscored:
        observed += f"; not scored again (no known targets): {', '.join(unscored)}"
    return [Check(
        "training.loss_composition", "The loss trained is the spec's, on the true targets", "training",
        "fail" if wrong else "pass",
        expected=f"loss = Σ weight · (loss_fine + λ_coarse · loss_coarse), λ_coarse = {_fmt(config.model.lambda_coarse)} "
                 f"(config), weights {weights}; each term on the true next-frame targets (SPEC \"Two-pass training\")",
        observed=observed,
        evidence="d loss / d (each term's loss per clip) × clips, by autograd, in one forward of the checkpoint's model "
                 "on the probe batch; every term scored again from the model's own predictions against the "
                 f"targets (relative tolerance {_fmt(tol)}). Probe batch: {ev.batch_origin}.",
        reason="; ".join(wrong) + (": the loss optimised is not the one the improvement is measured on" if wrong else ""),
        recommendation="" if not wrong else "loss = loss_fine + lambda_coarse * loss_coarse, both undetached, "
                                            "predictions of frame t against latents[:, t]",
        measurements=found)]


def check_learning(ev) -> list[Check]:
    """The learning probes (section training): initial loss, overfitting one batch, blank frames, clip isolation."""
    spec, model = ev.spec.learning, ev.model
    checks: list[Check] = []
    batch = f"Probe batch: {ev.batch_origin}."

    with torch.no_grad():
        initial = ev.initial(ev.frames, ev.latents, ev.targets)
    trivial = trivial_losses(ev.initial, ev.latents, ev.targets)
    ratios = {n: float(initial.terms[n]["fine"].mean) / trivial[n] for n in trivial if trivial[n] > 0}
    high = {n: r for n, r in ratios.items() if r > spec.init_ratio_max}
    checks.append(Check(
        "learning.init_loss", "The loss at initialisation is where it should be", "training",
        "info" if not ratios else ("warn" if high else "pass"),
        expected=f"the initialisation's loss within {_fmt(spec.init_ratio_max)}× that of the output an initialisation "
                 f"should be close to, on the same batch (next_latent: zeros; caption: uniform tokens, log V)",
        observed=("not measured: no trivial predictor known for " + ", ".join(model.objectives)) if not ratios else
        "; ".join(f"{n}: {_fmt(float(initial.terms[n]['fine'].mean))} vs {_fmt(trivial[n])} ({r:.2f}×)"
                  for n, r in ratios.items()),
        evidence=f"a forward of the run's initialisation (a fresh seeded build). {batch}",
        reason=("an initial loss far above a trivial predictor's: outputs at a wrong scale (an init std, a missing "
                "normalisation); training first spends steps undoing it") if high else "",
        recommendation="check the initialisation of the head and the learned queries" if high else "",
        measurements={"ratios": ratios, "trivial": trivial}))

    fit = overfit_one_batch(ev.initial, ev.frames, ev.latents, ev.targets, spec.overfit_steps)
    fits = fit["drop"] >= spec.overfit_drop
    checks.append(Check(
        "learning.overfit_one_batch", "A copy of the model can overfit one batch", "training",
        "pass" if fits else "fail",
        expected=f"its loss falls by ≥ {_pct(spec.overfit_drop)} in {spec.overfit_steps} AdamW steps on the probe "
                 f"batch alone",
        observed=f"loss {_fmt(fit['first'])} → {_fmt(fit['last'])} ({_pct(fit['drop'])} lower) in {fit['steps']} "
                 f"steps at lr {_fmt(fit['lr'])}",
        evidence=f"a copy of the initialisation trained on the {len(ev.frames)} probe clips only. {batch}",
        reason="" if fits else "a model that cannot memorise two clips is broken before any question of data or "
                               "scale: a detached loss, frozen parameters, a wrong target",
        recommendation="" if fits else "see training.loss_composition and the components' gradient checks",
        measurements=fit))

    blank = blank_frames(model, ev.frames, ev.latents, ev.targets)
    uses = blank["rise"] > spec.blank_frames_min
    checks.append(Check(
        "learning.blank_frames", "The trained model needs its frames", "training", "pass" if uses else "warn",
        expected=f"the loss rises by more than {_pct(spec.blank_frames_min)} when every frame is blank",
        observed=f"loss {_fmt(blank['real'])} with the frames, {_fmt(blank['blank'])} blank ({blank['rise']:+.2%})",
        evidence=f"the checkpoint's model on the probe batch, then with every pixel set to 128. {batch}",
        reason="" if uses else "the model does as well without seeing: it learned the targets' statistics, "
                               "not vision; queries cannot matter",
        recommendation="" if uses else "train longer, or on a task the frames decide (docs/quickstart.md)",
        measurements=blank))

    isolation = clip_isolation(model, ev.frames, ev.latents, ev.targets)
    isolated = isolation["others"] <= 1e-6 * max(isolation["own"], 1e-12) and isolation["own"] > 0
    checks.append(Check(
        "learning.clip_isolation", "Each clip's loss reaches only its own frames", "training",
        "pass" if isolated else "fail",
        expected="the gradient of clip 0's loss with respect to the pixels is zero on every other clip",
        observed=f"|∂ loss_0 / ∂ pixels| per clip: {', '.join(_fmt(v) for v in isolation['per_clip'])}",
        evidence=f"the pixels given to encoder.encode made a leaf, one backward of clip 0's losses. {batch}",
        reason="" if isolated else ("clips of a batch read each other: a reshape or view mixes clips or frames"
                                    if isolation["own"] > 0 else "clip 0's loss does not reach its own pixels"),
        recommendation="" if isolated else "check every view/reshape between (B*T, ...) and (B, T, ...)",
        measurements=isolation))
    return checks
