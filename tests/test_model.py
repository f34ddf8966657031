"""The two-pass model: wiring, no target leak, one encode per frame, seeded construction."""

from __future__ import annotations

import pytest
import torch

import fovea
from fovea.audit import probes
from tests.helpers import QUICKSTART, tiny_overrides


def test_forward_shapes_and_losses(tiny_model, tiny_batch):
    frames, latents = tiny_batch
    out = tiny_model(frames, latents, return_attention=True)
    assert out.pred_fine.shape == out.pred_coarse.shape == latents.shape
    assert out.queries.shape == (2, 8, tiny_model.encoder.dim)
    assert out.attention_static.shape[:2] == out.attention_dynamic.shape[:2] == (2, 8)
    torch.testing.assert_close(out.loss, out.loss_fine + tiny_model.lambda_coarse * out.loss_coarse)
    assert torch.isfinite(out.loss)


def test_each_frame_is_encoded_once_and_attended_twice(tiny_model, tiny_batch):
    assert probes.encode_calls(tiny_model, *tiny_batch) == [16]      # one batched call over all B*T frames
    with torch.no_grad(), probes.record_attend_calls(tiny_model) as calls:
        tiny_model(*tiny_batch)
    assert [c.shape for c in calls] == [torch.Size([16, tiny_model.encoder.dim])] * 2


def test_no_prediction_sees_its_target_frame(tiny_model, tiny_batch):
    leak = probes.target_leak(tiny_model, *tiny_batch)
    assert leak["pred_coarse"] <= 1e-6 and leak["pred_fine"] <= 1e-6


def test_leak_probe_catches_an_off_by_one(tiny_model, tiny_batch, monkeypatch):
    read = tiny_model._read_sequence
    # the state used for frame t would then have seen z_t: the classic wiring bug
    monkeypatch.setattr(tiny_model, "_read_sequence", lambda token, z, *rest: read(token, z, *rest).roll(-1, dims=1))
    leak = probes.target_leak(tiny_model, *tiny_batch)
    assert leak["pred_coarse"] > 1e-4 and leak["pred_fine"] > 1e-4    # 100x above the clean bound


def test_pass2_reads_with_pass1_queries_shifted_by_one(tiny_model, tiny_batch):
    wiring = probes.query_wiring(tiny_model, *tiny_batch)
    assert wiring["attend_calls"] == 2
    assert wiring["pass1_static"] == 0.0
    assert wiring["pass2_shift"] <= 1e-6


def test_dynamic_reads_depend_on_pass1(tiny_model, tiny_batch):
    """Perturbing the pass-1 read of frame t changes pass-2 reads of frames > t only (the real forward, its
    first attend call's output nudged)."""
    t = 3
    found = probes.pass1_perturbation(tiny_model, *tiny_batch, t=t)
    assert found["attend_calls"] == 2 and found["t"] == t
    change = torch.tensor(found["change"])                          # (T,) per frame
    assert change[: t + 1].max() == 0                   # frames <= t read with queries from before t
    assert (change[t + 1:] > 0).all()                   # every later read follows pass 1


def test_learned_queries_follow_the_spec(tiny_model):
    dim = tiny_model.encoder.dim
    assert tiny_model.q_static.shape == tiny_model.q_init.shape == (1, dim)
    assert 0.5 < tiny_model.q_static.std().item() < 1.5            # std 1.0, not 0.02
    assert not tiny_model.z_vae_init.any()
    assert tiny_model.coarse_token.shape == (1, 1, tiny_model.llm.config.hidden_size)


def test_construction_is_seeded(tmp_path):
    a = fovea.build_model(fovea.load_config(QUICKSTART, tiny_overrides(tmp_path)))
    b = fovea.build_model(fovea.load_config(QUICKSTART, tiny_overrides(tmp_path)))
    c = fovea.build_model(fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{"run.seed": "1"})))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.q_static, c.q_static)


@pytest.mark.parametrize("trainable", [True, False])
def test_llm_trainable_flag(tmp_path, trainable):
    config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{"model.llm.trainable": str(trainable).lower()}))
    model = fovea.build_model(config)
    layers = [p.requires_grad for n, p in model.llm.named_parameters() if "embed_tokens" not in n]
    assert all(flag == trainable for flag in layers)
    assert not model.llm.get_input_embeddings().weight.requires_grad   # never read: frames enter as embeddings


def test_gradient_reaches_every_trainable_parameter(tiny_config, tiny_batch):
    model = fovea.build_model(tiny_config).train()
    model(*tiny_batch).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, f"no gradient reached: {missing}"
