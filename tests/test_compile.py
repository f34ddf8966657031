"""``[training] compile`` and activation checkpointing: the losses of a plain run, the same checkpoint names,
and less saved for backward (measured the way ``fovea profile`` measures it)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

import fovea
from fovea.core.train import train
from tests.helpers import QUICKSTART, tiny_overrides

STEPS = {"run.log_every": "1", "training.max_steps": "4", "training.save_every": "4"}
CHECKPOINTED = {"model.encoder.activation_checkpointing": "true", "model.llm.activation_checkpointing": "true"}
COMPILED = {"training.compile": "true", "training.compile_backend": '"aot_eager"'}   # graphs without codegen: fast on CPU


def losses_and_names(tmp_path, **extra) -> tuple[list[float], list[str]]:
    run = train(fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **STEPS, **extra)))
    with safe_open(str(run.checkpoint_file), "pt") as weights:
        names = sorted(weights.keys())
    return [m["loss"] for m in run.read_metrics()], names


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return losses_and_names(tmp_path_factory.mktemp("plain"))


@pytest.mark.parametrize("extra", [CHECKPOINTED, COMPILED, {**COMPILED, **CHECKPOINTED}],
                         ids=["checkpointing", "compile", "both"])
def test_compile_and_checkpointing_train_the_plain_runs_losses_into_the_same_names(tmp_path, plain, extra):
    losses, names = losses_and_names(tmp_path, **extra)
    assert losses == pytest.approx(plain[0], rel=1e-5, abs=1e-6)
    assert names == plain[1] and not any("_orig_mod" in name or "checkpoint" in name for name in names)


@pytest.mark.parametrize("encoder", ["deep", "posthoc", "pooled"])
def test_checkpointed_and_compiled_encoders_give_the_same_loss_and_gradients(tmp_path, tiny_batch, encoder):
    from fovea.core.compile import compile_model

    def loss_and_grads(*extra: str, compiled: bool = False):
        config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{"model.encoder.name": encoder})
                                   + list(extra))
        model = fovea.build_model(config).train()
        if compiled:
            compile_model(model, fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **COMPILED)))
        out = model(*tiny_batch, return_attention=True)
        out.loss.backward()
        return out.loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads()
    for other, other_grads in (loss_and_grads("model.encoder.activation_checkpointing=true",
                                              "model.llm.activation_checkpointing=true"),
                               loss_and_grads(compiled=True)):
        assert torch.allclose(other, loss, rtol=1e-5)
        assert other_grads.keys() == grads.keys()
        for name, grad in grads.items():
            assert torch.allclose(other_grads[name], grad, rtol=1e-4, atol=1e-6), name


def test_checkpointing_lowers_what_the_encoder_and_llm_save_for_backward(tmp_path, tiny_batch):
    """``fovea profile``'s measurement, per part: checkpointed blocks keep their inputs only."""
    from fovea.core.state import prepare_training
    from fovea.profile import measure_micro_batch, memory_model

    saved, modelled = {}, {}
    for on in ("false", "true"):
        config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{
            "model.encoder.activation_checkpointing": on, "model.llm.activation_checkpointing": on}))
        model = fovea.build_model(config).train()
        state = prepare_training(config, model, torch.device("cpu"))
        frames, latents = tiny_batch
        _, saved[on] = measure_micro_batch(state, {"frames": frames, "latents": latents})
        modelled[on] = memory_model(config, model)
    for part in ("encoder", "llm"):
        assert saved["true"][part] < 0.5 * saved["false"][part], part
        assert modelled["true"][f"activations_{part}_gb"] < modelled["false"][f"activations_{part}_gb"]
    assert saved["true"]["head"] == saved["false"]["head"]


def test_the_audit_reports_compile_and_checkpointing(tmp_path):
    from fovea.audit.checks import check_execution

    config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **COMPILED,
                                                          **{"model.llm.activation_checkpointing": "true"}))
    check = check_execution(config)
    assert check.status == "info" and check.section == "training"
    assert check.observed == "torch.compile on (aot_eager); activation checkpointing: encoder off, LLM on"
