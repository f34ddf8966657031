"""The CLI through typer's CliRunner, and through a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fovea.cli import app
from tests.helpers import QUICKSTART, ROOT, tiny_overrides

runner = CliRunner()


def set_args(overrides):
    return [item for o in overrides for item in ("--set", o)]


def test_config_show_prints_resolved_toml_with_overrides():
    result = runner.invoke(app, ["config", "show", str(QUICKSTART), "--set", "training.batch_size=3"])
    assert result.exit_code == 0, result.output
    assert "[training]\nbatch_size = 3\n" in result.output
    assert 'name = "deep"' in result.output


def test_config_validate_ok():
    result = runner.invoke(app, ["config", "validate", str(QUICKSTART)])
    assert result.exit_code == 0 and "ok" in result.output


def test_plugins_table_and_json():
    table = runner.invoke(app, ["plugins"])
    assert table.exit_code == 0
    assert table.output.splitlines()[0].split()[:3] == ["KIND", "NAME", "SOURCE"]
    parts = json.loads(runner.invoke(app, ["plugins", "--json"]).output)
    assert {"deep", "posthoc", "film", "synthetic"} <= {p["name"] for p in parts}


def test_run_trains_and_reports(tmp_path):
    result = runner.invoke(app, ["run", str(QUICKSTART), *set_args(tiny_overrides(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "loss_fine" in result.output and (tmp_path / "runs" / "latest" / "summary.json").is_file()


@pytest.mark.parametrize("args, message", [
    (["config", "validate", "missing.toml"], "config file not found: missing.toml"),
    (["config", "show", str(QUICKSTART), "--set", "training.batchsize=2"], "did you mean 'batch_size'"),
    (["config", "validate", str(QUICKSTART), "--set", "model.head.name=nope"], "registered heads: film"),
    (["run", str(QUICKSTART), "--set", "training.batch_size=x"], "Input should be a valid integer"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_failed_run_writes_nothing_and_keeps_latest(tmp_path):
    good = runner.invoke(app, ["run", str(QUICKSTART), *set_args(tiny_overrides(tmp_path, **{"training.max_steps": "1"}))])
    assert good.exit_code == 0
    before = sorted(p.name for p in (tmp_path / "runs").iterdir())
    latest = (tmp_path / "runs" / "latest").resolve()
    bad = runner.invoke(app, ["run", str(QUICKSTART), *set_args(
        tiny_overrides(tmp_path, **{"training.batch_size": "64"}))])  # more than the 8 clips
    assert bad.exit_code == 2 and "larger than the 7 training clips" in bad.output
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == before
    assert (tmp_path / "runs" / "latest").resolve() == latest


def fovea_subprocess(*args, **env):
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", "fovea", *args], capture_output=True, text=True, env=environment,
                          timeout=300)


def test_real_subprocess_help_and_bad_input():
    help_ = fovea_subprocess("--help")
    assert help_.returncode == 0 and "run" in help_.stdout and "plugins" in help_.stdout
    bad = fovea_subprocess("config", "validate", str(QUICKSTART), "--set", "trainig.lr=1")
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"error: {QUICKSTART}: trainig: unknown key; did you mean 'training'?"


def test_real_subprocess_unreachable_hub_id_is_a_clear_error(tmp_path):
    result = fovea_subprocess("run", str(QUICKSTART), *set_args(tiny_overrides(tmp_path)),
                              "--set", "model.llm.pretrained=no-such-org/no-such-model", HF_HUB_OFFLINE="1")
    assert result.returncode == 2
    assert "cannot load the language model from 'no-such-org/no-such-model'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()     # nothing written for a run that could not start
