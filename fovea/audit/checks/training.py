"""Section 5, training configuration: every training value of the spec against the run's config (each spec
entry names its config key), the objectives, the precision, how the step ran, and the epochs over the clips.
The loss's composition and the learning probes, in the same section, are ``checks.learning``."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from fovea.audit.findings import Check, fmt, merge_fixes, verdict
from fovea.audit.spec import config_value, same

if TYPE_CHECKING:
    from fovea.audit.evidence import Evidence
    from fovea.audit.spec import TrainingValue


def check_training(ev: Evidence) -> list[Check]:
    """Every training value against the spec (✅ equal, ⚠️ modified with both values); epochs."""
    config = ev.config
    checks = [training_value_check(ev, name, entry) for name, entry in ev.spec.training.values.items()]
    trained = ", ".join(f"{name} (weight {fmt(table.weight)})" for name, table in config.objectives.items())
    checks.append(verdict(
        "training.objectives", "Objectives trained", "info",
        expected="next_latent (SPEC phase 1: next-frame VAE latent, MSE)",
        observed=trained + (f"; prompt {config.model.prompt!r}" if config.model.prompt else "")
        + ("" if ev.model.codec is None else f"; tokenizer: {ev.model.codec.name}"),
        evidence="[objectives] and [model] prompt in config.toml",
        reason="" if list(config.objectives) == ["next_latent"] else
        "the run trains beyond the spec's phase 1: its losses and improvement are per objective (the results below)",
        measurements={"objectives": {n: t.weight for n, t in config.objectives.items()},
                      "prompt": config.model.prompt}))
    dtype, wanted = config.precision.dtype, ev.spec.precision.dtype
    checks.append(verdict(
        "training.dtype", "Precision", dtype == wanted, otherwise="warn",
        expected=wanted, observed=dtype if dtype == wanted else f"{dtype} (spec {wanted})",
        evidence="[precision] dtype in config.toml",
        reason="different speed and memory; bfloat16 autocast is what the memory estimate assumes",
        label="MODIFIED", fix=f"`dtype = \"{wanted}\"`"))
    merge_fixes(checks, "use the spec's values for a run meant to test it (configs/phase1.toml has them), or record "
                        "why this run changed them: {}")
    checks.append(check_execution(config))
    checks.append(epochs_check(ev))
    return checks


def training_value_check(ev: Evidence, name: str, entry: TrainingValue) -> Check:
    """``training.<name>``: the run's value at the entry's config key (the effective batch: computed) against the spec's."""
    config = ev.config
    if entry.key is None:   # the effective (global) batch: what one optimizer step averages over
        observed = config.global_batch_size(ev.world_size)
        shown = fmt(observed) + (f" ({config.training.batch_size} × {config.training.grad_accum} × {ev.world_size} "
                                 f"processes)" if ev.world_size > 1 else "")
        evidence = "batch_size × grad_accum from config.toml × the world size in summary.json"
        fix = f"batch_size × grad_accum × processes = {fmt(entry.value)}"
    else:
        observed = config_value(config, entry.key)
        shown, evidence, fix = fmt(observed), "the run's config.toml", f"`{name} = {fmt(entry.value)}`"
    ok = same(observed, entry.value)
    return verdict(f"training.{name}", entry.title, ok, otherwise="warn", expected=fmt(entry.value),
                   observed=shown if ok else f"{shown} (spec {fmt(entry.value)})", evidence=evidence,
                   reason=entry.impact, label="MODIFIED", fix=fix)


def check_execution(config) -> Check:
    """How the run's step ran (``torch.compile``, activation checkpointing): ℹ️, neither changes what is learned."""
    from fovea.core.compile import checkpointed_parts

    training = config.training
    checkpointed = checkpointed_parts(config)
    compiled = f"on ({training.compile_backend})" if training.compile else "off"
    return verdict(
        "training.execution", "Compilation and activation checkpointing", "info",
        expected="any (the spec does not say; the same losses either way, within float rounding)",
        observed=(f"torch.compile {compiled}; activation checkpointing: encoder "
                  f"{'on' if checkpointed['encoder'] else 'off'}, LLM {'on' if checkpointed['llm'] else 'off'}"),
        evidence="[training] compile, [model.encoder] and [model.llm] activation_checkpointing in config.toml",
        reason="speed and memory only: activation checkpointing trades about one more forward of a component for "
               "its activations, compilation trades compile time for faster steps",
        measurements={"compile": training.compile, "compile_backend": training.compile_backend,
                      "activation_checkpointing": checkpointed})


def epochs_check(ev: Evidence) -> Check:
    """``training.epochs``: max_steps × global batch / training clips against the spec's most."""
    spec, config = ev.spec.training, ev.config
    clips = ev.summary.get("num_clips") or (ev.data_report or {}).get("num_clips")
    if not isinstance(clips, (int, float)) or clips <= 0:
        return verdict("training.epochs", "Epochs", "info", expected=f"≤ {fmt(spec.max_epochs)}",
                       observed="the number of training clips is not in summary.json or data_report.json",
                       reason="cannot tell how many passes over the data the run made")
    batch = config.global_batch_size(ev.world_size)
    epochs = config.training.max_steps * batch / clips
    return verdict(
        "training.epochs", "Epochs over the training clips", epochs <= spec.max_epochs, otherwise="warn",
        expected=f"max_steps × global batch / clips ≤ {fmt(spec.max_epochs)} (SPEC: do not train past one epoch)",
        observed=f"{config.training.max_steps} × {batch} / {int(clips)} clips = {epochs:.2f} epochs",
        evidence="max_steps and batch from config.toml, clips from summary.json",
        reason="SPEC \"Failure modes\": several epochs on a small set — the model memorises the clips and the eval "
               "loss rises",
        fix=(f"more clips (≥ {math.ceil(config.training.max_steps * batch / spec.max_epochs)}) "
             f"or fewer steps (≤ {int(clips * spec.max_epochs // batch)})"),
        label="SEVERAL EPOCHS", measurements={"epochs": epochs, "num_clips": clips})
