"""The encoders' ViT backbones (``fovea.plugins.encoders.backbone``): DINOv3, the spec's, and DINOv2, the one
fVLM trained. Options and presets, frame sizes, pretrained loading, every built-in encoder on DINOv2, and the
audit's architecture check naming another backbone plainly. The deep encoder's cache against its masked
reference on both backbones: ``tests/test_deep_encoder.py``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

import fovea
from fovea.core.errors import ConfigError
from fovea.plugins.encoders.backbone import DINOv2, DINOv3, normalize
from fovea.plugins.encoders.deep import DeepEncoder, masked_forward
from tests.helpers import QUICKSTART, tiny_overrides

TINY_DINOV2 = '{name = "deep", backbone = "dinov2", size = "tiny"}'


def config_on(tmp_path, encoder: str = TINY_DINOV2, frame_size: int = 56, **extra):
    """The quick start at a DINOv2-sized frame (56 px: a 4 x 4 grid of 14-px patches) with ``encoder``."""
    return fovea.load_config(QUICKSTART, tiny_overrides(
        tmp_path, **{"model.encoder": encoder, "data.frame_size": str(frame_size), **extra}))


def batch(config, B: int = 2):
    """Random uint8 frames (B, T, 3, S, S) and latents of the model's latent shape."""
    from fovea.core.vae import latent_shape

    g = torch.Generator().manual_seed(0)
    T, S = config.data.num_frames, config.data.frame_size
    frames = torch.randint(0, 256, (B, T, 3, S, S), dtype=torch.uint8, generator=g)
    return frames, torch.randn(B, T, *latent_shape(config.model.vae, S), generator=g)


def test_options_default_to_dinov3_and_each_backbone_has_its_own_sizes():
    assert DeepEncoder.Config().backbone == "dinov3" and DeepEncoder.Config().size == "vits16"
    assert DeepEncoder.Config(backbone="dinov2").size == "vits14"
    with pytest.raises(ValueError, match="not a dinov2 size: choose one of tiny, vits14"):
        DeepEncoder.Config(backbone="dinov2", size="vits16")
    with pytest.raises(ConfigError, match="not a dinov3 size"):
        fovea.load_config(QUICKSTART, ["model.encoder.size=vits14"])
    # the module's older name still imports, as DINOv3's
    from fovea.plugins.encoders.backbone import BackboneOptions, load_backbone
    from fovea.plugins.encoders.dinov3 import SIZES, DINOv3Options, load_dinov3

    assert DINOv3Options is BackboneOptions and load_dinov3 is load_backbone and SIZES is DINOv3.sizes


def test_dinov2_vits14_is_dinov2_small_and_has_no_registers_and_no_rope():
    torch.manual_seed(0)
    encoder = DeepEncoder(DeepEncoder.Config(backbone="dinov2"))
    config = encoder.backbone_config
    assert type(encoder.backbone).__name__ == "Dinov2Model" and config.model_type == "dinov2"
    # facebook/dinov2-small: hidden 384, 12 layers, 6 heads, patch 14, MLP 1536, layer scale, 37 x 37 positions
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.patch_size) == (384, 12, 6, 14)
    assert encoder.vit.layers[0].mlp.fc1.out_features == 1536 and config.layerscale_value == 1.0
    assert encoder.backbone.embeddings.position_embeddings.shape == (1, 37 * 37 + 1, 384)
    assert encoder.num_prefix_tokens == 1 and not hasattr(encoder.backbone, "rope_embeddings")
    assert not encoder.backbone.embeddings.mask_token.requires_grad      # only masked-image pre-training reads it


@pytest.mark.parametrize("encoder", [TINY_DINOV2,
                                     '{name = "posthoc", backbone = "dinov2", size = "tiny"}',
                                     '{name = "pooled", backbone = "dinov2", size = "tiny", tokens = 4}',
                                     '{name = "pixel_shuffle", backbone = "dinov2", size = "tiny", ratio = 2}'],
                         ids=["deep", "posthoc", "pooled", "pixel_shuffle"])
def test_every_builtin_encoder_trains_on_dinov2(tmp_path, encoder):
    from fovea.profile import memory_model

    config = config_on(tmp_path, encoder)
    model = fovea.build_model(config)
    frames, latents = batch(config)
    out = model(frames, latents)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    embeddings = model.encoder.backbone.embeddings
    # the learned positions (interpolation skipped at the preset's own 56 px) and the patches get gradients
    assert embeddings.position_embeddings.grad.any() and embeddings.patch_embeddings.projection.weight.grad.any()
    cache = model.encoder.encode(frames[0].float() / 255)
    if "patches" in cache:                                                  # pooled, pixel_shuffle: the 4 x 4 grid
        assert cache["patches"].shape == (config.data.num_frames, 4, 4, model.encoder.dim)
    else:                                                                   # [CLS, 16 patches]: no registers
        assert cache["tokens"].shape == (config.data.num_frames, 1 + 16, model.encoder.dim)
    with torch.no_grad():
        _, attention = model.encoder.attend(torch.randn(config.data.num_frames, model.encoder.dim), cache,
                                            return_attention=True)
    extra = 1 if config.model.encoder.name == "deep" else 0                 # deep: the query's own column
    assert attention.shape == (config.data.num_frames, 1 + 16 + extra)
    assert memory_model(config, model)["activations_gb"] > 0                # the audit's estimate reads DINOv2's config


def test_pooled_on_dinov2_is_the_projected_mean_of_its_patch_features(tmp_path):
    model = fovea.build_model(config_on(tmp_path, '{name = "pooled", backbone = "dinov2", size = "tiny"}')).eval()
    encoder = model.encoder
    frames = torch.rand(3, 3, 56, 56)
    with torch.no_grad():
        tokens = encoder.backbone(pixel_values=normalize(frames)).last_hidden_state       # (3, 1 + 16, D)
        expected = encoder.projection(tokens[:, 1:].mean(dim=1))
        got = encoder.attend(torch.randn(3, encoder.dim), encoder.encode(frames))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_a_frame_size_the_patches_do_not_divide_is_one_clear_error(tmp_path):
    # 64 px is 4 whole 14-px patches and 8 pixels left over, which the ViT would silently drop
    with pytest.raises(ConfigError, match="data.frame_size = 64 does not fit the encoder's 14-px patches; "
                                          "choose a multiple of 14 .e.g. 56 or 224."):
        fovea.build_model(config_on(tmp_path, frame_size=64))
    from fovea.cli import app

    overrides = tiny_overrides(tmp_path, **{"model.encoder": TINY_DINOV2})       # the quick start's 64 px
    result = CliRunner().invoke(app, ["run", str(QUICKSTART), *[a for o in overrides for a in ("--set", o)]])
    assert result.exit_code == 2 and "multiple of 14" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()                                     # refused before anything is written
    # the encoder used directly says the same at its first read
    torch.manual_seed(0)
    encoder = DeepEncoder(DeepEncoder.Config(backbone="dinov2", size="tiny"))
    with pytest.raises(ConfigError, match="64 x 64 frames do not fit the DINOv2 backbone's 14-px patches"):
        encoder.encode(torch.rand(1, 3, 64, 64))


@pytest.fixture(scope="module")
def saved_dinov2(tmp_path_factory):
    """A tiny random DINOv2 saved with save_pretrained, as facebook/dinov2-small is on the hub."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(123)
    model = Dinov2Model(Dinov2Config(**DINOv2.sizes["tiny"]))
    path = tmp_path_factory.mktemp("pretrained") / "dinov2"
    model.save_pretrained(path)
    return path, model


@torch.no_grad()
def test_a_pretrained_dinov2_loads_and_keeps_the_deep_encoders_invariants(tmp_path, saved_dinov2):
    path, saved = saved_dinov2
    config = config_on(tmp_path, f'{{name = "deep", backbone = "dinov2", pretrained = "{path}"}}')
    encoder = fovea.build_model(config).encoder.eval()
    torch.testing.assert_close(encoder.backbone.state_dict(), saved.state_dict(), rtol=0, atol=0)
    assert not encoder.backbone.embeddings.mask_token.requires_grad
    frames, queries = torch.rand(2, 3, 112, 112), torch.randn(2, encoder.dim)    # positions interpolated to 8 x 8
    features, tokens = masked_forward(encoder, frames, queries)
    cache = encoder.encode(frames)
    assert (encoder.attend(queries, cache) - features).abs().max() <= 1e-5
    assert (cache["tokens"] - tokens).abs().max() <= 1e-5


def test_a_checkpoint_of_the_other_backbone_is_one_clear_error(tmp_path, saved_dinov2):
    path, _ = saved_dinov2
    with pytest.raises(ConfigError, match=r"holds a `dinov2` model, but model.encoder.backbone = \"dinov3\" reads "
                                          r"`dinov3_vit` checkpoints: set model.encoder.backbone = \"dinov2\""):
        fovea.build_model(config_on(tmp_path, f'{{name = "deep", pretrained = "{path}"}}', frame_size=64))


@pytest.mark.parametrize("backbone", ["dinov3", "dinov2"])
def test_the_audit_says_plainly_that_the_run_uses_another_backbone(tmp_path, backbone):
    """``components.encoder.model`` against the spec's DINOv3: DINOv2 is named as another model, not as a
    list of sizes that differ; a DINOv3 of another size still lists them."""
    from fovea.audit.checks.components import model_check
    from fovea.audit.spec import load_spec

    encoder = f'{{name = "deep", backbone = "{backbone}", size = "tiny"}}'
    config = config_on(tmp_path, encoder, frame_size=56 if backbone == "dinov2" else 64)
    torch.manual_seed(0)
    evidence = SimpleNamespace(config=config, initial=SimpleNamespace(encoder=DeepEncoder(config.model.encoder.options)))
    check = model_check(evidence, "encoder", load_spec().components["encoder"])
    assert check.status == "warn" and check.label == "MODIFIED"
    if backbone == "dinov2":
        assert check.observed == ("random initialisation at size `tiny`; a Dinov2 model (`dinov2`), not the spec's "
                                  "DINOv3ViT (`dinov3_vit`)")
        assert "the run uses a Dinov2 model" in check.reason
        assert "model.encoder.backbone" in check.recommendation
    else:
        assert "architecture differs: hidden_size 32 (spec 384)" in check.observed
        assert "backbone" not in check.recommendation
