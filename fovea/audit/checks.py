"""The audit's checks: one function per area of SPEC.md, each returning ``Check`` records.

Every check compares what the spec expects with what was *measured* on the run (probes on its rebuilt
model and a real batch, its metrics, its files), never with what the code says. Statuses:

- ✅ ``pass``: aligned with the spec.
- ⚠️ ``warn``: a deliberate or harmless deviation (a changed training value, the post-hoc encoder, a
  debug-size model), or a symptom worth a look (near-uniform attention, a marginal result).
- ❌ ``fail``: the run contradicts the spec: a component with the wrong trainability, broken two-pass
  wiring, a prediction that sees its target, a query the encoder ignores, patch features that depend
  on the query, a residual head, an idle GPU.
- ℹ️ ``info``: not measurable from this run; the record says how to measure it.

Thresholds that are the spec's live in the spec file. Results are judged on held-out clips
(``eval.json``): a model that does not beat the trivial baselines (the mean latent, a copy of the last
frame) is ❌ — it learned nothing —, any other result is an outcome, never ❌ (a marginal improvement
is ⚠️). More epochs than the spec allows are ⚠️ (a risk of overfitting, measured by the held-out loss).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from fovea.audit import probes
from fovea.audit.findings import LABELS, SECTIONS, SEVERITY, SYMBOLS, Check, Status, _fmt, _pct  # noqa: F401
from fovea.audit.learning import check_learning, check_loss_composition

if TYPE_CHECKING:
    from fovea.audit.run import Evidence
    from fovea.audit.spec import Component


def run_checks(ev: "Evidence", groups: list[Callable[["Evidence"], list[Check]]] | None = None) -> list[Check]:
    """The check groups (default: all, in report order) on one run's evidence, at the spec's levels."""
    checks: list[Check] = []
    for group in groups or CHECK_GROUPS:
        checks += group(ev)
    return [apply_level(check, ev.spec.requirements) for check in checks]


LEVEL_WORDS = {"must": "a MUST of the spec", "should": "a SHOULD of the spec", "info": "informative in this spec"}


def apply_level(check: Check, requirements: dict[str, str]) -> Check:
    """A violated (⚠️/❌) check at the level the spec gives it: must ❌, should ⚠️, info ℹ️; passes unchanged."""
    level = requirements.get(check.id)
    if level is None or check.status not in ("warn", "fail"):
        return check
    status = {"must": "fail", "should": "warn", "info": "info"}[level]
    if status != check.status:
        check.reason = f"{LEVEL_WORDS[level]}: " + (check.reason or "violated")
        check.status = status
    return check


# --------------------------------------------------------------------------- helpers


def _count(n: int) -> str:
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)


def _names(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return a == b


def config_value(config: Any, dotted: str) -> Any:
    """``model.encoder.pretrained`` -> its value in the config (plugin options included); None if absent."""
    value = config
    for key in dotted.split("."):
        value = getattr(value, key, None) if not isinstance(value, dict) else value.get(key)
        if value is None:
            return None
    return value


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _belongs(name: str, modules: list[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def _is_random(config: Any, component: "Component") -> bool:
    return component.pretrained_key is not None and not config_value(config, component.pretrained_key)


def _merge_recommendations(checks: list[Check], template: str) -> None:
    """One recommendation for a group of like checks: ``template`` with their fixes joined, on the first."""
    items = [c for c in checks if c.recommendation and c.status != "pass"]
    if items:
        fixes = ", ".join(c.recommendation for c in items)
        for c in items:
            c.recommendation = ""
        items[0].recommendation = template.format(fixes)


# --------------------------------------------------------------------------- 1. components


def check_components(ev: "Evidence") -> list[Check]:
    """Trainability per component: requires_grad, gradient on a real batch, weights moved; VAE frozen."""
    reach = probes.gradient_reach(ev.model, ev.frames, ev.latents, ev.targets)
    idle = set(ev.model.idle_parameters())
    trained = {n: p.detach() for n, p in ev.model.named_parameters()}
    initial = {n: p.detach() for n, p in ev.initial.named_parameters()}
    flags = {n: p.requires_grad for n, p in ev.model.named_parameters()}
    checks: list[Check] = []
    covered: set[str] = set()
    for key, component in ev.spec.components.items():
        if component.location == "vae":
            checks.append(_vae_check(ev, key, component))
        else:
            names = [n for n in trained if _belongs(n, component.modules)]
            covered.update(names)
            used = [n for n in names if n not in idle]
            if names and not used:
                checks.append(Check(
                    f"components.{key}", f"{component.description} {component.state}", "components", "info",
                    expected=f"{component.state} (SPEC.md \"Components\")",
                    observed=f"not used: none of the run's objectives ({', '.join(ev.model.objectives)}) reads its "
                             f"{len(names)} tensors, which stay frozen at their initialisation",
                    evidence="the objectives' `reads` (fovea.core.model.FoveatedVLM.idle_parameters)"))
                continue
            checks.append(_trainability_check(component, key, used, trained, initial, flags, reach))
    models = check_components_models(ev)
    _merge_recommendations(models, "set {} (or local copies) for a run that tests the spec (configs/phase1.toml "
                                   "names them)")
    checks += models
    others = [n for n in trained if n not in covered]
    if others:
        checks.append(Check(
            "components.unassigned", "Parameters outside the spec's components", "components", "info",
            expected="every parameter belongs to a component of the spec",
            observed=f"{len(others)} tensors in no component: {_names(others)}",
            reason="their trainability is not checked against the spec",
            recommendation="name them in a component of the spec file (`modules`)"))
    return checks


def _trainability_check(component, key, names, trained, initial, flags, reach) -> Check:
    title = f"{component.description} {component.state}"
    expected = (f"{component.state} (SPEC.md \"Components\"): " +
                ("requires_grad, a gradient on a real batch, weights moved from initialisation"
                 if component.state == "trainable" else "requires_grad off, weights equal to initialisation"))
    if not names:
        return Check(f"components.{key}", title, "components", "fail", expected,
                     observed=f"the model has no parameters named {_names(component.modules)}",
                     reason="the spec names a part the model does not have",
                     recommendation="check the spec file's `modules` against the model's parameter names")

    numel = {n: trained[n].numel() for n in names}
    total = sum(numel.values())
    flagged = [n for n in names if flags[n]]
    frozen = [n for n in names if not flags[n]]
    moved = {n: not torch.equal(trained[n], initial[n]) for n in names}
    frozen_read = [n for n in frozen if reach[n] > 0]          # the loss reaches them, yet they do not train
    frozen_unread = [n for n in frozen if reach[n] == 0]       # never read by the forward: frozen on purpose
    unreached = [n for n in flagged if reach[n] == 0]
    stuck = [n for n in flagged if not moved[n]]
    frozen_moved = [n for n in frozen if moved[n]]
    delta = math.sqrt(sum(float((trained[n] - initial[n]).float().pow(2).sum()) for n in flagged))
    norm = math.sqrt(sum(float(initial[n].float().pow(2).sum()) for n in flagged))
    flagged_numel = sum(numel[n] for n in flagged)
    measurements = {"tensors": len(names), "parameters": total, "trainable_parameters": flagged_numel,
                    "frozen_but_reached": frozen_read, "frozen_never_read": frozen_unread,
                    "trainable_without_gradient": unreached, "trainable_unchanged": stuck,
                    "frozen_changed": frozen_moved, "relative_change": delta / norm if norm else None}
    observed = (f"requires_grad on {len(flagged)}/{len(names)} tensors ({_pct(flagged_numel / total)} of "
                f"{_count(total)} params); gradient reaches {len(flagged) - len(unreached)}/{len(flagged)} of "
                f"them; {len(flagged) - len(stuck)}/{len(flagged)} moved from init")
    if flagged and norm:
        observed += f" (relative change {_pct(delta / norm)})"
    evidence = ("One forward and backward of the checkpoint's model on the probe batch with every parameter "
                "switched to requires_grad, to see which parameters the loss reaches; the checkpoint "
                "compared tensor by tensor with a fresh build from the run's config and seed (the "
                "initialisation).")
    if frozen_unread:
        evidence += f" Frozen and never read by the forward (correctly left out of the optimizer): {_names(frozen_unread)}."

    problems, warnings, recommendation = [], [], ""
    if component.state == "trainable":
        if frozen_read:
            read_numel = sum(numel[n] for n in frozen_read)
            problems.append(f"{len(frozen_read)} tensors ({_count(read_numel)} params) that the loss reaches are "
                            f"frozen: {_names(frozen_read)}")
            recommendation = (f"make the {component.description} trainable (`trainable = true` in its config "
                              f"table): the spec trains it")
        if not flagged:
            problems.append("nothing in it is trainable")
        elif len(stuck) == len(flagged):
            problems.append("none of its trainable weights moved from initialisation: it never trained")
            recommendation = recommendation or "check that the optimizer holds its parameters and that the run trained"
        elif stuck:
            warnings.append(f"{len(stuck)} trainable tensors never moved: {_names(stuck)}")
        if unreached:
            warnings.append(f"{len(unreached)} trainable tensors get no gradient on a real batch: {_names(unreached)}")
    else:
        if flagged:
            problems.append(f"{len(flagged)} tensors are trainable: {_names(flagged)}")
            recommendation = "freeze it (requires_grad_(False)); the spec keeps it fixed"
    if frozen_moved:
        problems.append(f"{len(frozen_moved)} frozen tensors differ from initialisation: {_names(frozen_moved)} "
                        f"(the checkpoint does not come from this config, or something trained them)")
    if problems:
        status, reason = "fail", "; ".join(problems + warnings)
        if component.state == "trainable" and frozen_read:
            reason += (". SPEC \"Failure modes\": a silently frozen component gives no learning where the spec "
                       "expects it")
    elif warnings:
        status, reason = "warn", "; ".join(warnings)
        recommendation = "find why these parameters are unused or frozen in effect (dead weights, a detached path)"
    else:
        status, reason = "pass", ""
    return Check(f"components.{key}", title, "components", status, expected, observed, evidence, reason,
                 recommendation, measurements=measurements)


def _vae_check(ev, key, component) -> Check:
    params = list(ev.vae.parameters())
    trainable = [n for n, p in ev.vae.named_parameters() if p.requires_grad]
    in_checkpoint = [n for n in ev.checkpoint_extra if n.startswith("vae.")]
    problems = []
    if trainable:
        problems.append(f"the VAE that load_vae returns has requires_grad on {len(trainable)}/{len(params)} "
                        f"tensors ({_names(trainable)})")
    if in_checkpoint:
        problems.append(f"the model's checkpoint holds {len(in_checkpoint)} VAE tensors ({_names(in_checkpoint)}): "
                        f"it was trained with the model")
    if ev.vae_change is not None and ev.vae_change > 0:
        problems.append(f"the run's VAE differs from the initialisation it was made with (max |Δw| "
                        f"{_fmt(ev.vae_change)}): it was trained or replaced")
    state = component.state
    if state == "frozen":
        status = "fail" if problems else "pass"
    else:
        status = "pass" if trainable else "fail"
        problems = [] if trainable else ["the VAE is frozen, the spec trains it"]
    observed = (f"requires_grad on {len(trainable)}/{len(params)} tensors; "
                f"{len(in_checkpoint)} VAE tensors in model.safetensors")
    if ev.vae_change is not None:
        observed += "; weights equal to their initialisation" if ev.vae_change == 0 else \
            f"; weights differ from their initialisation (max |Δw| {_fmt(ev.vae_change)})"
    return Check(
        f"components.{key}", f"{component.description} {state}", "components", status,
        expected=f"{state} (SPEC.md \"Components\"): used only to precompute the targets, never trained",
        observed=observed,
        evidence=f"VAE loaded through fovea.core.vae.load_vae from {ev.vae_origin}; checkpoint tensor names checked "
                 f"for a VAE; a VAE without pretrained weights compared weight by weight with "
                 f"save_random_vae(model.vae.init, run.seed).",
        reason="; ".join(problems) + (". SPEC \"Failure modes\": the VAE trained drifts the targets" if problems else ""),
        recommendation="load the VAE frozen (fovea.core.vae.load_vae) and keep it out of the model and optimizer"
        if status == "fail" else "",
        measurements={"trainable_tensors": trainable, "checkpoint_vae_tensors": in_checkpoint,
                      "max_weight_change_from_seed": ev.vae_change})


def _architecture_of(ev: "Evidence", component: "Component") -> dict[str, Any] | None:
    """The part's transformers/diffusers config as a dict, if it has one."""
    if component.location == "vae":
        module = ev.vae
    else:
        module = ev.initial
        for name in component.modules[0].split("."):
            module = getattr(module, name, None)
    # a transformers model has `config`; an encoder may expose its backbone's (fovea.core.contracts.Encoder)
    hf_config = getattr(module, "backbone_config", None) or getattr(module, "config", None)
    if hf_config is None:
        return None
    if hasattr(hf_config, "to_dict"):
        return hf_config.to_dict()
    return dict(hf_config) if isinstance(hf_config, dict) else None


def _model_name(model_type: str) -> str:
    """transformers' name for a ``model_type`` (``dinov2`` -> ``Dinov2``), from its config class; else the type."""
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    except ImportError:
        return str(model_type)
    return CONFIG_MAPPING_NAMES.get(model_type, str(model_type)).removesuffix("Config")


def _model_check(ev: "Evidence", key: str, component: "Component") -> Check:
    configured = config_value(ev.config, component.pretrained_key) if component.pretrained_key else None
    table = component.pretrained_key.rsplit(".", 1)[0] if component.pretrained_key else None
    arch = _architecture_of(ev, component)
    mismatched = {}
    if arch is not None:
        for name, value in component.architecture.items():
            actual = arch.get(name)
            if not _same(actual, value):
                mismatched[name] = (actual, value)
    # Another kind of model (the spec's `model_type` differs: a DINOv2 backbone for DINOv3) is said as such:
    # its sizes, registers and patch differ by construction, a list of them would only hide that.
    other_model = None
    if "model_type" in mismatched and mismatched["model_type"][0]:
        actual, spec = mismatched["model_type"]
        other_model = f"a {_model_name(actual)} model (`{actual}`), not the spec's {_model_name(spec)} (`{spec}`)"
    arch_text = ("architecture unknown (no transformers/diffusers config)" if arch is None else
                 "architecture matches the spec" if not mismatched else other_model or
                 "architecture differs: " + ", ".join(f"{k} {_fmt(a)} (spec {_fmt(b)})" for k, (a, b) in mismatched.items()))
    expected = f"`{component.pretrained}`" if component.pretrained else "the spec's architecture"
    if component.pretrained is None or (configured and configured == component.pretrained):
        status, observed = ("pass" if not mismatched else "warn"), f"`{configured or 'random init'}`; {arch_text}"
    elif configured and Path(str(configured)).expanduser().is_dir() and arch is not None and not mismatched:
        status, observed = "pass", f"local directory `{configured}`; {arch_text}"
    elif configured:
        status, observed = "warn", f"other weights `{configured}`; {arch_text}"
    else:
        size = config_value(ev.config, table + ".size") if table else None
        init = ev.config.model.vae.init if component.location == "vae" else "random"   # a VAE's: model.vae.init
        status = "warn"
        observed = ("random initialisation" if init == "random" else f"the fixed `{init}` initialisation (model.vae.init)") \
            + (f" at size `{size}`" if size else "") + f"; {arch_text}"
    if status == "pass":
        reason = ""
    elif other_model:
        reason = (f"the run uses {other_model}: a deliberate substitution or a mistake, either way its results say "
                  f"little about the spec's")
    elif mismatched:
        reason = ("the run trains another model than the spec's: its results say little about the spec's (fine for a "
                  "debug run such as the quick start)")
    else:
        reason = "the spec's architecture without its weights: right for profiling the spec's scale, not for its results"
    return Check(
        f"components.{key}.model", f"{component.description}: the spec's weights", "components",
        status, expected, observed,
        evidence=f"config key `{component.pretrained_key}`; architecture read from the built part's config "
                 f"({', '.join(component.architecture) or 'nothing to compare'})",
        reason=reason, label="" if status == "pass" else "MODIFIED",
        recommendation="" if status == "pass" or not component.pretrained else
        f"`{component.pretrained_key} = \"{component.pretrained}\"`" + (
            f" and `{table}.backbone` set to the backbone that reads it"
            if other_model and table and config_value(ev.config, table + ".backbone") is not None else ""),
        measurements={"configured": configured, "architecture_mismatch": mismatched})


# --------------------------------------------------------------------------- 2. wiring


def check_wiring(ev: "Evidence") -> list[Check]:
    """Pass 1 static, pass 2 shifted and fed by pass 1, no target leak, each frame encoded once."""
    # The wiring is a property of the code, not of the data: the first probe clip shows it, at half the cost.
    model, frames, latents = ev.model, ev.frames[:1], ev.latents[:1]
    targets = {k: v[:1] for k, v in (ev.targets or {}).items()}
    tol = ev.spec.wiring.tolerance
    B, T = frames.shape[:2]
    batch = f"Probe batch: the first of {ev.batch_origin}."
    checks: list[Check] = []
    if not ev.batch_is_real:
        checks.append(Check(
            "wiring.probe_batch", "Probes ran on noise frames", "wiring", "warn",
            expected="probes read real clips of the run's data source", observed=ev.batch_origin,
            reason="wiring probes hold on any frames, but attention and correlation measured on noise say less "
                   "about the run's data",
            recommendation="audit where the run's data source is readable"))
    if model.single_pass:   # a query-free encoder: no pass 2 to wire, no query to shift
        checks += _single_pass_wiring(ev, model, frames, latents, targets, tol, batch)
        return checks

    wiring = probes.query_wiring(model, frames, latents, targets)
    q_scale = max(model.q_static.abs().max().item(), model.q_init.abs().max().item(), 1e-12)
    calls = int(wiring["attend_calls"])
    call_problem = "" if calls == 2 else f"encoder.attend ran {calls} times in one forward, not 2 (pass 1, pass 2)"
    static_ok = calls == 2 and wiring["pass1_static"] <= tol * q_scale
    checks.append(Check(
        "wiring.pass1_static", "Pass 1 reads every frame with the same static query", "wiring",
        "pass" if static_ok else "fail",
        expected="z°_t = attend(q_static, frame_t) for every t (SPEC.md \"Two-pass training\")",
        observed=call_problem or f"max |query − q_static| over the {B * T} pass-1 reads = {_fmt(wiring['pass1_static'])}",
        evidence=f"The queries of every encoder.attend call recorded during one forward. {batch}",
        reason="" if static_ok else "pass 1 must plan from one fixed view of every frame; otherwise the coarse "
               "baseline that loss_fine is measured against is not the spec's",
        recommendation="" if static_ok else "feed q_static (expanded over B·T) to the first attend call",
        measurements=wiring))

    shift_ok = calls == 2 and wiring["pass2_shift"] <= tol * q_scale
    checks.append(Check(
        "wiring.pass2_shift", "Pass 2 reads frame t with the query made after frame t−1", "wiring",
        "pass" if shift_ok else "fail",
        expected="pass-2 queries = [q_init, q_1 … q_{T−1}], q_t = query_head(h after z°_t)",
        observed=call_problem or f"max |pass-2 query − shifted pass-1 query| = {_fmt(wiring['pass2_shift'])}",
        evidence="query_head's outputs captured by a forward hook and shifted by one frame (q_init first), "
                 "compared with the queries of the second encoder.attend call.",
        reason="" if shift_ok else "SPEC \"Failure modes\": pass 2 not fed by pass 1 (queries not shifted, or "
               "static) gives ratio 1.00 — foveation cannot help",
        recommendation="" if shift_ok else "shifted = cat([q_init, queries[:, :-1]], dim=1) and read pass 2 with it",
        measurements={"pass2_shift": wiring["pass2_shift"], "query_scale": q_scale}))

    perturb = probes.pass1_perturbation(model, frames, latents, targets=targets)
    t = perturb["t"]
    if perturb["change"] is None:
        follows_ok, observed = False, f"encoder.attend ran {perturb['attend_calls']} times in one forward, not 2"
        reason = "the two-pass structure is not there to probe"
    else:
        change, threshold = perturb["change"], tol * max(perturb["scale"], 1e-12)
        before, after = max(change[: t + 1]), min(change[t + 1:]) if t + 1 < T else math.inf
        follows_ok = before <= threshold and after > threshold
        observed = (f"nudging pass-1 read of frame {t + 1}: pass-2 queries of frames 1…{t + 1} change by ≤ "
                    f"{_fmt(before)}, of frames {t + 2}…{T} by ≥ {_fmt(after)}")
        reasons = []
        if before > threshold:
            reasons.append(f"a pass-2 read of frame ≤ {t + 1} follows the pass-1 read of frame {t + 1}: frame t is read "
                           f"with a query produced after seeing frame t (queries not shifted)")
        if after <= threshold:
            reasons.append("later pass-2 reads do not follow pass 1 at all: pass 2 is not fed by pass 1 "
                           "(static or constant queries)")
        reason = "; ".join(reasons)
    checks.append(Check(
        "wiring.pass2_follows_pass1", "Pass-2 reads follow pass 1, one frame later", "wiring",
        "pass" if follows_ok else "fail",
        expected="perturbing pass-1 output of frame t changes the pass-2 reads of frames > t only",
        observed=observed,
        evidence=f"The pass-1 features of frame {t + 1} shifted by one standard deviation; the queries of the "
                 f"second attend call compared with an unperturbed forward, per frame (threshold "
                 f"{_fmt(tol)} × max |query|). {batch}",
        reason=reason + (". SPEC \"Failure modes\": pass 2 not fed by pass 1 gives ratio 1.00" if reason else ""),
        recommendation="" if follows_ok else "derive the pass-2 queries from the pass-1 hidden states, shifted by one",
        measurements=perturb))

    if "next_latent" in model.objectives:
        leak = probes.target_leak(model, frames, latents, targets)      # T copies of the clip in one forward
        with torch.no_grad():
            base = model(frames, latents, targets)
        pred_scale = max(base.pred_fine.abs().max().item(), base.pred_coarse.abs().max().item(), 1e-12)
        leaks = {name: (leak[name], tol * max(pred_scale, leak[f"{name}_response"])) for name in ("pred_coarse", "pred_fine")}
        leaking = [name for name, (value, threshold) in leaks.items() if value > threshold]
        checks.append(Check(
            "wiring.no_target_leak", "No prediction sees its own target frame", "wiring",
            "fail" if leaking else "pass",
            expected="the prediction for frame t depends on frames < t only (SPEC: both passes)",
            observed=(f"replacing frames ≥ t by noise moves the prediction for frame t by ≤ "
                      f"{_fmt(leak['pred_coarse'])} (coarse), {_fmt(leak['pred_fine'])} (fine); predictions that may "
                      f"see the change move by {_fmt(leak['pred_coarse_response'])}, {_fmt(leak['pred_fine_response'])}"),
            evidence=f"T copies of the clip in one forward, copy t with frames and latents ≥ t replaced by noise "
                     f"(fovea.audit.probes.target_leak); threshold {_fmt(tol)} × prediction scale. {batch}",
            reason=(f"{' and '.join(leaking)} moves when its own target frame changes: the wiring is off by one. SPEC "
                    "\"Failure modes\": a suspiciously low loss that means nothing") if leaking else "",
            recommendation="predict frame t from the hidden state before z_t (positions [mode, z_1 … z_{T−1}])"
            if leaking else "",
            measurements=leak))

    else:
        checks.append(Check(
            "wiring.no_target_leak", "No prediction sees its own target frame", "wiring", "info",
            expected="the prediction for frame t depends on frames < t only (SPEC: both passes)",
            observed=f"not measured: the run does not train next_latent ({', '.join(model.objectives)})"))

    sizes = probes.encode_calls(model, frames, latents, targets)
    once = sizes == [B * T]
    checks.append(Check(
        "wiring.encode_once", "Each frame is encoded once per step", "wiring", "pass" if once else "warn",
        expected=f"one encoder.encode call over all B·T = {B * T} frames; both passes reuse it",
        observed=f"encode calls per forward, frames each: {sizes}",
        reason="" if once else "the expensive per-frame encoding runs more than once: slower, and pass 1 and "
               "pass 2 may not read the same features",
        recommendation="" if once else "encode once and attend twice against the same cache",
        measurements={"encode_call_sizes": sizes}))
    checks.append(_pass_independence_check(model, frames, latents, targets, tol, batch))
    if "caption" in model.objectives:
        checks.append(_caption_causality_check(model, ev, tol))
    return checks


ONE_PASS = "not applicable: the encoder `{}` reads no query (`uses_query = False`): one pass, its coarse is its fine"


def _single_pass_wiring(ev, model, frames, latents, targets, tol, batch) -> list[Check]:
    """The wiring of a query-free model: no leak, each frame encoded once; the two-pass checks say why not."""
    name = ev.config.model.encoder.name
    checks = [Check(key, title, "wiring", "info", expected="two passes (SPEC \"Two-pass training\")",
                    observed=ONE_PASS.format(name))
              for key, title in (("wiring.pass1_static", "Pass 1 reads every frame with the same static query"),
                                 ("wiring.pass2_shift", "Pass 2 reads frame t with the query made after frame t−1"),
                                 ("wiring.pass2_follows_pass1", "Pass-2 reads follow pass 1, one frame later"),
                                 ("wiring.pass_independence", "Each pass predicts from its own states"))]
    if "next_latent" in model.objectives:
        leak = probes.target_leak(model, frames, latents, targets)
        with torch.no_grad():
            scale = max(model(frames, latents, targets).pred_fine.abs().max().item(), 1e-12)
        leaking = leak["pred_fine"] > tol * max(scale, leak["pred_fine_response"])
        checks.append(Check(
            "wiring.no_target_leak", "No prediction sees its own target frame", "wiring", "fail" if leaking else "pass",
            expected="the prediction for frame t depends on frames < t only (all K tokens of frame t come after it)",
            observed=f"replacing frames ≥ t by noise moves the prediction for frame t by ≤ {_fmt(leak['pred_fine'])}; "
                     f"predictions that may see the change move by {_fmt(leak['pred_fine_response'])}",
            evidence=f"fovea.audit.probes.target_leak; threshold {_fmt(tol)} × prediction scale. {batch}",
            reason="the prediction for frame t moves when frame t changes: the wiring is off by one" if leaking else "",
            measurements=leak))
    sizes = probes.encode_calls(model, frames, latents, targets)
    once = sizes == [frames.shape[0] * frames.shape[1]]
    checks.append(Check(
        "wiring.encode_once", "Each frame is encoded once per step", "wiring", "pass" if once else "warn",
        expected="one encoder.encode call over all B·T frames", observed=f"encode calls per forward, frames each: {sizes}",
        reason="" if once else "the expensive per-frame encoding runs more than once", measurements={"sizes": sizes}))
    return checks


def _pass_independence_check(model, frames, latents, targets, tol: float, batch: str) -> Check:
    """Each objective's coarse loss comes from pass 1 alone, its fine loss from pass 2's reads."""
    found = probes.pass_independence(model, frames, latents, targets)
    names = list(model.objectives)
    leaking = [n for n in names if found[f"{n}_coarse"] > tol * max(found[f"{n}_scale"], 1e-12)]
    deaf = [n for n in names if found[f"{n}_fine"] <= tol * max(found[f"{n}_scale"], 1e-12)]
    ok = found["attend_calls"] == 2 and not leaking and not deaf
    observed = "; ".join(f"{n}: coarse moves by {_fmt(found[f'{n}_coarse'])}, fine by {_fmt(found[f'{n}_fine'])}"
                         for n in names)
    problems = [f"{', '.join(leaking)}_coarse moves when pass 2's reads change: the coarse prediction reads pass 2"
                ] if leaking else []
    problems += [f"{', '.join(deaf)}_fine does not depend on pass 2's reads: the fine prediction ignores pass 2"
                 ] if deaf else []
    if found["attend_calls"] != 2:
        problems.append(f"encoder.attend ran {found['attend_calls']} times in one forward, not 2")
    return Check(
        "wiring.pass_independence", "Each pass predicts from its own states", "wiring", "pass" if ok else "fail",
        expected="replacing pass 2's reads leaves every objective's coarse loss unchanged and moves its fine loss "
                 "(SPEC: coarse from pass 1, fine from pass 2)",
        observed=observed,
        evidence=f"The second encoder.attend call's output replaced by seeded noise of the same scale "
                 f"(fovea.audit.probes.pass_independence); threshold {_fmt(tol)} × the loss per clip. {batch}",
        reason="; ".join(problems) + (": improvement = (coarse − fine) / coarse then measures nothing"
                                      if problems else ""),
        recommendation="" if ok else "score pass 1 from the pass-1 hidden states and pass 2 from the pass-2 ones",
        measurements=found)


def _caption_causality_check(model, ev: "Evidence", tol: float) -> Check:
    """A caption token is predicted from the frames and the tokens before it, and from its own clip only."""
    found = probes.caption_causality(model, ev.frames, ev.latents, ev.targets)
    bad = []
    for mode in ("coarse", "fine"):
        threshold = tol * max(found[f"{mode}_scale"], 1e-12)
        if found[f"{mode}_before"] > threshold:
            bad.append(f"{mode}: the prediction of caption token ≤ {found['position'] + 1} moves when token "
                       f"{found['position'] + 1} changes (it sees its target)")
        if found[f"{mode}_other_clips"] > threshold:
            bad.append(f"{mode}: another clip's caption logits move (clips of a batch see each other)")
        if found[f"{mode}_after"] <= threshold:
            bad.append(f"{mode}: later caption tokens ignore the earlier ones")
    return Check(
        "wiring.no_caption_leak", "Caption tokens see only what comes before them, in their own clip", "wiring",
        "fail" if bad else "pass",
        expected="changing caption token j of clip 0 moves the logits of its later tokens only, and of no other clip",
        observed="; ".join(f"{mode}: positions ≤ j move by {_fmt(found[f'{mode}_before'])}, later ones by "
                           f"{_fmt(found[f'{mode}_after'])}, other clips by {_fmt(found[f'{mode}_other_clips'])}"
                           for mode in ("coarse", "fine")),
        evidence=f"Caption token {found['position'] + 1} of {found['caption_tokens']} of the first probe clip "
                 f"replaced (fovea.audit.probes.caption_causality); threshold {_fmt(tol)} × logit scale. "
                 f"Probe batch: {ev.batch_origin}.",
        reason="; ".join(bad), recommendation="" if not bad else "append the caption after the frames and keep the "
        "LLM's causal mask; never mix clips along the batch dimension",
        measurements=found)


# --------------------------------------------------------------------------- 3. query mechanism


def check_query(ev: "Evidence") -> list[Check]:
    """Which encoder, its options, the query's init and projection, and the probes of the mechanism."""
    spec, config, model = ev.spec.query, ev.config, ev.model
    encoder = model.encoder
    name = config.model.encoder.name
    checks: list[Check] = []
    if name == spec.encoder:
        status, label, reason = "pass", "", ""
    elif name in spec.simplified:
        status, label = "warn", "SIMPLIFIED"
        reason = ("post-hoc cross-attention over the final tokens instead of the query through every block. Trade-off: "
                  "cheaper and simpler, but the query cannot shape the features; SPEC: known to collapse to "
                  "near-uniform attention on DINO features — a baseline and ablation, not the spec")
    else:
        status, label = "warn", "NOT IN SPEC"
        reason = "an encoder the spec does not describe; the probes below measure whether it behaves as the spec requires"
    checks.append(Check(
        "query.encoder", "Query mechanism", "query", status,
        expected=f"`{spec.encoder}` (SPEC.md \"Query mechanism\" §1, deep masked injection)",
        observed=f"`{name}` ({type(encoder).__module__}.{type(encoder).__qualname__})",
        evidence="[model.encoder] name in the run's config.toml; the class the plugin registry built",
        reason=reason, label=label,
        recommendation="" if status == "pass" else f"set `[model.encoder] name = \"{spec.encoder}\"` to train the spec's mechanism"))

    if name == spec.encoder and spec.options:
        options = config.model.encoder.options.model_dump()
        differ = {k: (options.get(k), v) for k, v in spec.options.items() if not _same(options.get(k), v)}
        checks.append(Check(
            "query.options", f"`{spec.encoder}` options", "query", "warn" if differ else "pass",
            expected=", ".join(f"{k} = {_fmt(v)}" for k, v in spec.options.items()),
            observed=", ".join(f"{k} = {_fmt(options.get(k))}" + (f" (spec {_fmt(v)})" if k in differ else "")
                               for k, v in spec.options.items()),
            evidence="[model.encoder] options in config.toml",
            reason="the query joins later or differs from the spec's injection" if differ else "",
            recommendation="use the spec's values unless this run is an ablation" if differ else "",
            label="MODIFIED" if differ else "", measurements={"differ": differ}))

    projection = getattr(encoder, "query_input_proj", None)
    if projection is None:
        checks.append(Check("query.input_proj_bias", "query_input_proj has no bias", "query", "info",
                            expected="no bias", observed="not measured: the encoder has no `query_input_proj`",
                            reason="not measurable for this encoder; the sensitivity probe covers the failure it guards against"))
    else:
        has_bias = getattr(projection, "bias", None) is not None
        ok = has_bias == spec.input_proj_bias
        checks.append(Check(
            "query.input_proj_bias", "query_input_proj bias", "query", "pass" if ok else "fail",
            expected="bias" if spec.input_proj_bias else "no bias (SPEC: Linear(384→384, no bias))",
            observed="bias" if has_bias else "no bias",
            evidence=f"encoder.query_input_proj = {projection}",
            reason="" if ok else "SPEC \"Failure modes\": a bias on query_input_proj drowns the query (loss_fine == loss_coarse)",
            recommendation="" if ok else "nn.Linear(dim, dim, bias=False)"))

    stds = {n: getattr(ev.initial, n).float().std().item() for n in ("q_static", "q_init") if hasattr(ev.initial, n)}
    low = min(stds.values()) if stds else None
    if low is None:
        status = "info"
    elif all(0.5 * spec.init_std <= s <= 2 * spec.init_std for s in stds.values()):
        status = "pass"
    elif low < 0.1 * spec.init_std:
        status = "fail"
    else:
        status = "warn"
    checks.append(Check(
        "query.init_std", "Learned queries' initial scale", "query", status,
        expected=f"q_static, q_init ~ N(0, {_fmt(spec.init_std)}²)",
        observed=", ".join(f"{n} std {_fmt(s)}" for n, s in stds.items()) or "no q_static/q_init",
        evidence="standard deviation of the fresh build's parameters (the run's initialisation)",
        reason="" if status == "pass" else "SPEC \"Failure modes\": a small query (std 0.02) drowns in the projection; "
               "loss_fine == loss_coarse",
        recommendation="" if status == "pass" else f"initialise with torch.randn (std {_fmt(spec.init_std)})",
        measurements=stds))

    if model.single_pass:
        checks.append(Check("query.sensitivity", "The encoder's output depends on the query", "query", "info",
                            expected="outputs for two different queries clearly different",
                            observed=ONE_PASS.format(name)))
        return checks
    checks += _query_probes(ev)
    return checks


@torch.no_grad()
def _query_probes(ev: "Evidence") -> list[Check]:
    """Patch-feature invariance, the cache against the reference, query sensitivity, the two passes' reads, entropy."""
    spec, model, tol = ev.spec.query, ev.model, ev.spec.wiring.tolerance
    encoder = model.encoder
    B, T = ev.frames.shape[:2]
    pixels = ev.frames.flatten(0, 1).float().div(255.0)                              # (B*T, 3, S, S)
    dim = encoder.dim
    queries_a = torch.randn(len(pixels), dim) * spec.init_std
    queries_b = torch.randn(len(pixels), dim) * spec.init_std
    batch = f"Probe batch: {ev.batch_origin}."
    checks: list[Check] = []

    # Patch features must not depend on the query (asymmetric mask): on a few frames, the reference is slow.
    n = min(4, len(pixels))
    inv = probes.patch_invariance(encoder, pixels[:n], queries_a[:n], queries_b[:n])
    token_scale = inv["scale"] or inv["features_scale"] or 1.0
    problems = []
    if inv["cache_change"] > 0:
        problems.append(f"reading with a query changed the cached per-frame encoding (max |Δ| "
                        f"{_fmt(inv['cache_change'])}): pass 2 reuses features that carry pass 1's query")
    if inv["reread_change"] > tol * max(inv["features_scale"], 1e-12):
        problems.append(f"the same query reads different features after another query's read (max |Δ| "
                        f"{_fmt(inv['reread_change'])}): state leaks between reads")
    if inv["tokens_query_dependence"] is not None and inv["tokens_query_dependence"] > tol * token_scale:
        problems.append(f"in the full forward with the query in the sequence, the image tokens change with the "
                        f"query (max |Δ| {_fmt(inv['tokens_query_dependence'])}): patches attend to the query")
    observed = f"cache unchanged by reads: {inv['cache_change'] == 0}; reread difference {_fmt(inv['reread_change'])}"
    if inv["reference"]:
        observed += (f"; image tokens for two queries in the masked full forward differ by "
                     f"{_fmt(inv['tokens_query_dependence'])}")
    checks.append(Check(
        "query.patch_invariance", "Patch features do not depend on the query", "query",
        "fail" if problems else "pass",
        expected="asymmetric mask: patches never attend to the query; their features equal a plain forward's, "
                 "whatever the query (SPEC §1)",
        observed=observed,
        evidence=f"{n} frames encoded once and read with two random queries (std {_fmt(spec.init_std)}); every cached "
                 f"tensor compared before and after" + (", and the encoder's reference forward with the query in the "
                 "sequence (`masked_forward`) run for both queries" if inv["reference"] else
                 "; the encoder has no reference forward (`masked_forward`) to run the query through the blocks")
                 + f". {batch}",
        reason="; ".join(problems) + (". Without invariant patch features the per-layer K/V cache is wrong and "
                                      "pass 1 / pass 2 cannot share one encoding" if problems else ""),
        recommendation="mask image-token rows from the query column at every layer; never write the cache in attend"
        if problems else "",
        measurements=inv))
    if inv["reference"] is not None:
        exact = inv["features_vs_cache"] <= 1e-4 * max(inv["features_scale"], 1e-12) + 1e-6 and \
            (inv["tokens_vs_cache"] is None or inv["tokens_vs_cache"] <= 1e-4 * token_scale + 1e-6)
        checks.append(Check(
            "query.cache_matches_reference", "The cached query pass computes the full masked forward", "query",
            "pass" if exact else "fail",
            expected="attend on the per-layer K/V cache = the encoder re-run with the query and the mask",
            observed=f"max |features − reference| {_fmt(inv['features_vs_cache'])}; max |cached tokens − reference "
                     f"tokens| {_fmt(inv['tokens_vs_cache'])}",
            evidence=f"{n} frames, one random query each; reference `masked_forward` (float32)",
            reason="" if exact else "the cheap query pass does not compute the spec's mechanism",
            recommendation="" if exact else "compare attend with masked_forward layer by layer",
            measurements={k: inv[k] for k in ("features_vs_cache", "tokens_vs_cache")}))
    else:
        checks.append(Check(
            "query.cache_matches_reference", "The cached query pass computes the full masked forward", "query",
            "info", expected="attend on the per-layer K/V cache = the encoder re-run with the query and the mask",
            observed="not measured: the encoder has no reference forward (`masked_forward`, an optional extension of "
                     "the encoder contract)"))

    cache = encoder.encode(pixels)
    sens = probes.query_sensitivity(encoder, cache, queries_a, queries_b)
    corr = sens["correlation_mean"]
    status = "fail" if corr >= spec.correlation_fail else "warn" if corr >= spec.correlation_warn else "pass"
    checks.append(Check(
        "query.sensitivity", "The encoder's output depends on the query", "query", status,
        expected=f"outputs for two different queries clearly different (mean correlation < {_fmt(spec.correlation_warn)}; "
                 f"≥ {_fmt(spec.correlation_fail)} is the failure mode)",
        observed=f"mean correlation {corr:.4f} (min {sens['correlation_min']:.4f}, max {sens['correlation_max']:.4f}); "
                 f"switching the query moves the output {sens['query_vs_frame']:.2f}× as much as switching the frame",
        evidence=f"{B * T} frames encoded once, read with two sets of random queries (std {_fmt(spec.init_std)}); "
                 f"Pearson correlation of the two outputs per frame. {batch}",
        reason="" if status == "pass" else
        ("the encoder ignores the query: every query reads the same features. SPEC \"Failure modes\": loss_fine == "
         "loss_coarse to 3 decimals" if status == "fail" else
         "the output barely depends on the query (near the failure mode where loss_fine == loss_coarse)"),
        recommendation="" if status == "pass" else
        "check that the query reaches attend (std-1.0 init, no bias on query_input_proj, non-uniform attention)",
        measurements=sens))

    with probes.record_attend_outputs(model) as calls:
        out = _forward_with_attention(model, ev.frames, ev.latents, ev.targets)
    if len(calls) == 2:
        corr_sd = probes._row_correlation(calls[0][1], calls[1][1])
        same = corr_sd.mean().item()
        status = "warn" if same >= spec.correlation_fail else "pass"
        checks.append(Check(
            "query.static_vs_dynamic", "Pass 2 reads something other than pass 1", "query", status,
            expected="the dynamic queries read different features than the static query",
            observed=f"mean correlation of pass-1 and pass-2 features per frame {same:.4f}",
            evidence=f"encoder.attend outputs of both passes in one forward. {batch}",
            reason="" if status == "pass" else "both passes read the same features, so loss_fine can only equal "
                   "loss_coarse: the LLM's queries do not steer the encoder",
            recommendation="" if status == "pass" else "look at query.sensitivity and the pass-1 queries (query_head)",
            measurements={"correlation_mean": same}))

    checks.append(_entropy_check(ev, out, batch))
    return checks


def _forward_with_attention(model, frames, latents, targets=None):
    """The forward with attention maps, or a plain one for an encoder without ``return_attention``."""
    try:
        return model(frames, latents, targets, return_attention=True)
    except TypeError:
        return model(frames, latents, targets)


def _entropy_check(ev: "Evidence", out, batch: str) -> Check:
    spec = ev.spec.query
    static, dynamic = getattr(out, "attention_static", None), getattr(out, "attention_dynamic", None)
    if static is None or dynamic is None:
        return Check("query.entropy", "Attention is not uniform", "query", "info",
                     expected="attention entropy well below log N",
                     observed="not measured: the encoder returns no attention (attend(..., return_attention=True))",
                     reason="not measurable; the sensitivity probe covers the query mechanism",
                     recommendation="return (features, attention) from attend(return_attention=True)")
    from fovea.core.attention import patch_attention_stats, token_layout

    prefix = getattr(ev.model.encoder, "num_prefix_tokens", None)   # optional contract extension
    layout = token_layout(static.shape[-1], prefix) if isinstance(prefix, int) else None
    if layout is None:                      # the columns' meaning is unknown: over every column, as given
        prefix, layout = 0, (static.shape[-1], 0)
        columns = "every column (the encoder does not say which are CLS/registers: `num_prefix_tokens`)"
    else:
        columns = (f"the {layout[0]} patches, renormalised ({prefix} CLS/register columns"
                   + (" and the query's own column" if layout[1] else "") + " reported apart)")
    s, d = (patch_attention_stats(a, prefix, layout[0]) for a in (static, dynamic))
    sunk = {name: stats for name, stats in (("static", s), ("dynamic", d)) if stats["mass_patches"] < 0.5}
    if sunk:
        names = " and ".join(sunk)
        return Check(
            "query.entropy", "The queries look at the image", "query", "fail",
            expected="most of each query's attention on the patches, its entropy over them below log P",
            observed="; ".join(f"{n}: {v['mass_patches']:.1%} on the patches, {v['mass_prefix']:.1%} on CLS/registers, "
                               f"{v['mass_self']:.1%} on itself" for n, v in (("static", s), ("dynamic", d))),
            evidence=f"final-layer attention of every pass-1 and pass-2 read (mean over heads) in one forward, over "
                     f"{columns}. {batch}",
            reason=f"the {names} queries put most of their attention outside the image: DINOv3's registers are "
                   f"attention sinks, and a query collapsed onto one reads as focused while it reads nothing",
            recommendation="check the query's scale and the injection; compare heatmaps of static and dynamic reads",
            measurements={"static": s, "dynamic": d})
    near_uniform = d["ratio"] >= spec.entropy_warn_ratio
    encoder_component = next((c for c in ev.spec.components.values() if c.modules == ["encoder"]), None)
    random_init = encoder_component is not None and _is_random(ev.config, encoder_component)
    if near_uniform:
        status = "warn"
        reason = ("near-uniform attention: the query selects nothing. SPEC \"Failure modes\": post-hoc attention on "
                  "DINO features collapses to entropy ≈ log N")
        if random_init:
            reason += ("; this run's encoder is randomly initialised, and a random DINOv3 attends near-uniformly "
                       "whatever the query — expected here, not evidence of the collapse")
    elif d["entropy"] >= s["entropy"]:
        status, reason = "warn", "dynamic queries are not more focused than the static one (SPEC: dynamic lower)"
    else:
        status, reason = "pass", ""
    return Check(
        "query.entropy", "Attention entropy against log N", "query", status,
        expected=f"entropy / log N < {_fmt(spec.entropy_warn_ratio)}, dynamic lower than static (SPEC diagnostics)",
        observed=(f"static {s['entropy']:.3f} nats, dynamic {d['entropy']:.3f} nats, log N = {s['log_n']:.3f} "
                  f"(N = {s['num_tokens']} tokens): ratios {s['ratio']:.3f} / {d['ratio']:.3f}; peak weight "
                  f"{s['peak']:.3f} / {d['peak']:.3f} (uniform {s['uniform_peak']:.3f}); mass on the patches "
                  f"{s['mass_patches']:.1%} / {d['mass_patches']:.1%}, on CLS/registers {s['mass_prefix']:.1%} / "
                  f"{d['mass_prefix']:.1%}, on itself {s['mass_self']:.1%} / {d['mass_self']:.1%}"),
        evidence=f"final-layer attention of every pass-1 and pass-2 read (mean over heads) in one forward, over "
                 f"{columns}. {batch}",
        reason=reason,
        recommendation="" if status == "pass" else
        ("train longer or from the pretrained encoder, then audit again" if random_init else
         "use the deep encoder and check the query's scale; compare heatmaps of static and dynamic reads"),
        measurements={"static": s, "dynamic": d, "random_init_encoder": random_init})


# --------------------------------------------------------------------------- 4. head


def check_head(ev: "Evidence") -> list[Check]:
    """The head named, its options, FiLM conditioning on the LLM state, full-latent prediction."""
    spec, config, model = ev.spec.head, ev.config, ev.model
    name = config.model.head.name
    checks: list[Check] = []
    ok = name == spec.name
    checks.append(Check(
        "head.name", "Prediction head", "head", "pass" if ok else "warn",
        expected=f"`{spec.name}` (SPEC.md \"Prediction head\": FiLM)",
        observed=f"`{name}` ({type(model.head).__module__}.{type(model.head).__qualname__})",
        evidence="[model.head] name in config.toml",
        reason="" if ok else "not the spec's head; the probes below measure conditioning and what it predicts",
        label="" if ok else "NOT IN SPEC",
        recommendation="" if ok else f"set `[model.head] name = \"{spec.name}\"`"))
    if ok and spec.options:
        options = config.model.head.options.model_dump()
        differ = {k: (options.get(k), v) for k, v in spec.options.items() if not _same(options.get(k), v)}
        checks.append(Check(
            "head.options", f"`{spec.name}` sizes", "head", "warn" if differ else "pass",
            expected=", ".join(f"{k} = {_fmt(v)}" for k, v in spec.options.items()),
            observed=", ".join(f"{k} = {_fmt(options.get(k))}" for k in spec.options),
            evidence="[model.head] options in config.toml",
            reason="a smaller or larger head than the spec's (debug sizes in the quick start)" if differ else "",
            recommendation="use the spec's widths for a run that tests the spec" if differ else "",
            label="MODIFIED" if differ else "", measurements={"differ": differ}))

    if "next_latent" not in model.objectives:
        checks.append(Check("head.conditioning", "FiLM conditioning on the LLM state", "head", "info",
                            expected="the head predicts the next latent from the LLM state and the previous latent",
                            observed=f"not measured: the run does not train next_latent "
                                     f"({', '.join(model.objectives)}), so the head is never called"))
        return checks
    captured: list[tuple] = []
    handle = model.head.register_forward_hook(lambda module, args, output: captured.append(args))
    try:
        with torch.no_grad():
            model(ev.frames, ev.latents, ev.targets)
    finally:
        handle.remove()
    if not captured or len(captured[0]) < 2:
        checks.append(Check("head.conditioning", "FiLM conditioning on the LLM state", "head", "fail",
                            expected="the head is called with (hidden, previous latent)",
                            observed="the head was not called with two inputs in a forward",
                            reason="the model does not use its head as the contract says"))
        return checks
    hidden, prev = captured[-1][0], captured[-1][1]
    probe = probes.head_probe(model.head, hidden, prev)
    film = hasattr(model.head, "h_to_film")
    conditioned = probe["hidden_sensitivity"] > 1e-3
    checks.append(Check(
        "head.conditioning", "FiLM conditioning on the LLM state", "head", "pass" if conditioned else "fail",
        expected="the LLM hidden state modulates the latent features (γ·feat + β); the prediction moves with it",
        observed=(f"swapping hidden states between frames moves the prediction by {_pct(probe['hidden_sensitivity'])} "
                  f"of its mean magnitude; swapping previous latents by {_pct(probe['prev_sensitivity'])}"
                  + ("; the head has `h_to_film`" if film else "")),
        evidence="the head's inputs captured from a forward (pass 2) and fed back with rows swapped",
        reason="" if conditioned else "the prediction ignores the LLM: queries and foveation cannot matter",
        recommendation="" if conditioned else "condition the head on the hidden state (FiLM: γ, β from h)",
        measurements=probe))

    shape_ok = probe["output_shape_matches"] == 1.0
    residual = probe["zeroed_vs_prev"] < 1e-3
    full = shape_ok and probe["zeroed_vs_prev"] > 0.5
    wanted_full = spec.prediction == "full"
    status = "pass" if (full if wanted_full else residual) else ("fail" if (residual if wanted_full else full) or not shape_ok else "warn")
    kind = "full latent" if full else "residual on the previous latent" if residual else "unclear"
    checks.append(Check(
        "head.full_latent", "The head predicts the full next latent", "head", status,
        expected=f"{spec.prediction} latent of the next frame, shape of the target (SPEC: not a residual)",
        observed=(f"{kind}: with every head weight zeroed the output is ‖out − prev‖/‖prev‖ = "
                  f"{_fmt(probe['zeroed_vs_prev'])} from the previous latent; output shape matches the target: {shape_ok}"),
        evidence="a copy of the head with all parameters set to zero: a residual head then returns the previous "
                 "latent, a full-latent head a constant",
        reason="" if status == "pass" else "SPEC: a residual head can collapse to \"nothing changes\"",
        recommendation="" if status == "pass" else "decode the modulated features to the latent directly, without adding prev",
        measurements={"zeroed_vs_prev": probe["zeroed_vs_prev"], "shape_matches": shape_ok}))
    return checks


# --------------------------------------------------------------------------- 5. training configuration

# spec key -> (title, how to read it from the run's evidence, impact when it differs)
TRAINING_VALUES: list[tuple[str, str, Callable[["Evidence"], Any], str]] = [
    ("batch_size", "Batch size", lambda ev: ev.config.training.batch_size,
     "changes memory use (the spec's estimate is for batch 2) and, with grad_accum, the effective batch"),
    ("grad_accum", "Gradient accumulation", lambda ev: ev.config.training.grad_accum,
     "changes the effective batch, and with it gradient noise and the learning rate that fits"),
    ("effective_batch", "Effective (global) batch", lambda ev: ev.config.global_batch_size(ev.world_size),
     "gradient noise, the learning rate that fits, and how many clips max_steps reads"),
    ("lr", "Learning rate", lambda ev: ev.config.training.lr,
     "a different optimisation trajectory; results not comparable to the spec's"),
    ("weight_decay", "Weight decay", lambda ev: ev.config.training.weight_decay, "different regularisation"),
    ("warmup_steps", "Warm-up steps", lambda ev: ev.config.training.warmup_steps,
     "the improvement is measured after warm-up; a shorter warm-up risks early instability"),
    ("max_steps", "Training steps", lambda ev: ev.config.training.max_steps,
     "a shorter or longer run than the spec's phase 1"),
    ("grad_clip", "Gradient clipping", lambda ev: ev.config.training.grad_clip,
     "different stability against gradient spikes"),
    ("lambda_coarse", "λ_coarse", lambda ev: ev.config.model.lambda_coarse,
     "a different weight of the pass-1 loss: changes what the queries learn"),
    ("num_frames", "Frames per clip (T)", lambda ev: ev.config.data.num_frames,
     "a different sequence length per clip"),
    ("frame_size", "Frame size", lambda ev: ev.config.data.frame_size,
     "fewer or more patches per frame than the spec's 16×16"),
]


def check_training(ev: "Evidence") -> list[Check]:
    """Every training value against the spec (✅ equal, ⚠️ modified with both values); epochs."""
    spec, config = ev.spec.training, ev.config
    checks: list[Check] = []
    for key, title, read, impact in TRAINING_VALUES:
        expected, observed = getattr(spec, key), read(ev)
        same = _same(observed, expected)
        shown = _fmt(observed)
        evidence = "the run's config.toml"
        if key == "effective_batch":   # the global batch: what one optimizer step averages over
            shown += (f" ({config.training.batch_size} × {config.training.grad_accum} × {ev.world_size} "
                      f"processes)" if ev.world_size > 1 else "")
            evidence = "batch_size × grad_accum from config.toml × the world size in summary.json"
        checks.append(Check(
            f"training.{key}", title, "training", "pass" if same else "warn",
            expected=_fmt(expected), observed=shown if same else f"{shown} (spec {_fmt(expected)})",
            evidence=evidence, reason="" if same else impact, label="" if same else "MODIFIED",
            recommendation="" if same else (f"batch_size × grad_accum × processes = {_fmt(expected)}"
                                            if key == "effective_batch" else f"`{key} = {_fmt(expected)}`")))
    trained = ", ".join(f"{name} (weight {_fmt(table.weight)})" for name, table in config.objectives.items())
    phase1 = list(config.objectives) == ["next_latent"]
    checks.append(Check(
        "training.objectives", "Objectives trained", "training", "info",
        expected="next_latent (SPEC phase 1: next-frame VAE latent, MSE)",
        observed=trained + (f"; prompt {config.model.prompt!r}" if config.model.prompt else "")
        + ("" if ev.model.codec is None else f"; tokenizer: {ev.model.codec.name}"),
        evidence="[objectives] and [model] prompt in config.toml",
        reason="" if phase1 else "the run trains beyond the spec's phase 1: its losses and improvement are per "
                                 "objective (the results below)",
        measurements={"objectives": {n: t.weight for n, t in config.objectives.items()},
                      "prompt": config.model.prompt}))
    dtype = config.precision.dtype
    same = dtype == ev.spec.precision.dtype
    checks.append(Check(
        "training.dtype", "Precision", "training", "pass" if same else "warn",
        expected=ev.spec.precision.dtype, observed=dtype if same else f"{dtype} (spec {ev.spec.precision.dtype})",
        evidence="[precision] dtype in config.toml",
        reason="" if same else "different speed and memory; bfloat16 autocast is what the memory estimate assumes",
        label="" if same else "MODIFIED",
        recommendation="" if same else f"`dtype = \"{ev.spec.precision.dtype}\"`"))
    _merge_recommendations(checks, "use the spec's values for a run meant to test it (configs/phase1.toml has "
                                   "them), or record why this run changed them: {}")
    checks.append(check_execution(config))

    clips = ev.summary.get("num_clips") or (ev.data_report or {}).get("num_clips")
    if not isinstance(clips, (int, float)) or clips <= 0:
        checks.append(Check("training.epochs", "Epochs", "training", "info",
                            expected=f"≤ {_fmt(spec.max_epochs)}",
                            observed="the number of training clips is not in summary.json or data_report.json",
                            reason="cannot tell how many passes over the data the run made"))
        return checks
    batch = config.global_batch_size(ev.world_size)
    epochs = config.training.max_steps * batch / clips
    ok = epochs <= spec.max_epochs
    checks.append(Check(
        "training.epochs", "Epochs over the training clips", "training", "pass" if ok else "warn",
        expected=f"max_steps × global batch / clips ≤ {_fmt(spec.max_epochs)} (SPEC: do not train past one epoch)",
        observed=(f"{config.training.max_steps} × {batch} / {int(clips)} clips = "
                  f"{epochs:.2f} epochs"),
        evidence="max_steps and batch from config.toml, clips from summary.json",
        reason="" if ok else "SPEC \"Failure modes\": several epochs on a small set — the model memorises the clips "
               "and the eval loss rises",
        recommendation="" if ok else (f"more clips (≥ {math.ceil(config.training.max_steps * batch / spec.max_epochs)}) "
                                      f"or fewer steps (≤ {int(clips * spec.max_epochs // batch)})"),
        label="" if ok else "SEVERAL EPOCHS", measurements={"epochs": epochs, "num_clips": clips}))
    return checks


def check_execution(config) -> Check:
    """How the run's step ran (``torch.compile``, activation checkpointing): ℹ️, neither changes what is learned."""
    from fovea.core.compile import checkpointed_parts

    training = config.training
    checkpointed = checkpointed_parts(config)
    compiled = f"on ({training.compile_backend})" if training.compile else "off"
    observed = (f"torch.compile {compiled}; activation checkpointing: encoder "
                f"{'on' if checkpointed['encoder'] else 'off'}, LLM {'on' if checkpointed['llm'] else 'off'}")
    return Check(
        "training.execution", "Compilation and activation checkpointing", "training", "info",
        expected="any (the spec does not say; the same losses either way, within float rounding)",
        observed=observed,
        evidence="[training] compile, [model.encoder] and [model.llm] activation_checkpointing in config.toml",
        reason="speed and memory only: activation checkpointing trades about one more forward of a component for "
               "its activations, compilation trades compile time for faster steps",
        measurements={"compile": training.compile, "compile_backend": training.compile_backend,
                      "activation_checkpointing": checkpointed})


# --------------------------------------------------------------------------- 6. results


def check_results(ev: "Evidence") -> list[Check]:
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

    finite = [m for m in after if _finite(m["loss_fine"]) and _finite(m["loss_coarse"])]
    if len(finite) < len(after):
        checks.append(Check(
            "results.finite", "Losses are finite", "results", "warn", expected="a finite loss in every logged interval",
            observed=f"{len(after) - len(finite)} of {len(after)} metrics lines have no finite loss_fine/loss_coarse",
            evidence=window_note + "; steps with a NaN/inf loss are listed in nonfinite.jsonl",
            reason="steps were skipped or training diverged; the result below uses the finite lines only",
            recommendation="look at nonfinite.jsonl; lower the learning rate or check the data and targets"))
    tail = finite[-max(1, len(finite) // 4):]
    held = ev.evaluation
    primary = (held or {}).get("primary", "next_latent")
    # the primary objective's own training losses (the weighted total when they were not logged)
    fine_key, coarse_key = ((f"{primary}_fine", f"{primary}_coarse") if tail and _finite(tail[0].get(f"{primary}_fine"))
                            else ("loss_fine", "loss_coarse"))
    train_fine = sum(m[fine_key] for m in tail) / len(tail) if tail else None
    train_coarse = sum(m[coarse_key] for m in tail) / len(tail) if tail else None
    if held is None:
        checks.append(Check(
            "results.learned", "The model beats the trivial baselines on held-out clips", "results", "info",
            expected="held-out loss_fine below the mean-latent and copy-previous baselines",
            observed=f"not measurable: {ev.evaluation_origin}",
            recommendation="train with held-out clips ([eval] val_fraction or val_clips) and audit again"))
    elif held.get("skill") is None:   # an objective without trivial baselines (a plugin's)
        checks.append(Check(
            "results.learned", "The model beats the trivial baselines on held-out clips", "results", "info",
            expected="held-out loss_fine below the best trivial baseline",
            observed=f"not measured: the objective `{held.get('primary')}` has no trivial baselines (`baselines`)"))
    else:
        checks.append(_learned_check(ev, held))
    if ev.model.single_pass:
        checks.append(Check(
            "results.improvement", "Foveation's improvement", "results", "info",
            expected="(loss_coarse − loss_fine) / loss_coarse", observed=ONE_PASS.format(ev.config.model.encoder.name)
            + ": there is no improvement to measure; compare its held-out loss with a foveated run's (fovea compare)"))
        held = None if held is None else {**held, "improvement": None}
    if held is not None and held.get("improvement") is not None:
        checks.append(_improvement_check(ev, held["improvement"], held["modes"]["fine"]["loss"],
                                         held["modes"]["coarse"]["loss"], f"{held['clips']} held-out clips, "
                                         f"{ev.evaluation_origin}", interval=True))
        for name, figures in (held.get("objectives") or {}).items():   # the other objectives, each on its own
            figures = {**figures, "step": held["step"]}
            if name != primary and figures.get("skill") is not None:
                checks.append(_for_objective(_learned_check(ev, figures), name))
            if name != primary and figures.get("improvement") is not None:
                checks.append(_for_objective(_improvement_check(
                    ev, figures["improvement"], figures["modes"]["fine"]["loss"], figures["modes"]["coarse"]["loss"],
                    f"{held['clips']} held-out clips, {ev.evaluation_origin}", interval=True), name))
    elif tail and not ev.model.single_pass:
        checks.append(_improvement_check(ev, {"value": (train_coarse - train_fine) / train_coarse if train_coarse
                                              else 0.0, "ci95": None}, train_fine, train_coarse,
                                         f"training batches: mean over the last {len(tail)} of {window_note} in "
                                         f"metrics.jsonl (no held-out clips)", interval=False))
    if (held is None and not tail) or ev.model.single_pass:
        if held is not None and train_fine is not None:
            checks.append(_overfitting_check(ev, held, train_fine))
        return checks
    fine, coarse = ((held["modes"]["fine"]["loss"], held["modes"]["coarse"]["loss"]) if held is not None
                    else (train_fine, train_coarse))
    equal = abs(fine - coarse) <= 10 ** -spec.equal_decimals * max(abs(coarse), 1e-12)
    checks.append(Check(
        "results.losses_differ", "loss_fine and loss_coarse differ", "results", "warn" if equal else "pass",
        expected=f"loss_fine ≠ loss_coarse beyond {spec.equal_decimals} significant decimals",
        observed=f"relative difference {abs(fine - coarse) / max(abs(coarse), 1e-12):.2e}",
        evidence="the same clips as the improvement",
        reason=("the symptom of the SPEC's failure modes (query too small or ignored, uniform attention, pass 2 "
                "not fed by pass 1): see the wiring and query checks for the cause") if equal else "",
        recommendation="if the wiring and query checks pass, the model has not learnt to use the queries yet"
        if equal else "",
        measurements={"relative_difference": abs(fine - coarse) / max(abs(coarse), 1e-12)}))
    if held is not None and train_fine is not None:
        checks.append(_overfitting_check(ev, held, train_fine))
    if held is not None and held.get("autoregressive_gap") is not None:
        checks.append(_autoregressive_check(ev, held))
    if tail:
        learned = next((c for c in checks if c.id == "results.learned"), None)
        checks.append(_trend_check(finite, window_note, learned))
    return checks


def _for_objective(check: Check, name: str) -> Check:
    """``check`` about one objective of several: its id and title name the objective."""
    check.id, check.title = f"{check.id}.{name}", f"{check.title} ({name})"
    return check


def _learned_check(ev: "Evidence", held: dict[str, Any]) -> Check:
    """❌ when the fine pass does not beat the best trivial baseline on held-out clips."""
    spec = ev.spec.results
    best = held["best_baseline"]
    baseline, fine = held["baselines"][best]["loss"], held["modes"]["fine"]["loss"]
    skill, (low, high) = held["skill"], held["skill_ci95"]
    if skill <= 0:
        status, word = "fail", "NOT LEARNED"
    elif low <= 0 or skill < spec.skill_low:
        status, word = "warn", "LITTLE LEARNED"
    else:
        status, word = "pass", "LEARNED"
    others = ", ".join(f"{name} {_fmt(entry['loss'])}" for name, entry in held["baselines"].items())
    return Check(
        "results.learned", "The model beats the trivial baselines on held-out clips", "results", status,
        expected=(f"held-out loss_fine clearly below the best trivial baseline: skill = 1 − loss_fine / best "
                  f"baseline > 0 with its interval above 0 (❌ at ≤ 0; ⚠️ below {_pct(spec.skill_low)})"),
        observed=(f"skill {skill * 100:+.2f} % (95 % CI {low * 100:+.2f} … {high * 100:+.2f} %): loss_fine "
                  f"{_fmt(fine)} vs {best} {_fmt(baseline)} ({others})"),
        evidence=f"{held['clips']} held-out clips, checkpoint of step {held['step']}; {ev.evaluation_origin}",
        reason={"fail": f"the model learned nothing that a trivial predictor ({', '.join(held['baselines'])}) does "
                        "not know: a falling training loss is not learning",
                "warn": "the model barely beats a trivial predictor; its other figures (improvement) say little",
                "pass": ""}[status],
        recommendation="" if status == "pass" else
        "train longer or with a larger learning rate, check that the targets are learnable (docs/quickstart.md), "
        "and run the probes' checks above first",
        label=word, measurements={"skill": skill, "skill_ci95": [low, high], "loss_fine": fine,
                                  "best_baseline": best, "baseline_loss": baseline})


def _improvement_check(ev: "Evidence", improvement: dict[str, Any], fine: float, coarse: float, evidence: str,
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
    status = "pass" if band in ("solid", "strong") and interval else "warn"
    ratio = coarse / fine if fine else math.inf
    shown_ci = f" (95 % CI {ci[0] * 100:+.2f} … {ci[1] * 100:+.2f} %)" if ci is not None else " (no interval)"
    return Check(
        "results.improvement", "Foveation improves the prediction", "results", status,
        expected=(f"improvement = (loss_coarse − loss_fine) / loss_coarse on held-out clips: < {_pct(spec.marginal)} "
                  f"hurts, {_pct(spec.marginal)}–{_pct(spec.solid)} (or an interval that includes 0) marginal, "
                  f"{_pct(spec.solid)}–{_pct(spec.strong)} solid, > {_pct(spec.strong)} strong"),
        observed=(f"{value * 100:+.3f} %{shown_ci} ({band}); loss_fine {fine:.6g}, loss_coarse {coarse:.6g}, "
                  f"ratio coarse/fine {ratio:.4f}"),
        evidence=evidence,
        reason="" if status == "pass" else
        ("measured on training batches only: no held-out figure, no interval" if not interval and band in
         ("solid", "strong") else "the dynamic reads predict worse than the static ones" if band == "hurts" else
         "the dynamic reads barely beat the static ones, or the interval cannot tell them apart"),
        recommendation="" if status == "pass" else
        "train longer and with the spec's models; if the query probes warn, fix those first",
        label=band.upper(), measurements={"improvement": value, "ci95": ci, "ratio": ratio, "loss_fine": fine,
                                          "loss_coarse": coarse, "band": band, "held_out": interval})


def _overfitting_check(ev: "Evidence", held: dict[str, Any], train_fine: float) -> Check:
    spec = ev.spec.results
    val_fine = held["modes"]["fine"]["loss"]
    ratio = val_fine / train_fine if train_fine > 0 else math.inf
    epochs = ev.summary.get("epochs")
    over = ratio > spec.overfit_ratio
    return Check(
        "results.overfitting", "Held-out loss close to the training loss", "results", "warn" if over else "pass",
        expected=f"held-out loss_fine at most {spec.overfit_ratio:g} × the training loss_fine",
        observed=(f"held-out {_fmt(val_fine)} vs training {_fmt(train_fine)} (× {ratio:.3f}); "
                  f"{_fmt(epochs)} epochs over the training clips"),
        evidence="eval.json against the last quarter of the training lines of metrics.jsonl",
        reason=f"the model fits its training clips better than unseen ones: {_fmt(epochs)} epochs" if over else "",
        recommendation="more clips, fewer steps (SPEC: never past one epoch), or more weight decay" if over else "",
        label="OVERFITTING" if over else "", measurements={"ratio": ratio, "val_fine": val_fine,
                                                            "train_fine": train_fine, "epochs": epochs})


def _autoregressive_check(ev: "Evidence", held: dict[str, Any]) -> Check:
    spec = ev.spec.results
    gap = held["autoregressive_gap"]
    low, high = gap["ci95"]
    wide = gap["value"] > spec.autoregressive_gap
    return Check(
        "results.autoregressive_gap", "The deployed model predicts as well as the trained one", "results",
        "warn" if wide else "pass",
        expected=(f"one pass with the model's own queries (as deployed) within {_pct(spec.autoregressive_gap)} of "
                  f"the two-pass loss it was trained with"),
        observed=(f"gap {gap['value'] * 100:+.2f} % (95 % CI {low * 100:+.2f} … {high * 100:+.2f} %): "
                  f"autoregressive {_fmt(held['modes']['autoregressive']['loss'])} vs fine "
                  f"{_fmt(held['modes']['fine']['loss'])}"),
        evidence=f"{held['clips']} held-out clips; {ev.evaluation_origin}",
        reason=("pass 2 is trained on queries made by pass 1 (static reads); a deployed model reads with queries "
                "made from its own dynamic reads, which training never shows it") if wide else "",
        recommendation="report the autoregressive figure next to the two-pass one" if wide else "",
        label="TRAIN/INFERENCE GAP" if wide else "", measurements={"gap": gap})


def _trend_check(after: list[dict[str, Any]], window_note: str, learned: Check | None) -> Check:
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
    return Check(
        "results.trend", "Training loss trend", "results", status,
        expected="the loss decreases after warm-up, towards a model that beats the trivial baselines",
        observed=(f"{word}: mean loss_fine + loss_coarse {start:.6g} → {end:.6g} ({change * 100:+.1f} %) from the "
                  f"first to the last quarter"),
        evidence=window_note + " (training batches)",
        reason=reason,
        recommendation="" if status in ("pass", "info") else "look at the lr schedule and grad_norm in metrics.jsonl",
        measurements={"start": start, "end": end, "change": change})


# --------------------------------------------------------------------------- 7. resources

def _number(data: Any, *path: str) -> float | None:
    """``data[path[0]][path[1]]…`` if it is a number, else None (a profile may lack any key)."""
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return float(data) if isinstance(data, (int, float)) and not isinstance(data, bool) else None


def read_profile(profile: dict[str, Any] | None) -> dict[str, Any]:
    """What the audit reads from ``profile.json`` (written by ``fovea profile``); None where absent.

    ``gpu_util_mean``: mean GPU utilisation in percent (null without a GPU); ``data_wait_share``: the
    fraction of step time spent waiting for data; ``peak_memory_gb``: peak allocated GPU memory (null
    without a GPU); ``device``; ``batch.batch_size``; ``memory.model.total_gb``: the profiler's memory model.
    """
    profile = profile or {}
    return {"gpu_util_percent": _number(profile, "gpu_util_mean"),
            "data_wait_share": _number(profile, "data_wait_share"),
            "peak_memory_gb": _number(profile, "peak_memory_gb"),
            "memory_model_gb": _number(profile, "memory", "model", "total_gb"),
            "batch_size": _number(profile, "batch", "batch_size"),
            "device": profile.get("device") if isinstance(profile.get("device"), str) else None}


def check_resources(ev: "Evidence") -> list[Check]:
    """Data-wait share (profile.json, else metrics.jsonl), GPU utilisation and peak memory (profile.json)."""
    spec = ev.spec.resources
    values = read_profile(ev.profile)
    checks: list[Check] = []
    if ev.profile is None:
        checks.append(Check(
            "resources.profile", "Profile of the training step", "resources", "info",
            expected="profile.json with GPU utilisation, data-wait share and peak memory",
            observed="no profile.json in the run directory",
            reason="GPU utilisation and peak memory are not in a run's files; the data-wait share below comes "
                   "from metrics.jsonl",
            recommendation="measure them with `fovea profile --steps 20` while this run is runs/latest (it profiles "
                           "that run's config and writes profile.json beside its metrics), then audit again"))

    wait, wait_source = values["data_wait_share"], "profile.json (data_wait_share)"
    if wait is None:
        shares = [m["data_wait_share"] for m in ev.metrics if isinstance(m.get("data_wait_share"), (int, float))]
        if shares:
            wait, wait_source = sum(shares) / len(shares), f"mean data_wait_share of {len(shares)} metrics.jsonl lines"
    if wait is not None:
        ok = wait <= spec.data_wait_share_max
        checks.append(Check(
            "resources.data_wait", "Data loading keeps up", "resources", "pass" if ok else "warn",
            expected=f"data-wait share of step time ≤ {_pct(spec.data_wait_share_max)}",
            observed=f"{_pct(wait)} of step time waiting for data",
            evidence=wait_source,
            reason="" if ok else "SPEC \"Failure modes\": data loading on the main process starves the GPU "
                                 "(GPU 2 %, CPU 400 %)",
            recommendation="" if ok else "precompute the clip cache (`fovea precompute`), raise data.num_workers and "
                                         "data.prefetch", measurements={"data_wait_share": wait}))

    device = values["device"] or "unknown device"
    util = values["gpu_util_percent"]
    if util is not None:
        fraction = util / 100.0
        status = "fail" if fraction < spec.gpu_util_fail_below else "warn" if fraction < spec.gpu_util_min else "pass"
        checks.append(Check(
            "resources.gpu_util", "GPU utilisation", "resources", status,
            expected=f"mean GPU utilisation ≥ {_pct(spec.gpu_util_min)}", observed=f"{util:.1f} % on {device}",
            evidence="profile.json (gpu_util_mean)",
            reason="" if status == "pass" else "the GPU waits most of the time: the step is bound by data loading or "
                                               "by Python and kernel-launch overhead",
            recommendation="" if status == "pass" else "see resources.data_wait and the profile's diagnosis "
                                                       "(profile.md); a larger training.batch_size if data keeps up",
            label="ISSUE" if status == "fail" else "", measurements={"gpu_util_percent": util}))
    elif ev.profile is not None:
        checks.append(Check("resources.gpu_util", "GPU utilisation", "resources", "info",
                            expected=f"≥ {_pct(spec.gpu_util_min)}", observed=f"not measured: profiled on {device}",
                            reason="the profile ran without a GPU",
                            recommendation="profile on the GPU machine that trains the spec's runs"))

    peak = values["peak_memory_gb"]
    if peak is not None:
        low, high = spec.memory_gb
        spec_sizes = all(not c.measurements.get("architecture_mismatch") for c in check_components_models(ev))
        batch = int(values["batch_size"] or ev.config.training.batch_size)
        comparable = spec_sizes and batch == spec.memory_batch_size
        inside = low <= peak <= high
        status = "pass" if inside else "warn" if comparable else "info"
        caveat = "" if comparable else (f"; the estimate is for the spec's models at batch {spec.memory_batch_size}, "
                                        f"this profile has " + ("other model sizes and " if not spec_sizes else "")
                                        + f"batch {batch}")
        model_note = (f"; the profiler's memory model predicts {values['memory_model_gb']:.1f} GB"
                      if values["memory_model_gb"] is not None else "")
        checks.append(Check(
            "resources.peak_memory", "Peak GPU memory against the spec's estimate", "resources", status,
            expected=f"{_fmt(low)}–{_fmt(high)} GB at batch {spec.memory_batch_size} (SPEC estimate)",
            observed=f"{peak:.1f} GB peak allocated at batch {batch}{model_note}{caveat}",
            evidence="profile.json (peak_memory_gb, memory.model)",
            reason="" if inside else "SPEC: a run that uses far less or far more than the estimate deserves an "
                                     "explanation (the estimate, a simplified mechanism, checkpointing, the batch)",
            recommendation="" if inside else "compare with the profiler's memory model (profile.md); use headroom "
                                             "for a larger batch",
            label="" if inside else "UNEXPECTED", measurements={"peak_memory_gb": peak, "batch_size": batch,
                                                                "memory_model_gb": values["memory_model_gb"]}))

    last = ev.metrics[-1]
    devices = ", ".join((ev.env or {}).get("devices") or []) or "unknown device"
    if isinstance(last.get("samples_per_s"), (int, float)):
        checks.append(Check(
            "resources.throughput", "Training throughput", "resources", "info",
            expected="recorded for comparison",
            observed=f"{last['samples_per_s']:.1f} clips/s at step {last['step']} on {devices}",
            evidence="last metrics.jsonl line; env.json"))
    return checks


def check_components_models(ev: "Evidence") -> list[Check]:
    """Only the ``components.<name>.model`` checks (used to tell whether the memory estimate applies)."""
    return [_model_check(ev, key, c) for key, c in ev.spec.components.items()
            if c.pretrained is not None or c.architecture]


CHECK_GROUPS: list[Callable[["Evidence"], list[Check]]] = [
    check_components, check_wiring, check_query, check_head, check_training, check_loss_composition,
    check_learning, check_results, check_resources]

