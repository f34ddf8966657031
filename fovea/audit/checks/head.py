"""Section 4, prediction head: the head named, its options, FiLM conditioning on the LLM state, full-latent
prediction (SPEC.md "Prediction head"). The measurements are ``fovea.audit.probes.head``'s."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fovea.audit import probes
from fovea.audit.findings import Check, fmt, pct, verdict
from fovea.audit.spec import same

if TYPE_CHECKING:
    from fovea.audit.evidence import Evidence

CONDITIONING = "FiLM conditioning on the LLM state"


def check_head(ev: Evidence) -> list[Check]:
    """The head named, its options, FiLM conditioning on the LLM state, full-latent prediction."""
    spec, config, model = ev.spec.head, ev.config, ev.model
    name = config.model.head.name
    ok = name == spec.name
    checks = [verdict(
        "head.name", "Prediction head", ok, otherwise="warn",
        expected=f"`{spec.name}` (SPEC.md \"Prediction head\": FiLM)",
        observed=f"`{name}` ({type(model.head).__module__}.{type(model.head).__qualname__})",
        evidence="[model.head] name in config.toml",
        reason="not the spec's head; the probes below measure conditioning and what it predicts",
        label="NOT IN SPEC", fix=f"set `[model.head] name = \"{spec.name}\"`")]
    if ok and spec.options:
        options = config.model.head.options.model_dump()
        differ = {k: (options.get(k), v) for k, v in spec.options.items() if not same(options.get(k), v)}
        checks.append(verdict(
            "head.options", f"`{spec.name}` sizes", not differ, otherwise="warn",
            expected=", ".join(f"{k} = {fmt(v)}" for k, v in spec.options.items()),
            observed=", ".join(f"{k} = {fmt(options.get(k))}" for k in spec.options),
            evidence="[model.head] options in config.toml",
            reason="a smaller or larger head than the spec's (debug sizes in the quick start)",
            fix="use the spec's widths for a run that tests the spec", label="MODIFIED",
            measurements={"differ": differ}))

    if "next_latent" not in model.objectives:
        checks.append(verdict("head.conditioning", CONDITIONING, "info",
                              expected="the head predicts the next latent from the LLM state and the previous latent",
                              observed=f"not measured: the run does not train next_latent "
                                       f"({', '.join(model.objectives)}), so the head is never called"))
        return checks
    calls = probes.head_inputs(model, ev.frames, ev.latents, ev.targets)
    if not calls or len(calls[0]) < 2:
        checks.append(verdict("head.conditioning", CONDITIONING, False,
                              expected="the head is called with (hidden, previous latent)",
                              observed="the head was not called with two inputs in a forward",
                              reason="the model does not use its head as the contract says"))
        return checks
    hidden, prev = calls[-1][0], calls[-1][1]
    probe = probes.head_probe(model.head, hidden, prev)
    film = hasattr(model.head, "h_to_film")
    checks.append(verdict(
        "head.conditioning", CONDITIONING, probe["hidden_sensitivity"] > 1e-3,
        expected="the LLM hidden state modulates the latent features (γ·feat + β); the prediction moves with it",
        observed=(f"swapping hidden states between frames moves the prediction by {pct(probe['hidden_sensitivity'])} "
                  f"of its mean magnitude; swapping previous latents by {pct(probe['prev_sensitivity'])}"
                  + ("; the head has `h_to_film`" if film else "")),
        evidence="the head's inputs captured from a forward (pass 2) and fed back with rows swapped",
        reason="the prediction ignores the LLM: queries and foveation cannot matter",
        fix="condition the head on the hidden state (FiLM: γ, β from h)", measurements=probe))
    checks.append(full_latent_check(ev, probe))
    return checks


def full_latent_check(ev: Evidence, probe: dict[str, float]) -> Check:
    """``head.full_latent``: a head with every weight zeroed is a constant (full latent), not ``prev`` (residual)."""
    shape_ok = probe["output_shape_matches"] == 1.0
    residual = probe["zeroed_vs_prev"] < 1e-3
    full = shape_ok and probe["zeroed_vs_prev"] > 0.5
    wanted, opposite = (full, residual) if ev.spec.head.prediction == "full" else (residual, full)
    status = "pass" if wanted else "fail" if opposite or not shape_ok else "warn"
    kind = "full latent" if full else "residual on the previous latent" if residual else "unclear"
    return verdict(
        "head.full_latent", "The head predicts the full next latent", status,
        expected=f"{ev.spec.head.prediction} latent of the next frame, shape of the target (SPEC: not a residual)",
        observed=(f"{kind}: with every head weight zeroed the output is ‖out − prev‖/‖prev‖ = "
                  f"{fmt(probe['zeroed_vs_prev'])} from the previous latent; output shape matches the target: {shape_ok}"),
        evidence="a copy of the head with all parameters set to zero: a residual head then returns the previous "
                 "latent, a full-latent head a constant",
        reason="SPEC: a residual head can collapse to \"nothing changes\"",
        fix="decode the modulated features to the latent directly, without adding prev",
        measurements={"zeroed_vs_prev": probe["zeroed_vs_prev"], "shape_matches": shape_ok})
