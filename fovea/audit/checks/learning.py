"""Does learning work at all? The loss's composition and the learning probes; in the report's section 5
(training): a failing one is a broken training, not a result. The measurements are
``fovea.audit.probes.learning``'s.

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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fovea.audit import probes
from fovea.audit.findings import Check, fmt, pct, verdict

if TYPE_CHECKING:
    from fovea.audit.evidence import Evidence


def check_loss_composition(ev: Evidence) -> list[Check]:
    """``training.loss_composition``: the loss trained is the spec's, on the true targets."""
    config, model = ev.config, ev.model
    weights = {name: table.weight for name, table in config.objectives.items()}
    found = probes.loss_composition(model, ev.frames, ev.latents, ev.targets, config.model.lambda_coarse, weights)
    tol = 1e-3
    wrong, unscored = [], []
    for name in model.objectives:
        for mode in probes.MODES:
            got, want = found[f"{name}_{mode}_weight"], found[f"{name}_{mode}_expected"]
            if abs(got - want) > tol * max(abs(want), 1.0):
                wrong.append(f"{name}_{mode} weighs {fmt(got)} in the loss, expected {fmt(want)}"
                             + (" (detached: no gradient)" if got == 0 and want else ""))
            gap = found[f"{name}_{mode}_rescored_gap"]
            if gap is None:
                unscored.append(f"{name}_{mode}")
            elif gap > tol * max(found[f"{name}_{mode}_scale"], 1e-6):
                wrong.append(f"{name}_{mode} differs from its predictions scored on the true targets by {fmt(gap)} "
                             f"(a target off by one frame or token?)")
    observed = "; ".join(f"{n}: coarse × {fmt(found[f'{n}_coarse_weight'])}, fine × {fmt(found[f'{n}_fine_weight'])}"
                         for n in model.objectives)
    if unscored:
        observed += f"; not scored again (no known targets): {', '.join(unscored)}"
    return [verdict(
        "training.loss_composition", "The loss trained is the spec's, on the true targets", not wrong,
        expected=f"loss = Σ weight · (loss_fine + λ_coarse · loss_coarse), λ_coarse = {fmt(config.model.lambda_coarse)} "
                 f"(config), weights {weights}; each term on the true next-frame targets (SPEC \"Two-pass training\")",
        observed=observed,
        evidence="d loss / d (each term's loss per clip) × clips, by autograd, in one forward of the checkpoint's model "
                 "on the probe batch; every term scored again from the model's own predictions against the "
                 f"targets (relative tolerance {fmt(tol)}). Probe batch: {ev.batch_origin}.",
        reason="; ".join(wrong) + ": the loss optimised is not the one the improvement is measured on",
        fix="loss = loss_fine + lambda_coarse * loss_coarse, both undetached, predictions of frame t against "
            "latents[:, t]",
        measurements=found)]


def check_learning(ev: Evidence) -> list[Check]:
    """The learning probes (section training): initial loss, overfitting one batch, blank frames, clip isolation."""
    spec, model = ev.spec.learning, ev.model
    batch = f"Probe batch: {ev.batch_origin}."

    init = probes.init_loss(ev.initial, ev.frames, ev.latents, ev.targets)
    losses, trivial = init["losses"], init["trivial"]
    ratios = {n: losses[n] / trivial[n] for n in trivial if trivial[n] > 0}
    high = {n: r for n, r in ratios.items() if r > spec.init_ratio_max}
    checks = [verdict(
        "learning.init_loss", "The loss at initialisation is where it should be",
        "info" if not ratios else ("warn" if high else "pass"),
        expected=f"the initialisation's loss within {fmt(spec.init_ratio_max)}× that of the output an initialisation "
                 f"should be close to, on the same batch (next_latent: zeros; caption: uniform tokens, log V)",
        observed=("not measured: no trivial predictor known for " + ", ".join(model.objectives)) if not ratios else
        "; ".join(f"{n}: {fmt(losses[n])} vs {fmt(trivial[n])} ({r:.2f}×)" for n, r in ratios.items()),
        evidence=f"a forward of the run's initialisation (a fresh seeded build). {batch}",
        reason="an initial loss far above a trivial predictor's: outputs at a wrong scale (an init std, a missing "
               "normalisation); training first spends steps undoing it" if high else "",
        fix="check the initialisation of the head and the learned queries" if high else "",
        measurements={"ratios": ratios, "trivial": trivial})]

    fit = probes.overfit_one_batch(ev.initial, ev.frames, ev.latents, ev.targets, spec.overfit_steps)
    checks.append(verdict(
        "learning.overfit_one_batch", "A copy of the model can overfit one batch", fit["drop"] >= spec.overfit_drop,
        expected=f"its loss falls by ≥ {pct(spec.overfit_drop)} in {spec.overfit_steps} AdamW steps on the probe "
                 f"batch alone",
        observed=f"loss {fmt(fit['first'])} → {fmt(fit['last'])} ({pct(fit['drop'])} lower) in {fit['steps']} "
                 f"steps at lr {fmt(fit['lr'])}",
        evidence=f"a copy of the initialisation trained on the {len(ev.frames)} probe clips only. {batch}",
        reason="a model that cannot memorise two clips is broken before any question of data or scale: a detached "
               "loss, frozen parameters, a wrong target",
        fix="see training.loss_composition and the components' gradient checks", measurements=fit))

    blank = probes.blank_frames(model, ev.frames, ev.latents, ev.targets)
    checks.append(verdict(
        "learning.blank_frames", "The trained model needs its frames", blank["rise"] > spec.blank_frames_min,
        otherwise="warn",
        expected=f"the loss rises by more than {pct(spec.blank_frames_min)} when every frame is blank",
        observed=f"loss {fmt(blank['real'])} with the frames, {fmt(blank['blank'])} blank ({blank['rise']:+.2%})",
        evidence=f"the checkpoint's model on the probe batch, then with every pixel set to 128. {batch}",
        reason="the model does as well without seeing: it learned the targets' statistics, not vision; queries "
               "cannot matter",
        fix="train longer, or on a task the frames decide (docs/quickstart.md)", measurements=blank))

    isolation = probes.clip_isolation(model, ev.frames, ev.latents, ev.targets)
    own = isolation["own"]
    checks.append(verdict(
        "learning.clip_isolation", "Each clip's loss reaches only its own frames",
        isolation["others"] <= 1e-6 * max(own, 1e-12) and own > 0,
        expected="the gradient of clip 0's loss with respect to the pixels is zero on every other clip",
        observed=f"|∂ loss_0 / ∂ pixels| per clip: {', '.join(fmt(v) for v in isolation['per_clip'])}",
        evidence=f"the pixels given to encoder.encode made a leaf, one backward of clip 0's losses. {batch}",
        reason="clips of a batch read each other: a reshape or view mixes clips or frames" if own > 0 else
        "clip 0's loss does not reach its own pixels",
        fix="check every view/reshape between (B*T, ...) and (B, T, ...)", measurements=isolation))
    return checks
