"""K tokens per frame and the query-free baselines: the sequence, no leak, the pass wiring for K > 1."""

from __future__ import annotations

import pytest
import torch

import fovea
from fovea.audit import probes
from fovea.plugins.encoders.deep import DeepEncoder
from fovea.plugins.encoders.dinov3 import normalize
from tests.helpers import QUICKSTART, tiny_overrides


def build(tmp_path, encoder: str):
    return fovea.build_model(fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{"model.encoder": encoder}))).eval()


def test_pooled_with_one_token_is_the_projected_mean_of_the_patch_features(tmp_path):
    model = build(tmp_path, '{name = "pooled", size = "tiny", tokens = 1}')
    encoder = model.encoder
    frames = torch.rand(3, 3, 64, 64)
    cache = encoder.encode(frames)
    with torch.no_grad():
        tokens = encoder.backbone(pixel_values=normalize(frames)).last_hidden_state
        expected = encoder.projection(tokens[:, encoder.num_prefix_tokens:].mean(dim=1))    # (N, D)
        got = encoder.attend(torch.randn(3, encoder.dim), cache)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert got.shape == (3, encoder.dim)


@pytest.mark.parametrize("encoder, tokens", [('{name = "pooled", size = "tiny", tokens = 4}', 4),
                                            ('{name = "pooled", size = "tiny", tokens = 16}', 16),
                                            ('{name = "pixel_shuffle", size = "tiny", ratio = 2}', 16),
                                            ('{name = "pixel_shuffle", size = "tiny", ratio = 4}', 4)])
def test_k_tokens_per_frame_one_pass_no_leak(tmp_path, tiny_batch, encoder, tokens):
    model = build(tmp_path, encoder)
    frames, latents = tiny_batch
    lengths = []
    hook = model.llm.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True)
    with torch.no_grad():
        out = model(frames, latents)
    hook.remove()
    assert lengths == [1 + 8 * tokens]                                     # one pass over [mode, T·K tokens]
    assert out.loss_coarse is out.loss_fine and out.queries is None
    leak = probes.target_leak(model, frames, latents)
    assert leak["pred_fine"] <= 1e-4 * leak["pred_fine_response"] and leak["pred_fine_response"] > 1e-4
    with torch.no_grad():                                                  # the deployed mode reads the same
        deployed = model.autoregressive(frames, latents)["next_latent"].detail["pred"]
    torch.testing.assert_close(deployed, out.pred_fine, rtol=1e-4, atol=1e-5)


def test_a_grid_the_tokens_do_not_divide_is_one_clear_error(tmp_path, tiny_batch):
    model = build(tmp_path, '{name = "pooled", size = "tiny", tokens = 9}')
    with pytest.raises(fovea.FoveaError, match="does not divide the 8 x 8 patch grid"):
        model(*tiny_batch)
    with pytest.raises(fovea.FoveaError, match="not a square"):
        build(tmp_path, '{name = "pooled", size = "tiny", tokens = 8}')


class TwoTokens(DeepEncoder):
    """The deep encoder giving two tokens per frame (its read and a projection of it): a query encoder with K = 2."""

    def __init__(self, config):
        super().__init__(config)
        self.second = torch.nn.Linear(self.dim, self.dim)

    def attend(self, queries, cache, return_attention=False):
        out = super().attend(queries, cache, return_attention=return_attention)
        features = out[0] if return_attention else out
        tokens = torch.stack([features, self.second(features)], dim=1)    # (N, 2, D)
        return (tokens, out[1]) if return_attention else tokens


def test_pass_wiring_probes_hold_for_two_tokens_per_frame(tiny_model, tiny_batch):
    model = tiny_model
    two = TwoTokens(model.encoder.config)
    two.load_state_dict(model.encoder.state_dict(), strict=False)
    model.encoder = two
    frames, latents = tiny_batch
    leak = probes.target_leak(model, frames, latents)      # float noise of batching T copies (the audit's 1e-5)
    assert leak["pred_coarse"] <= 1e-5 and leak["pred_fine"] <= 1e-5 and leak["pred_fine_response"] > 1e-4, leak
    wiring = probes.query_wiring(model, frames, latents)
    assert wiring["pass1_static"] <= 1e-6 and wiring["pass2_shift"] <= 1e-6
    perturb = probes.pass1_perturbation(model, frames, latents)
    t = perturb["t"]
    # float noise of the LLM's attention kernel at 17 positions reaches ~3e-5 of the queries' scale here
    threshold = 1e-4 * perturb["scale"]
    assert max(perturb["change"][:t + 1]) <= threshold < min(perturb["change"][t + 1:]), perturb
    independence = probes.pass_independence(model, frames, latents)
    scale = independence["next_latent_scale"]                  # float noise at 17 positions, as above
    assert independence["next_latent_coarse"] <= 1e-5 * scale < independence["next_latent_fine"], independence


def test_a_pooled_run_is_evaluated_audited_and_compared_as_one_pass(tmp_path):
    import json

    from typer.testing import CliRunner

    from fovea.audit import audit_run
    from fovea.cli import app
    from fovea.core.train import train

    runner = CliRunner()
    runs = []
    for encoder in ('{name = "pooled", size = "tiny", tokens = 4}', '{name = "deep", size = "tiny"}'):
        runs.append(train(fovea.load_config(QUICKSTART, tiny_overrides(
            tmp_path, **{"model.encoder": encoder, "data.num_clips": "10", "eval.val_clips": "2"}))))
        result = runner.invoke(app, ["eval", str(runs[-1].path), "--modes", "coarse,fine"])
        assert result.exit_code == 0, result.output
    pooled, deep = (json.loads(run.eval_file().read_text()) for run in runs)
    assert pooled["single_pass"] and "coarse" not in pooled["modes"] and pooled["improvement"] is None
    assert not deep["single_pass"] and deep["improvement"] is not None
    assert pooled["flops_per_clip"]["train_step"] > pooled["flops_per_clip"]["forward"] > 0
    # four tokens per frame cost the LLM more than one foveated token read twice does not: both are counted
    assert pooled["flops_per_clip"]["forward"] != deep["flops_per_clip"]["forward"]

    checks = {c.id: c for c in audit_run(runs[0].path)[1]}
    assert checks["wiring.pass2_shift"].status == "info" and "reads no query" in checks["wiring.pass2_shift"].observed
    assert checks["results.improvement"].status == "info" and checks["wiring.no_target_leak"].status == "pass"
    compared = runner.invoke(app, ["compare", *(str(run.path) for run in runs)])
    assert compared.exit_code == 0, compared.output
    assert "GFLOPs/clip" in compared.output and "pooled" in compared.output
