"""Pretrained loading through from_pretrained: tiny random models saved to a directory and loaded back."""

from __future__ import annotations

import json

import pytest
import torch

import fovea
from fovea.core.errors import FoveaError
from tests.helpers import QUICKSTART, tiny_overrides


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """Tiny random DINOv3, Llama (as a causal LM, like SmolLM2's checkpoint) and AutoencoderKL, saved."""
    from diffusers import AutoencoderKL
    from transformers import DINOv3ViTConfig, DINOv3ViTModel, LlamaConfig, LlamaForCausalLM

    from fovea.core import llm, vae
    from fovea.plugins.encoders import dinov3

    root = tmp_path_factory.mktemp("pretrained")
    torch.manual_seed(123)
    models = {
        "dinov3": DINOv3ViTModel(DINOv3ViTConfig(**dinov3.SIZES["tiny"])),
        "llm": LlamaForCausalLM(LlamaConfig(**llm.SIZES["tiny"])),
        "vae": AutoencoderKL(**vae.vae_architecture(fovea.load_config(QUICKSTART).model.vae)),
    }
    for name, model in models.items():
        model.save_pretrained(root / name)
    tiny_tokenizer().save_pretrained(root / "llm")             # beside the weights, as on the hub
    return root, models


def tiny_tokenizer():
    """A byte-level BPE tokenizer (256 bytes and a few merges) built with the tokenizers library."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(["a red ball bounces", "the ball rolls left", "two balls"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def test_models_load_from_local_directories(saved_models, tmp_path):
    from fovea.core.vae import latent_shape, load_vae

    root, saved = saved_models
    config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{
        "model.encoder.pretrained": f'"{root / "dinov3"}"', "model.llm.pretrained": f'"{root / "llm"}"',
        "model.vae.pretrained": f'"{root / "vae"}"', "model.vae.init": '"random"'}))
    model = fovea.build_model(config)
    torch.testing.assert_close(model.encoder.backbone.state_dict(), saved["dinov3"].state_dict(), rtol=0, atol=0)
    torch.testing.assert_close(model.llm.state_dict(), saved["llm"].model.state_dict(), rtol=0, atol=0)
    vae = load_vae(config.model.vae.pretrained)
    torch.testing.assert_close(vae.state_dict(), saved["vae"].state_dict(), rtol=0, atol=0)
    assert not any(p.requires_grad for p in vae.parameters())            # the VAE is always frozen
    assert latent_shape(config.model.vae, 64) == (4, 8, 8)


def test_training_runs_on_loaded_models(saved_models, tmp_path):
    from fovea.core.train import train

    root, _ = saved_models
    config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{
        "model.encoder.pretrained": f'"{root / "dinov3"}"', "model.llm.pretrained": f'"{root / "llm"}"',
        "model.vae.pretrained": f'"{root / "vae"}"', "model.vae.init": '"random"', "training.max_steps": "2"}))
    run = train(config)
    assert len(run.read_metrics()) == 1
    assert json.loads(run.data_report_file.read_text())["vae"] == str(root / "vae")   # used as is


@pytest.mark.parametrize("key", ["model.encoder.pretrained", "model.llm.pretrained"])
def test_missing_directory_is_a_clear_error_not_a_random_init(tmp_path, key):
    config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{key: f'"{tmp_path / "nowhere"}"'}))
    with pytest.raises(FoveaError, match=f"no directory at {key} = .*nowhere.*save_pretrained"):
        fovea.build_model(config)


def test_directory_without_a_model_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{"model.llm.pretrained": f'"{tmp_path / "empty"}"'}))
    with pytest.raises(FoveaError, match="cannot load the language model from .*empty.*save_pretrained"):
        fovea.build_model(config)


def test_tokenizer_loads_from_the_llm_directory(saved_models):
    from fovea.core.config import LLMConfig
    from fovea.core.llm import load_tokenizer

    root, _ = saved_models
    tokenizer = load_tokenizer(LLMConfig(pretrained=str(root / "llm")))
    text = "A red ball, 2 balls: 3!"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text and len(ids) < len(text.encode())    # the merges were saved too


def test_directory_without_a_tokenizer_is_a_clear_error(saved_models):
    from fovea.core.config import LLMConfig
    from fovea.core.llm import load_tokenizer

    root, _ = saved_models
    with pytest.raises(FoveaError, match="cannot load the tokenizer of the language model from .*dinov3"):
        load_tokenizer(LLMConfig(pretrained=str(root / "dinov3")))
