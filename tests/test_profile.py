"""``fovea profile``: the files it writes, figures that add up, and a diagnosis that tells data-bound apart."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

import fovea
from fovea.audit.profile import PHASES, profile
from fovea.cli import app
from fovea.core.cache import ClipCache
from fovea.core.rundir import RunDir
from tests.helpers import QUICKSTART, tiny_overrides

runner = CliRunner()


def profiled(tmp_path, steps=4, **extra):
    config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **extra))
    run = RunDir.create(config)
    return profile(config, run, steps=steps, warmup=1), run, config


def test_profile_files_and_figures_add_up(tmp_path):
    report, run, config = profiled(tmp_path)
    on_disk = json.loads((run.path / "profile.json").read_text())
    assert on_disk["steps"] == 4 and len(on_disk["per_step"]) == 4
    for row in on_disk["per_step"]:
        parts = sum(row[p] for p in PHASES)
        assert 0.85 * row["step_s"] <= parts <= row["step_s"] * 1.001     # the phases cover the step
        assert all(row[p] >= 0 for p in PHASES)
    assert 0 <= on_disk["unaccounted_share"] < 0.15
    assert on_disk["data_wait_share"] == on_disk["phase_share"]["data_wait"]
    median = on_disk["step_s"]["median"]
    assert on_disk["samples_per_s"] == pytest.approx(config.effective_batch_size / median)
    assert on_disk["frames_per_s"] == pytest.approx(on_disk["samples_per_s"] * config.data.num_frames)
    assert on_disk["step_s"]["median"] <= on_disk["step_s"]["p90"]
    assert on_disk["flops"]["per_step"] > 0 and on_disk["flops"]["mfu"] is None   # no GPU peak on CPU

    # no GPU here: the GPU lines say so instead of inventing figures
    assert on_disk["gpu_util_mean"] is None and on_disk["peak_memory_gb"] is None
    assert on_disk["resources"]["gpu"] is None and len(on_disk["resources"]["cpu_percent_per_core"]) >= 1
    markdown = (run.path / "profile.md").read_text()
    assert "- GPU: no GPU" in markdown and "| **step** |" in markdown
    assert any(f["kind"] == "gpu" and "no GPU" in f["message"] for f in on_disk["diagnosis"])


def test_memory_model_matches_the_measured_activations(tmp_path):
    report, _, _ = profiled(tmp_path, steps=1)
    estimated, measured = report["memory"]["model"]["activations_gb"], report["memory"]["activations_saved_gb"]
    assert measured > 0 and 1 / 1.5 < estimated / measured < 1.5
    model = report["memory"]["model"]
    assert model["total_gb"] == pytest.approx(model["parameters_gb"] + model["gradients_gb"] + model["optimizer_gb"]
                                              + model["activations_gb"])


def test_a_slow_loader_is_diagnosed_as_data_bound_and_a_fast_one_is_not(tmp_path, monkeypatch):
    fast, _, _ = profiled(tmp_path / "fast")
    assert fast["data_wait_share"] < 0.2
    assert "data-bound" not in {f["kind"] for f in fast["diagnosis"]}

    # each read takes three times the fast run's whole step: whatever the machine's load, data-bound
    delay = 3 * fast["step_s"]["median"]
    read = ClipCache.read
    monkeypatch.setattr(ClipCache, "read", lambda self, indices: (time.sleep(delay), read(self, indices))[1])
    slow, _, _ = profiled(tmp_path / "slow", **{"data.num_workers": "0", "data.prefetch": "1"})
    assert slow["data_wait_share"] > 0.2
    finding = next(f for f in slow["diagnosis"] if f["kind"] == "data-bound")
    assert "data.num_workers (now 0)" in finding["message"]


def test_cli_profiles_runs_latest_or_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = runner.invoke(app, ["profile", "--steps", "2"])
    assert missing.exit_code == 2 and "no CONFIG given and no runs/latest" in missing.output

    overrides = [item for o in tiny_overrides(tmp_path) if not o.startswith("run.output_dir")
                 for item in ("--set", o)]
    trained = runner.invoke(app, ["run", str(QUICKSTART), *overrides])   # into ./runs, as users do
    assert trained.exit_code == 0, trained.output
    result = runner.invoke(app, ["profile", "--steps", "2", "--warmup", "0"])
    assert result.exit_code == 0, result.output
    latest = (tmp_path / "runs" / "latest").resolve()
    assert (latest / "profile.json").is_file() and (latest / "profile.md").is_file()
    assert "samples/s" in result.output
