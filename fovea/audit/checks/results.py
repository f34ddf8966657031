"""Section 6, results: judged on held-out clips (``eval.json``): learned beyond the trivial baselines, the
improvement and its interval, overfitting, the autoregressive gap; from the training metrics: finite losses,
the trend. A model that does not beat the trivial baselines (the mean latent, a copy of the last frame) is ❌
— it learned nothing —; any other result is an outcome, never ❌ (a marginal improvement is ⚠️)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from fovea.audit.checks.wiring import ONE_PASS
from fovea.audit.findings import Check, fmt, pct, verdict

if TYPE_CHECKING:
    from fovea.audit.evidence import Evidence

LEARNED = "The model beats the trivial baselines on held-out clips"


def finite(value: Any) -> bool:
    """Whether ``value`` is a finite number (a metrics line's loss may be null or NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_results(ev: Evidence) -> list[Check]:
    """Results on held-out clips (``eval.json``): learned beyond the trivial baselines, the improvement and
    its interval, overfitting, the autoregressive gap; from the training metrics: finite losses, the trend."""
    spec = ev.spec.results
    warmup = ev.config.training.warmup_steps
    metrics = ev.metrics
    after = [m for m in metrics if m["step"] > warmup]
    window_note = f"the {len(after)} metrics lines after warm-up (step > {warmup})"
    if not after:
        after, window_note = metrics, f"all {len(metrics)} metrics lines (none after warm-up, step > {warmup})"
    checks: list[Check] = []

    lines = [m for m in after if finite(m["loss_fine"]) and finite(m["loss_coarse"])]
    if len(lines) < len(after):
        checks.append(verdict(
            "results.finite", "Losses are finite", "warn", expected="a finite loss in every logged interval",
            observed=f"{len(after) - len(lines)} of {len(after)} metrics lines have no finite loss_fine/loss_coarse",
            evidence=window_note + "; steps with a NaN/inf loss are listed in nonfinite.jsonl",
            reason="steps were skipped or training diverged; the result below uses the finite lines only",
            fix="look at nonfinite.jsonl; lower the learning rate or check the data and targets"))
    tail = lines[-max(1, len(lines) // 4):]
    held = ev.evaluation
    primary = (held or {}).get("primary", "next_latent")
    # the primary objective's own training losses (the weighted total when they were not logged)
    fine_key, coarse_key = ((f"{primary}_fine", f"{primary}_coarse") if tail and finite(tail[0].get(f"{primary}_fine"))
                            else ("loss_fine", "loss_coarse"))
    train_fine = sum(m[fine_key] for m in tail) / len(tail) if tail else None
    train_coarse = sum(m[coarse_key] for m in tail) / len(tail) if tail else None
    if held is None:
        checks.append(verdict(
            "results.learned", LEARNED, "info",
            expected="held-out loss_fine below the mean-latent and copy-previous baselines",
            observed=f"not measurable: {ev.evaluation_origin}",
            fix="train with held-out clips ([eval] val_fraction or val_clips) and audit again"))
    elif held.get("skill") is None:   # an objective without trivial baselines (a plugin's)
        checks.append(verdict(
            "results.learned", LEARNED, "info", expected="held-out loss_fine below the best trivial baseline",
            observed=f"not measured: the objective `{held.get('primary')}` has no trivial baselines (`baselines`)"))
    else:
        checks.append(learned_check(ev, held))
    if ev.model.single_pass:
        checks.append(verdict(
            "results.improvement", "Foveation's improvement", "info",
            expected="(loss_coarse − loss_fine) / loss_coarse", observed=ONE_PASS.format(ev.config.model.encoder.name)
            + ": there is no improvement to measure; compare its held-out loss with a foveated run's (fovea compare)"))
        held = None if held is None else {**held, "improvement": None}
    if held is not None and held.get("improvement") is not None:
        checks += held_out_improvements(ev, held, primary)
    elif tail and not ev.model.single_pass:
        checks.append(improvement_check(ev, {"value": (train_coarse - train_fine) / train_coarse if train_coarse
                                             else 0.0, "ci95": None}, train_fine, train_coarse,
                                        f"training batches: mean over the last {len(tail)} of {window_note} in "
                                        f"metrics.jsonl (no held-out clips)", interval=False))
    if (held is None and not tail) or ev.model.single_pass:
        if held is not None and train_fine is not None:
            checks.append(overfitting_check(ev, held, train_fine))
        return checks
    fine, coarse = ((held["modes"]["fine"]["loss"], held["modes"]["coarse"]["loss"]) if held is not None
                    else (train_fine, train_coarse))
    equal = abs(fine - coarse) <= 10 ** -spec.equal_decimals * max(abs(coarse), 1e-12)
    difference = abs(fine - coarse) / max(abs(coarse), 1e-12)
    checks.append(verdict(
        "results.losses_differ", "loss_fine and loss_coarse differ", not equal, otherwise="warn",
        expected=f"loss_fine ≠ loss_coarse beyond {spec.equal_decimals} significant decimals",
        observed=f"relative difference {difference:.2e}",
        evidence="the same clips as the improvement",
        reason="the symptom of the SPEC's failure modes (query too small or ignored, uniform attention, pass 2 not "
               "fed by pass 1): see the wiring and query checks for the cause",
        fix="if the wiring and query checks pass, the model has not learnt to use the queries yet",
        measurements={"relative_difference": difference}))
    if held is not None and train_fine is not None:
        checks.append(overfitting_check(ev, held, train_fine))
    if held is not None and held.get("autoregressive_gap") is not None:
        checks.append(autoregressive_check(ev, held))
    if tail:
        learned = next((c for c in checks if c.id == "results.learned"), None)
        checks.append(trend_check(lines, window_note, learned))
    return checks


def held_out_improvements(ev: Evidence, held: dict[str, Any], primary: str) -> list[Check]:
    """``results.improvement`` of the primary objective, and the other objectives' learned / improvement checks."""
    origin = f"{held['clips']} held-out clips, {ev.evaluation_origin}"
    checks = [improvement_check(ev, held["improvement"], held["modes"]["fine"]["loss"],
                                held["modes"]["coarse"]["loss"], origin, interval=True)]
    for name, figures in (held.get("objectives") or {}).items():   # the other objectives, each on its own
        figures = {**figures, "step": held["step"]}
        if name != primary and figures.get("skill") is not None:
            checks.append(for_objective(learned_check(ev, figures), name))
        if name != primary and figures.get("improvement") is not None:
            checks.append(for_objective(improvement_check(
                ev, figures["improvement"], figures["modes"]["fine"]["loss"], figures["modes"]["coarse"]["loss"],
                origin, interval=True), name))
    return checks


def for_objective(check: Check, name: str) -> Check:
    """``check`` about one objective of several: its id and title name the objective."""
    check.id, check.title = f"{check.id}.{name}", f"{check.title} ({name})"
    return check


def learned_check(ev: Evidence, held: dict[str, Any]) -> Check:
    """❌ when the fine pass does not beat the best trivial baseline on held-out clips."""
    spec = ev.spec.results
    best = held["best_baseline"]
    baseline, fine = held["baselines"][best]["loss"], held["modes"]["fine"]["loss"]
    skill, (low, high) = held["skill"], held["skill_ci95"]
    if skill <= 0:
        status, word = "fail", "NOT LEARNED"
        reason = (f"the model learned nothing that a trivial predictor ({', '.join(held['baselines'])}) does not "
                  f"know: a falling training loss is not learning")
    elif low <= 0 or skill < spec.skill_low:
        status, word = "warn", "LITTLE LEARNED"
        reason = "the model barely beats a trivial predictor; its other figures (improvement) say little"
    else:
        status, word, reason = "pass", "LEARNED", ""
    others = ", ".join(f"{name} {fmt(entry['loss'])}" for name, entry in held["baselines"].items())
    return verdict(
        "results.learned", LEARNED, status,
        expected=(f"held-out loss_fine clearly below the best trivial baseline: skill = 1 − loss_fine / best "
                  f"baseline > 0 with its interval above 0 (❌ at ≤ 0; ⚠️ below {pct(spec.skill_low)})"),
        observed=(f"skill {skill * 100:+.2f} % (95 % CI {low * 100:+.2f} … {high * 100:+.2f} %): loss_fine "
                  f"{fmt(fine)} vs {best} {fmt(baseline)} ({others})"),
        evidence=f"{held['clips']} held-out clips, checkpoint of step {held['step']}; {ev.evaluation_origin}",
        reason=reason,
        fix="train longer or with a larger learning rate, check that the targets are learnable (docs/quickstart.md), "
            "and run the probes' checks above first",
        band=word, measurements={"skill": skill, "skill_ci95": [low, high], "loss_fine": fine,
                                 "best_baseline": best, "baseline_loss": baseline})


def improvement_check(ev: Evidence, improvement: dict[str, Any], fine: float, coarse: float, evidence: str,
                      interval: bool) -> Check:
    """The spec's bands; on held-out clips an interval that includes 0 is marginal whatever the value."""
    spec = ev.spec.results
    value, ci = improvement["value"], improvement.get("ci95")
    if value < spec.marginal and (ci is None or ci[1] < spec.marginal):
        band = "hurts"
    elif value < spec.solid or (ci is not None and ci[0] <= 0 <= ci[1]):
        band = "marginal"
    elif value < spec.strong:
        band = "solid"
    else:
        band = "strong"
    ratio = coarse / fine if fine else math.inf
    shown_ci = f" (95 % CI {ci[0] * 100:+.2f} … {ci[1] * 100:+.2f} %)" if ci is not None else " (no interval)"
    return verdict(
        "results.improvement", "Foveation improves the prediction", band in ("solid", "strong") and interval,
        otherwise="warn",
        expected=(f"improvement = (loss_coarse − loss_fine) / loss_coarse on held-out clips: < {pct(spec.marginal)} "
                  f"hurts, {pct(spec.marginal)}–{pct(spec.solid)} (or an interval that includes 0) marginal, "
                  f"{pct(spec.solid)}–{pct(spec.strong)} solid, > {pct(spec.strong)} strong"),
        observed=(f"{value * 100:+.3f} %{shown_ci} ({band}); loss_fine {fine:.6g}, loss_coarse {coarse:.6g}, "
                  f"ratio coarse/fine {ratio:.4f}"),
        evidence=evidence,
        reason=("measured on training batches only: no held-out figure, no interval" if not interval and band in
                ("solid", "strong") else "the dynamic reads predict worse than the static ones" if band == "hurts" else
                "the dynamic reads barely beat the static ones, or the interval cannot tell them apart"),
        fix="train longer and with the spec's models; if the query probes warn, fix those first",
        band=band.upper(), measurements={"improvement": value, "ci95": ci, "ratio": ratio, "loss_fine": fine,
                                         "loss_coarse": coarse, "band": band, "held_out": interval})


def overfitting_check(ev: Evidence, held: dict[str, Any], train_fine: float) -> Check:
    """``results.overfitting``: held-out loss_fine against the training loss_fine."""
    spec = ev.spec.results
    val_fine = held["modes"]["fine"]["loss"]
    ratio = val_fine / train_fine if train_fine > 0 else math.inf
    epochs = ev.summary.get("epochs")
    return verdict(
        "results.overfitting", "Held-out loss close to the training loss", not ratio > spec.overfit_ratio,
        otherwise="warn",
        expected=f"held-out loss_fine at most {spec.overfit_ratio:g} × the training loss_fine",
        observed=(f"held-out {fmt(val_fine)} vs training {fmt(train_fine)} (× {ratio:.3f}); "
                  f"{fmt(epochs)} epochs over the training clips"),
        evidence="eval.json against the last quarter of the training lines of metrics.jsonl",
        reason=f"the model fits its training clips better than unseen ones: {fmt(epochs)} epochs",
        fix="more clips, fewer steps (SPEC: never past one epoch), or more weight decay",
        label="OVERFITTING", measurements={"ratio": ratio, "val_fine": val_fine, "train_fine": train_fine,
                                           "epochs": epochs})


def autoregressive_check(ev: Evidence, held: dict[str, Any]) -> Check:
    """``results.autoregressive_gap``: the deployed one-pass loss against the two-pass loss it was trained with."""
    spec = ev.spec.results
    gap = held["autoregressive_gap"]
    low, high = gap["ci95"]
    return verdict(
        "results.autoregressive_gap", "The deployed model predicts as well as the trained one",
        not gap["value"] > spec.autoregressive_gap, otherwise="warn",
        expected=(f"one pass with the model's own queries (as deployed) within {pct(spec.autoregressive_gap)} of "
                  f"the two-pass loss it was trained with"),
        observed=(f"gap {gap['value'] * 100:+.2f} % (95 % CI {low * 100:+.2f} … {high * 100:+.2f} %): "
                  f"autoregressive {fmt(held['modes']['autoregressive']['loss'])} vs fine "
                  f"{fmt(held['modes']['fine']['loss'])}"),
        evidence=f"{held['clips']} held-out clips; {ev.evaluation_origin}",
        reason="pass 2 is trained on queries made by pass 1 (static reads); a deployed model reads with queries "
               "made from its own dynamic reads, which training never shows it",
        fix="report the autoregressive figure next to the two-pass one",
        label="TRAIN/INFERENCE GAP", measurements={"gap": gap})


def trend_check(after: list[dict[str, Any]], window_note: str, learned: Check | None) -> Check:
    """The training loss falls; never ✅ for a model that does not clearly beat the trivial baselines."""
    quarter = max(1, len(after) // 4)
    start = sum(m["loss_fine"] + m["loss_coarse"] for m in after[:quarter]) / quarter
    end = sum(m["loss_fine"] + m["loss_coarse"] for m in after[-quarter:]) / quarter
    change = (end - start) / start if start else 0.0
    if len(after) < 2:
        status, word = "info", "too few lines"
    elif change <= -0.01:
        status, word = "pass", "decreasing"
    elif change < 0.01:
        status, word = "warn", "flat"
    else:
        status, word = "warn", "rising"
    reason = "" if status in ("pass", "info") else \
        ("the loss no longer falls: converged, a learning rate too low, or too few steps" if word == "flat" else
         "the loss rises: too high a learning rate, or divergence")
    if status == "pass" and learned is not None and learned.status != "pass":
        status = "warn"
        reason = ("the training loss falls, but the held-out loss does not clearly beat the trivial baselines "
                  "(results.learned): a falling loss is not learning")
    return verdict(
        "results.trend", "Training loss trend", status,
        expected="the loss decreases after warm-up, towards a model that beats the trivial baselines",
        observed=(f"{word}: mean loss_fine + loss_coarse {start:.6g} → {end:.6g} ({change * 100:+.1f} %) from the "
                  f"first to the last quarter"),
        evidence=window_note + " (training batches)",
        reason=reason,
        fix="" if status == "info" else "look at the lr schedule and grad_norm in metrics.jsonl",
        measurements={"start": start, "end": end, "change": change})
