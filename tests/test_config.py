"""The typed config: TOML tables, plugin options, overrides and every kind of bad input."""

from __future__ import annotations

import pytest

from fovea.core.config import (apply_override, config_to_toml, load_config, parse_override, read_toml,
                               validate_config)
from fovea.core.errors import ConfigError
from tests.helpers import QUICKSTART, ROOT


def write(tmp_path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_spec_values():
    c = load_config()
    t = c.training
    assert (t.batch_size, t.grad_accum, t.lr, t.weight_decay, t.warmup_steps, t.max_steps, t.grad_clip) == \
        (2, 4, 1e-4, 0.01, 500, 50_000, 1.0)
    assert c.effective_batch_size == 8
    assert (c.data.num_frames, c.data.frame_size, c.precision.dtype, c.model.lambda_coarse) == (8, 256, "bfloat16", 1.0)


@pytest.mark.parametrize("name", ["quickstart.toml", "phase1.toml"])
def test_shipped_configs_validate(name):
    c = load_config(ROOT / "configs" / name)
    assert c.model.encoder.options is not None and c.data.options is not None


def test_phase1_holds_the_spec_values():
    c = load_config(ROOT / "configs" / "phase1.toml")
    assert c.model.encoder.options.pretrained == "facebook/dinov3-vits16-pretrain-lvd1689m"
    assert c.model.llm.pretrained == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert c.model.vae.pretrained == "stabilityai/sd-vae-ft-mse"
    assert (c.training.batch_size, c.training.grad_accum, c.training.max_steps) == (2, 4, 50_000)
    assert (c.data.num_frames, c.data.frame_size, c.precision.dtype) == (8, 256, "bfloat16")


def test_plugin_options_sit_beside_the_name_and_are_validated():
    c = load_config(QUICKSTART)
    assert c.model.encoder.name == "deep"
    assert c.model.encoder.options.size == "tiny"
    assert c.model.head.options.channels == (16, 32, 64)
    assert c.data.options.num_clips == read_toml(QUICKSTART)["data"]["num_clips"]
    assert c.data.options.num_objects == 1
    # the plugin's defaults are filled in, so `config show` prints every option
    assert "trainable = true" in config_to_toml(c)


def test_precedence_overrides_beat_file_beat_defaults(tmp_path):
    path = write(tmp_path, "[training]\nbatch_size = 3\nlr = 0.5\n")
    c = load_config(path, ["training.batch_size=5"])
    assert c.training.batch_size == 5          # override
    assert c.training.lr == 0.5                # file
    assert c.training.grad_accum == 4          # default


@pytest.mark.parametrize("item, keys, value", [
    ("training.batch_size=4", ["training", "batch_size"], 4),
    ("training.lr=3e-4", ["training", "lr"], 3e-4),
    ("run.progress=false", ["run", "progress"], False),
    ("model.encoder.size=vits16", ["model", "encoder", "size"], "vits16"),
    ('run.name="a b"', ["run", "name"], "a b"),
    ("model.head.channels=[8, 16, 32]", ["model", "head", "channels"], [8, 16, 32]),
])
def test_parse_override_types_values_like_toml(item, keys, value):
    assert parse_override(item) == (keys, value)


def test_overrides_are_typed_by_the_schema():
    c = load_config(QUICKSTART, ["training.batch_size=4", "model.encoder.trainable=false",
                                 "model.head.channels=[8, 16, 32]"])
    assert c.training.batch_size == 4 and c.model.encoder.options.trainable is False
    assert c.model.head.options.channels == (8, 16, 32)


def test_show_output_loads_back_to_the_same_config(tmp_path):
    c = load_config(QUICKSTART, ["training.max_steps=7"])
    again = load_config(write(tmp_path, config_to_toml(c)))
    assert again.model_dump() == c.model_dump()


@pytest.mark.parametrize("text, expected", [
    ("[training]\nbatch_size = \n", "invalid TOML: Invalid value (at line 2, column 14)"),
    ("[training]\nbatchsize = 4\n", "training.batchsize: unknown key; did you mean 'batch_size'?"),
    ("[trainig]\nbatch_size = 4\n", "trainig: unknown key; did you mean 'training'?"),
    ('[training]\nbatch_size = "abc"\n', "training.batch_size: Input should be a valid integer"),
    ("[training]\nbatch_size = 0\n", "training.batch_size: Input should be greater than or equal to 1"),
    ('[model.encoder]\nname = "nope"\n', "model.encoder.name: unknown encoder 'nope'; registered encoders: "),
    ('[model.encoder]\nsise = "tiny"\n', "model.encoder.sise: unknown option of encoder 'deep'; did you mean 'size'?"),
    ('[model.encoder]\nsize = "huge"\n', "model.encoder.size: Value error, not a dinov3 size: choose one of tiny, vits16"),
    ('[data]\nnum_clipz = 3\n', "data.num_clipz: unknown option of clip source 'synthetic'; did you mean 'num_clips'?"),
    ('[data]\nmin_radius = 0.3\nmax_radius = 0.1\n', "min_radius (0.3) must not exceed max_radius (0.1)"),
    ('[precision]\ndtype = "float16"\n', "precision.dtype: Input should be 'float32' or 'bfloat16'"),
])
def test_bad_config_gives_one_clear_message(tmp_path, text, expected):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert expected in message
    assert "Traceback" not in message and len(message.splitlines()) == 1


def test_missing_file_and_bad_override_messages(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.toml"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(QUICKSTART, ["training.batch_size"])
    with pytest.raises(ConfigError, match="training.batch_size is a value, not a table"):
        apply_override({"training": {"batch_size": 2}}, "training.batch_size.x=1")
    with pytest.raises(ConfigError, match="training.batch_sise: unknown key; did you mean 'batch_size'"):
        load_config(QUICKSTART, ["training.batch_sise=4"])


def test_validate_config_from_a_dict():
    c = validate_config({"training": {"max_steps": 3}})
    assert c.training.max_steps == 3 and c.model.head.options.film_hidden == 512
