"""Section 1, component training status: per component of the spec, whether it trains as the spec says
(requires_grad, a gradient on a real batch, weights moved), the VAE frozen, and whether the run uses the
spec's weights and architecture (SPEC.md "Components")."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fovea.audit import probes
from fovea.audit.findings import Check, count, fmt, merge_fixes, names, pct, verdict
from fovea.audit.spec import config_value, same

if TYPE_CHECKING:
    from fovea.audit.evidence import Evidence
    from fovea.audit.spec import Component


def check_components(ev: Evidence) -> list[Check]:
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
            checks.append(vae_check(ev, key, component))
            continue
        members = [n for n in trained if belongs(n, component.modules)]
        covered.update(members)
        used = [n for n in members if n not in idle]
        if members and not used:
            checks.append(verdict(
                f"components.{key}", f"{component.description} {component.state}", "info",
                expected=f"{component.state} (SPEC.md \"Components\")",
                observed=f"not used: none of the run's objectives ({', '.join(ev.model.objectives)}) reads its "
                         f"{len(members)} tensors, which stay frozen at their initialisation",
                evidence="the objectives' `reads` (fovea.core.model.FoveatedVLM.idle_parameters)"))
            continue
        checks.append(trainability_check(component, key, used, trained, initial, flags, reach))
    models = check_components_models(ev)
    merge_fixes(models, "set {} (or local copies) for a run that tests the spec (configs/phase1.toml names them)")
    checks += models
    others = [n for n in trained if n not in covered]
    if others:
        checks.append(verdict(
            "components.unassigned", "Parameters outside the spec's components", "info",
            expected="every parameter belongs to a component of the spec",
            observed=f"{len(others)} tensors in no component: {names(others)}",
            reason="their trainability is not checked against the spec",
            fix="name them in a component of the spec file (`modules`)"))
    return checks


def belongs(name: str, modules: list[str]) -> bool:
    """Whether the parameter ``name`` is one of ``modules`` or inside one."""
    return any(name == m or name.startswith(m + ".") for m in modules)


def is_random(config: Any, component: Component) -> bool:
    """Whether the run builds the component without pretrained weights."""
    return component.pretrained_key is not None and not config_value(config, component.pretrained_key)


def trainability_check(component, key, members, trained, initial, flags, reach) -> Check:
    """``components.<key>``: the component's tensors against its spec state (trainable or frozen)."""
    title = f"{component.description} {component.state}"
    expected = (f"{component.state} (SPEC.md \"Components\"): " +
                ("requires_grad, a gradient on a real batch, weights moved from initialisation"
                 if component.state == "trainable" else "requires_grad off, weights equal to initialisation"))
    if not members:
        return verdict(f"components.{key}", title, False, expected=expected,
                       observed=f"the model has no parameters named {names(component.modules)}",
                       reason="the spec names a part the model does not have",
                       fix="check the spec file's `modules` against the model's parameter names")

    numel = {n: trained[n].numel() for n in members}
    total = sum(numel.values())
    flagged = [n for n in members if flags[n]]
    frozen = [n for n in members if not flags[n]]
    moved = {n: not torch.equal(trained[n], initial[n]) for n in members}
    frozen_read = [n for n in frozen if reach[n] > 0]          # the loss reaches them, yet they do not train
    frozen_unread = [n for n in frozen if reach[n] == 0]       # never read by the forward: frozen on purpose
    unreached = [n for n in flagged if reach[n] == 0]
    stuck = [n for n in flagged if not moved[n]]
    frozen_moved = [n for n in frozen if moved[n]]
    delta = math.sqrt(sum(float((trained[n] - initial[n]).float().pow(2).sum()) for n in flagged))
    norm = math.sqrt(sum(float(initial[n].float().pow(2).sum()) for n in flagged))
    flagged_numel = sum(numel[n] for n in flagged)
    measurements = {"tensors": len(members), "parameters": total, "trainable_parameters": flagged_numel,
                    "frozen_but_reached": frozen_read, "frozen_never_read": frozen_unread,
                    "trainable_without_gradient": unreached, "trainable_unchanged": stuck,
                    "frozen_changed": frozen_moved, "relative_change": delta / norm if norm else None}
    observed = (f"requires_grad on {len(flagged)}/{len(members)} tensors ({pct(flagged_numel / total)} of "
                f"{count(total)} params); gradient reaches {len(flagged) - len(unreached)}/{len(flagged)} of "
                f"them; {len(flagged) - len(stuck)}/{len(flagged)} moved from init")
    if flagged and norm:
        observed += f" (relative change {pct(delta / norm)})"
    evidence = ("One forward and backward of the checkpoint's model on the probe batch with every parameter "
                "switched to requires_grad, to see which parameters the loss reaches; the checkpoint "
                "compared tensor by tensor with a fresh build from the run's config and seed (the "
                "initialisation).")
    if frozen_unread:
        evidence += f" Frozen and never read by the forward (correctly left out of the optimizer): {names(frozen_unread)}."

    problems, warnings, fix = [], [], ""
    if component.state == "trainable":
        if frozen_read:
            read_numel = sum(numel[n] for n in frozen_read)
            problems.append(f"{len(frozen_read)} tensors ({count(read_numel)} params) that the loss reaches are "
                            f"frozen: {names(frozen_read)}")
            fix = f"make the {component.description} trainable (`trainable = true` in its config table): the spec trains it"
        if not flagged:
            problems.append("nothing in it is trainable")
        elif len(stuck) == len(flagged):
            problems.append("none of its trainable weights moved from initialisation: it never trained")
            fix = fix or "check that the optimizer holds its parameters and that the run trained"
        elif stuck:
            warnings.append(f"{len(stuck)} trainable tensors never moved: {names(stuck)}")
        if unreached:
            warnings.append(f"{len(unreached)} trainable tensors get no gradient on a real batch: {names(unreached)}")
    elif flagged:
        problems.append(f"{len(flagged)} tensors are trainable: {names(flagged)}")
        fix = "freeze it (requires_grad_(False)); the spec keeps it fixed"
    if frozen_moved:
        problems.append(f"{len(frozen_moved)} frozen tensors differ from initialisation: {names(frozen_moved)} "
                        f"(the checkpoint does not come from this config, or something trained them)")
    reason = "; ".join(problems + warnings)
    if problems and component.state == "trainable" and frozen_read:
        reason += ". SPEC \"Failure modes\": a silently frozen component gives no learning where the spec expects it"
    elif not problems and warnings:
        fix = "find why these parameters are unused or frozen in effect (dead weights, a detached path)"
    status = "fail" if problems else "warn" if warnings else "pass"
    return verdict(f"components.{key}", title, status, expected=expected, observed=observed, evidence=evidence,
                   reason=reason, fix=fix, measurements=measurements)


def vae_check(ev: Evidence, key: str, component: Component) -> Check:
    """``components.vae``: the VAE of the targets frozen, out of the checkpoint, equal to its initialisation."""
    params = list(ev.vae.parameters())
    trainable = [n for n, p in ev.vae.named_parameters() if p.requires_grad]
    in_checkpoint = [n for n in ev.checkpoint_extra if n.startswith("vae.")]
    problems = []
    if trainable:
        problems.append(f"the VAE that load_vae returns has requires_grad on {len(trainable)}/{len(params)} "
                        f"tensors ({names(trainable)})")
    if in_checkpoint:
        problems.append(f"the model's checkpoint holds {len(in_checkpoint)} VAE tensors ({names(in_checkpoint)}): "
                        f"it was trained with the model")
    if ev.vae_change is not None and ev.vae_change > 0:
        problems.append(f"the run's VAE differs from the initialisation it was made with (max |Δw| "
                        f"{fmt(ev.vae_change)}): it was trained or replaced")
    state = component.state
    if state != "frozen":
        problems = [] if trainable else ["the VAE is frozen, the spec trains it"]
    observed = (f"requires_grad on {len(trainable)}/{len(params)} tensors; "
                f"{len(in_checkpoint)} VAE tensors in model.safetensors")
    if ev.vae_change is not None:
        observed += "; weights equal to their initialisation" if ev.vae_change == 0 else \
            f"; weights differ from their initialisation (max |Δw| {fmt(ev.vae_change)})"
    return verdict(
        f"components.{key}", f"{component.description} {state}", not problems,
        expected=f"{state} (SPEC.md \"Components\"): used only to precompute the targets, never trained",
        observed=observed,
        evidence=f"VAE loaded through fovea.core.vae.load_vae from {ev.vae_origin}; checkpoint tensor names checked "
                 f"for a VAE; a VAE without pretrained weights compared weight by weight with "
                 f"save_random_vae(model.vae.init, run.seed).",
        reason="; ".join(problems) + (". SPEC \"Failure modes\": the VAE trained drifts the targets" if problems else ""),
        fix="load the VAE frozen (fovea.core.vae.load_vae) and keep it out of the model and optimizer",
        measurements={"trainable_tensors": trainable, "checkpoint_vae_tensors": in_checkpoint,
                      "max_weight_change_from_seed": ev.vae_change})


# --------------------------------------------------------------------------- the spec's weights and architecture


def check_components_models(ev: Evidence) -> list[Check]:
    """The ``components.<name>.model`` checks: the spec's weights and architecture, per component that names them."""
    return [model_check(ev, key, c) for key, c in compared_components(ev)]


def compared_components(ev: Evidence) -> list[tuple[str, Component]]:
    """The components whose weights or architecture the spec names."""
    return [(key, c) for key, c in ev.spec.components.items() if c.pretrained is not None or c.architecture]


def architecture_of(ev: Evidence, component: Component) -> dict[str, Any] | None:
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


def architecture_mismatch(arch: dict[str, Any] | None, component: Component) -> dict[str, tuple[Any, Any]]:
    """The architecture values that differ from the spec's: name -> (the part's, the spec's); none when unknown."""
    if arch is None:
        return {}
    return {name: (arch.get(name), value) for name, value in component.architecture.items()
            if not same(arch.get(name), value)}


def _model_name(model_type: str) -> str:
    """transformers' name for a ``model_type`` (``dinov2`` -> ``Dinov2``), from its config class; else the type."""
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    except ImportError:
        return str(model_type)
    return CONFIG_MAPPING_NAMES.get(model_type, str(model_type)).removesuffix("Config")


def model_check(ev: Evidence, key: str, component: Component) -> Check:
    """``components.<key>.model``: the configured weights and the built part's architecture against the spec's."""
    configured = config_value(ev.config, component.pretrained_key) if component.pretrained_key else None
    table = component.pretrained_key.rsplit(".", 1)[0] if component.pretrained_key else None
    arch = architecture_of(ev, component)
    mismatched = architecture_mismatch(arch, component)
    # Another kind of model (the spec's `model_type` differs: a DINOv2 backbone for DINOv3) is said as such:
    # its sizes, registers and patch differ by construction, a list of them would only hide that.
    other_model = None
    if "model_type" in mismatched and mismatched["model_type"][0]:
        actual, spec = mismatched["model_type"]
        other_model = f"a {_model_name(actual)} model (`{actual}`), not the spec's {_model_name(spec)} (`{spec}`)"
    arch_text = ("architecture unknown (no transformers/diffusers config)" if arch is None else
                 "architecture matches the spec" if not mismatched else other_model or
                 "architecture differs: " + ", ".join(f"{k} {fmt(a)} (spec {fmt(b)})" for k, (a, b) in mismatched.items()))
    expected = f"`{component.pretrained}`" if component.pretrained else "the spec's architecture"
    if component.pretrained is None or (configured and configured == component.pretrained):
        ok, observed = not mismatched, f"`{configured or 'random init'}`; {arch_text}"
    elif configured and Path(str(configured)).expanduser().is_dir() and arch is not None and not mismatched:
        ok, observed = True, f"local directory `{configured}`; {arch_text}"
    elif configured:
        ok, observed = False, f"other weights `{configured}`; {arch_text}"
    else:
        size = config_value(ev.config, table + ".size") if table else None
        init = ev.config.model.vae.init if component.location == "vae" else "random"   # a VAE's: model.vae.init
        ok = False
        observed = ("random initialisation" if init == "random" else f"the fixed `{init}` initialisation (model.vae.init)") \
            + (f" at size `{size}`" if size else "") + f"; {arch_text}"
    if other_model:
        reason = (f"the run uses {other_model}: a deliberate substitution or a mistake, either way its results say "
                  f"little about the spec's")
    elif mismatched:
        reason = ("the run trains another model than the spec's: its results say little about the spec's (fine for a "
                  "debug run such as the quick start)")
    else:
        reason = "the spec's architecture without its weights: right for profiling the spec's scale, not for its results"
    fix = "" if not component.pretrained else f"`{component.pretrained_key} = \"{component.pretrained}\"`" + (
        f" and `{table}.backbone` set to the backbone that reads it"
        if other_model and table and config_value(ev.config, table + ".backbone") is not None else "")
    return verdict(
        f"components.{key}.model", f"{component.description}: the spec's weights", ok, otherwise="warn",
        expected=expected, observed=observed,
        evidence=f"config key `{component.pretrained_key}`; architecture read from the built part's config "
                 f"({', '.join(component.architecture) or 'nothing to compare'})",
        reason=reason, label="MODIFIED", fix=fix,
        measurements={"configured": configured, "architecture_mismatch": mismatched})
