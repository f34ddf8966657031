"""Mutated configs never crash fovea: every outcome is exit 0, or one clear error and exit 2 (hypothesis)."""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fovea.cli import app
from tests.helpers import QUICKSTART, tiny_overrides

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

runner = CliRunner()
BASE = tomllib.loads(QUICKSTART.read_text(encoding="utf-8"))
WORDS = ["", "tiny", "deep", "posthoc", "film", "synthetic", "videos", "bfloat16", "float16", "auto", "cuda",
         "cosine", "skip", "stop", "nope", "smollm2-135m", "sd", "/nonexistent", "runs"]
VALUES = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70), st.integers(min_value=-3, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.sampled_from(WORDS), st.text(max_size=12),
    st.lists(st.integers(min_value=-5, max_value=100), max_size=4),
    st.dictionaries(st.sampled_from(["name", "size", "x", "lr"]), st.integers(), max_size=2))


def key_paths(data: dict, prefix: tuple = ()) -> list[tuple]:
    """Every key of a nested dict as a path, tables included."""
    paths = []
    for key, value in data.items():
        paths.append(prefix + (key,))
        if isinstance(value, dict):
            paths += key_paths(value, prefix + (key,))
    return paths


def parent(data: dict, path: tuple) -> dict:
    for key in path[:-1]:
        data = data[key]
    return data


@st.composite
def mutated_configs(draw) -> dict:
    """The quick-start config with 1-4 keys dropped, renamed, retyped, set out of range, or added."""
    data = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = key_paths(data)
        kind = draw(st.sampled_from(["drop", "rename", "set", "add", "replace_table"] if paths else ["add"]))
        if kind == "add":
            tables = [()] + [p for p in paths if isinstance(parent(data, p)[p[-1]], dict)]
            table = draw(st.sampled_from(tables))
            target = parent(data, table + ("_",))
            target[draw(st.sampled_from(["extra", "unknown_table", "lr", "name", "size"]))] = draw(VALUES)
            continue
        path = draw(st.sampled_from(paths))
        holder = parent(data, path)
        if kind == "drop":
            del holder[path[-1]]
        elif kind == "rename":
            holder[path[-1] + draw(st.sampled_from(["_", "s", "x"]))] = holder.pop(path[-1])
        elif kind == "set":
            holder[path[-1]] = draw(VALUES)
        else:
            holder[path[-1]] = draw(st.dictionaries(st.sampled_from(["name", "a"]), VALUES, max_size=2))
    return data


def assert_clean(result) -> None:
    """Exit 0, or exit 2 with an ``error:`` line; never a traceback or an unexpected exception."""
    assert result.exit_code in (0, 2), (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if result.exit_code == 2:
        assert "error: " in result.output


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_configs())
def test_mutated_config_files_validate_or_fail_cleanly(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mutated.toml"
        path.write_text(tomli_w.dumps(data), encoding="utf-8")
        assert_clean(runner.invoke(app, ["config", "validate", str(path)]))


@settings(max_examples=30, deadline=None)
@given(text=st.text(max_size=30), where=st.floats(min_value=0, max_value=1), raw=st.binary(max_size=8))
def test_damaged_config_text_fails_cleanly(text, where, raw):
    original = QUICKSTART.read_bytes()
    cut = int(where * len(original))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "damaged.toml"
        path.write_bytes(original[:cut] + text.encode() + raw + original[cut:])
        assert_clean(runner.invoke(app, ["config", "validate", str(path)]))


OVERRIDE_KEYS = [".".join(p) for p in key_paths(BASE)] + ["training.keep_checkpoints", "training.on_nonfinite",
                                                          "run.seed", "data", "model..x", "=", ""]


OVERRIDE_VALUES = st.one_of(st.text(max_size=12), st.sampled_from(WORDS + ["1", "-1", "1e400", "[1, 2]", "{a = 1}", "nan"]))


@settings(max_examples=40, deadline=None)
@given(overrides=st.lists(st.tuples(st.sampled_from(OVERRIDE_KEYS), OVERRIDE_VALUES), min_size=1, max_size=3))
def test_mutated_overrides_validate_or_fail_cleanly(overrides):
    args = ["config", "validate", str(QUICKSTART)]
    for key, value in overrides:
        args += ["--set", f"{key}={value}"]
    assert_clean(runner.invoke(app, args))


# A run only for small values: the point is that every valid config trains or fails cleanly, not to train big models.
RUN_VALUES = {
    "training.lr": st.one_of(st.floats(min_value=1e-6, max_value=1e3), st.just(float("inf"))),
    "training.batch_size": st.integers(min_value=1, max_value=10),      # 8 clips: 9 and 10 are too many
    "training.grad_accum": st.integers(min_value=1, max_value=2),
    "training.warmup_steps": st.integers(min_value=0, max_value=3),
    "training.grad_clip": st.floats(min_value=0, max_value=10),
    "training.schedule": st.sampled_from(["cosine", "constant", "linear"]),
    "training.on_nonfinite": st.sampled_from(["stop", "skip"]),
    "training.save_every": st.integers(min_value=0, max_value=2),
    "training.keep_checkpoints": st.integers(min_value=0, max_value=2),
    "run.log_every": st.integers(min_value=0, max_value=3),
    "run.device": st.sampled_from(["auto", "cpu", "cuda"]),
    "model.lambda_coarse": st.floats(min_value=-1, max_value=10),
    "model.head.film_hidden": st.integers(min_value=0, max_value=16),
    "precision.dtype": st.sampled_from(["float32", "bfloat16", "float16"]),
    "data.num_frames": st.integers(min_value=1, max_value=3),
    "data.frame_size": st.sampled_from([8, 16, 24, 32]),
    "data.num_workers": st.integers(min_value=0, max_value=2),
}


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz_runs")


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.fixed_dictionaries({}, optional={key: strategy for key, strategy in RUN_VALUES.items()}))
def test_mutated_configs_train_or_fail_cleanly(run_root, values):
    overrides = tiny_overrides(run_root, **{"training.max_steps": "1", "data.num_workers": "0",
                                            **{key: tomli_w.dumps({"v": v})[4:].strip() for key, v in values.items()}})
    result = runner.invoke(app, ["run", str(QUICKSTART), *[item for o in overrides for item in ("--set", o)]])
    assert_clean(result)
    if result.exit_code == 0:
        assert "step 1:" in result.output
