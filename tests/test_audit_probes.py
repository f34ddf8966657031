"""The audit against bugs planted on purpose, one per class it must catch: pass independence, a MUST of the
spec, the loss's composition, attention sinks, and the learning probes. Each planted bug is flagged ❌
(or ⚠️ where the spec makes it a SHOULD); the aligned run is clean on the same checks."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from fovea.audit.checks import apply_level, check_learning, check_loss_composition, check_query, check_wiring
from fovea.audit.findings import Check
from fovea.audit.spec import load_spec
from fovea.cli import app
from fovea.core.model import FoveatedVLM
from tests.helpers import reading_pass2
from tests.test_audit import audit, train_tiny

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny quick-start run, trained for 12 steps (enough for its frames to matter)."""
    return train_tiny(tmp_path_factory, **{"data.num_clips": "9", "training.max_steps": "12",
                                           "training.save_every": "12"})


def test_the_aligned_run_passes_every_new_check(run):
    checks = audit(run.path, check_wiring, check_loss_composition, check_learning, check_query)
    for key in ("wiring.pass_independence", "wiring.encode_once", "training.loss_composition",
                "learning.overfit_one_batch", "learning.clip_isolation", "learning.init_loss"):
        assert checks[key].status == "pass", (key, checks[key].observed, checks[key].reason)
    assert checks["query.entropy"].status != "fail"
    assert checks["query.entropy"].measurements["dynamic"]["mass_patches"] > 0.5


# --------------------------------------------------------------------------- pass independence


def test_a_coarse_prediction_reading_pass_two_is_a_failure(run, monkeypatch):
    import fovea.core.model

    monkeypatch.setattr(fovea.core.model, "PassStates", reading_pass2("before_frames"))
    check = audit(run.path, check_wiring)["wiring.pass_independence"]
    assert check.status == "fail" and "coarse prediction reads pass 2" in check.reason
    assert check.measurements["next_latent_coarse"] > 0


# --------------------------------------------------------------------------- a MUST reported as a warning


def test_frames_encoded_again_are_a_failure_because_the_spec_says_must(run, monkeypatch):
    forward = FoveatedVLM.forward

    def encoding_twice(self, frames, latents, targets=None, return_attention=False):
        self.encoder.encode(frames.flatten(0, 1).float().div(255.0))       # every frame encoded a second time
        return forward(self, frames, latents, targets, return_attention)

    monkeypatch.setattr(FoveatedVLM, "forward", encoding_twice)
    check = audit(run.path, check_wiring)["wiring.encode_once"]
    assert check.status == "fail" and check.reason.startswith("a MUST of the spec")


def test_levels_come_from_the_spec():
    requirements = load_spec().requirements
    assert requirements["wiring.encode_once"] == "must" and requirements["training.loss_composition"] == "must"
    warn = Check("wiring.encode_once", "t", "wiring", "warn", expected="e", observed="o", reason="r")
    assert apply_level(warn, requirements).status == "fail"
    assert apply_level(Check("x.y", "t", "wiring", "warn", expected="e", observed="o"), requirements).status == "warn"
    assert apply_level(Check("wiring.encode_once", "t", "wiring", "pass", expected="e", observed="o"),
                       {"wiring.encode_once": "info"}).status == "pass"
    assert apply_level(Check("a.b", "t", "wiring", "fail", expected="e", observed="o"), {"a.b": "should"}).status == "warn"


# --------------------------------------------------------------------------- the loss's composition


@pytest.mark.parametrize("bug", ["wrong_lambda", "detached_coarse", "target_off_by_one"])
def test_a_loss_that_is_not_the_specs_is_a_failure(run, monkeypatch, bug):
    if bug == "target_off_by_one":
        from fovea.plugins.objectives.next_latent import NextLatent

        loss = NextLatent.loss
        # frame t scored against frame t + 1's latent (the last against itself)
        monkeypatch.setattr(NextLatent, "loss", lambda self, model, states, latents, targets: loss(
            self, model, states, torch.cat([latents[:, 1:], latents[:, -1:]], dim=1), targets))
    else:
        forward = FoveatedVLM.forward

        def miscomposed(self, *args, **kwargs):
            out = forward(self, *args, **kwargs)
            coarse = out.loss_coarse.detach() if bug == "detached_coarse" else 0.5 * out.loss_coarse
            out.loss = out.loss_fine + self.lambda_coarse * coarse
            return out

        monkeypatch.setattr(FoveatedVLM, "forward", miscomposed)
    check = audit(run.path, check_loss_composition)["training.loss_composition"]
    assert check.status == "fail", check.observed
    expected = {"wrong_lambda": "weighs 0.5", "detached_coarse": "detached",
                "target_off_by_one": "true targets"}[bug]
    assert expected in check.reason


# --------------------------------------------------------------------------- attention sinks


def test_a_query_collapsed_onto_a_register_is_a_failure(run, monkeypatch):
    from fovea.plugins.encoders.deep import DeepEncoder

    attend = DeepEncoder.attend

    def onto_register(self, queries, cache, return_attention=False):
        out = attend(self, queries, cache, return_attention=return_attention)
        if not return_attention:
            return out
        features, attention = out
        sunk = torch.zeros_like(attention)
        sunk[:, 1] = 1.0                                                     # all of it on the first register
        return features, sunk

    monkeypatch.setattr(DeepEncoder, "attend", onto_register)
    check = audit(run.path, check_query)["query.entropy"]
    assert check.status == "fail" and "attention sinks" in check.reason
    assert check.measurements["dynamic"]["mass_prefix"] == pytest.approx(1.0)


def forced_attention(shape: str):
    """``DeepEncoder.attend`` whose attention maps (the real features kept) are replaced: ``"peaked"`` puts the
    static query's weight on 4 patches and the dynamic query's on 1; ``"uniform"`` spreads both evenly over
    every patch."""
    from fovea.core.attention import token_layout
    from fovea.plugins.encoders.deep import DeepEncoder

    attend = DeepEncoder.attend
    reads = []

    def forced(self, queries, cache, return_attention=False):
        out = attend(self, queries, cache, return_attention=return_attention)
        if not return_attention:
            return out
        features, attention = out                                            # (N, D), (N, K')
        reads.append(1)
        prefix = self.num_prefix_tokens
        patches = token_layout(attention.shape[-1], prefix)[0]
        looked = patches if shape == "uniform" else 4 if len(reads) % 2 else 1   # pass 1, then pass 2
        weights = torch.zeros_like(attention)
        weights[:, prefix:prefix + looked] = 1.0 / looked
        return features, weights

    return forced


@pytest.mark.parametrize(("shape", "status"), [("peaked", "pass"), ("uniform", "warn")])
def test_attention_entropy_passes_when_peaked_and_warns_when_uniform(run, monkeypatch, shape, status):
    from fovea.plugins.encoders.deep import DeepEncoder

    monkeypatch.setattr(DeepEncoder, "attend", forced_attention(shape))
    check = audit(run.path, check_query)["query.entropy"]
    assert check.status == status, (check.observed, check.reason)
    dynamic = check.measurements["dynamic"]
    assert dynamic["mass_patches"] == pytest.approx(1.0)
    if shape == "peaked":
        assert dynamic["entropy"] == pytest.approx(0.0, abs=1e-6) and dynamic["peak"] == pytest.approx(1.0)
    else:
        assert dynamic["ratio"] == pytest.approx(1.0) and "near-uniform attention" in check.reason


# --------------------------------------------------------------------------- learning


def test_a_loss_that_cannot_fall_fails_the_overfit_probe(run, monkeypatch):
    forward = FoveatedVLM.forward

    def frozen_loss(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        out.loss = out.loss.detach() + 0.0 * self.q_static.sum()             # a loss no step can lower
        return out

    monkeypatch.setattr(FoveatedVLM, "forward", frozen_loss)
    checks = audit(run.path, check_learning)
    assert checks["learning.overfit_one_batch"].status == "fail"
    assert checks["learning.overfit_one_batch"].measurements["drop"] == pytest.approx(0.0, abs=1e-6)


def test_clips_that_read_each_other_fail_the_isolation_probe(run, monkeypatch):
    from fovea.plugins.encoders.deep import DeepEncoder

    attend = DeepEncoder.attend

    def mixing(self, queries, cache, return_attention=False):   # a view that shifts rows across clips
        out = attend(self, queries, cache, return_attention=return_attention)
        return (out[0].roll(1, dims=0), out[1]) if return_attention else out.roll(1, dims=0)

    monkeypatch.setattr(DeepEncoder, "attend", mixing)
    check = audit(run.path, check_learning)["learning.clip_isolation"]
    assert check.status == "fail" and "read each other" in check.reason


def test_a_model_that_ignores_its_frames_is_flagged(run, monkeypatch):
    from fovea.plugins.encoders.deep import DeepEncoder

    attend = DeepEncoder.attend

    def blind(self, queries, cache, return_attention=False):
        out = attend(self, queries, cache, return_attention=return_attention)
        return (out[0] * 0, out[1]) if return_attention else out * 0

    monkeypatch.setattr(DeepEncoder, "attend", blind)
    check = audit(run.path, check_learning)["learning.blank_frames"]
    assert check.status == "warn" and check.measurements["rise"] == pytest.approx(0.0, abs=1e-6)


def test_an_initialisation_at_the_wrong_scale_is_flagged(run, monkeypatch):
    from fovea.plugins.heads.film import FiLMHead

    forward = FiLMHead.forward
    monkeypatch.setattr(FiLMHead, "forward", lambda self, hidden, prev: 100 * forward(self, hidden, prev))
    check = audit(run.path, check_learning)["learning.init_loss"]
    assert check.status == "warn" and check.measurements["ratios"]["next_latent"] > 3


def test_strict_audit_exits_one_on_a_planted_bug(run, monkeypatch):
    import fovea.core.model

    monkeypatch.setattr(fovea.core.model, "PassStates", reading_pass2("before_frames"))
    result = runner.invoke(app, ["audit", str(run.path), "--strict"])
    assert result.exit_code == 1 and "wiring.pass_independence" in result.output


# --------------------------------------------------------------------------- a third-party encoder


class PatchReader(torch.nn.Module):
    """A third-party encoder keeping only the contract: encode, attend, dim (no optional extension)."""

    from pydantic import BaseModel as _Base

    class Config(_Base):
        dim: int = 16

    def __init__(self, config):
        super().__init__()
        self.dim = config.dim
        self.patches = torch.nn.Conv2d(3, config.dim, 16, 16)

    def encode(self, frames):
        return self.patches(frames).flatten(2).transpose(1, 2)                     # (N, P, D)

    def attend(self, queries, cache, return_attention=False):
        weights = torch.softmax((cache @ queries[:, :, None]).squeeze(-1) / self.dim ** 0.5, dim=-1)   # (N, P)
        features = (weights[:, :, None] * cache).sum(dim=1)                       # (N, D)
        return (features, weights) if return_attention else features


class ThirdParty:
    import fovea as _fovea

    @_fovea.hookimpl
    def fovea_register_encoders(self, register):
        register("patch_reader", PatchReader)


def test_a_third_party_encoder_runs_every_contract_level_probe(tmp_path_factory):
    from fovea.core import plugins

    plugin = ThirdParty()
    plugins.register_plugin(plugin, name="third-party")
    try:
        run = train_tiny(tmp_path_factory, **{"data.num_clips": "9", "model.encoder": '{name = "patch_reader"}'})
        result = runner.invoke(app, ["audit", str(run.path)])
        assert result.exit_code == 0, result.output
        checks = audit(run.path, check_wiring, check_loss_composition, check_learning, check_query)
    finally:
        plugins.unregister_plugin(plugin)
    for key in ("wiring.pass1_static", "wiring.pass2_shift", "wiring.pass2_follows_pass1", "wiring.no_target_leak",
                "wiring.encode_once", "wiring.pass_independence", "training.loss_composition",
                "learning.overfit_one_batch", "learning.clip_isolation", "query.sensitivity", "query.entropy"):
        assert checks[key].status != "info", (key, checks[key].observed)          # measured, whatever it found
    for key in ("wiring.pass_independence", "wiring.no_target_leak", "learning.clip_isolation"):
        assert checks[key].status == "pass", (key, checks[key].observed)
    for key in ("query.cache_matches_reference", "query.input_proj_bias"):
        assert checks[key].status == "info" and checks[key].observed.startswith("not measured")
    report = (run.path / "audit.md").read_text()
    assert "**Probes:**" in report and "`query.cache_matches_reference` (the encoder has no reference forward" in report
