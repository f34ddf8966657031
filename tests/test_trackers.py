"""Experiment trackers (``[run] trackers``) against the real libraries, offline: W&B in offline mode, MLflow on a
local SQLite store, TensorBoard's event files. A run killed with SIGKILL and resumed shows in each tracker as one
run with every step once; failures at start are one ``error:`` line, failures mid-run one warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

import fovea
from fovea.cli import app
from fovea.core.plugins import register_plugin, unregister_plugin
from fovea.core.rundir import RunDir
from fovea.core.train import train
from tests.helpers import QUICKSTART, ROOT, tiny_overrides
from tests.test_resume import set_args, wait_for_step

runner = CliRunner()
N = 3                                                     # 2N steps, a checkpoint at N, killed after step N + 2


def tracked(tmp_path: Path, *names: str, **extra) -> list[str]:
    return tiny_overrides(tmp_path, **{"run.trackers": json.dumps(list(names)), "run.log_every": "1",
                                       "training.max_steps": str(2 * N), "training.save_every": str(N),
                                       "trackers.mlflow.tracking_uri": f'"sqlite:///{tmp_path / "mlflow.db"}"',
                                       **extra})


def offline_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path),
            "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache")}


def wandb_rows(run: RunDir) -> list[dict]:
    """Every history row W&B holds for the run: its offline segments in order, as ``wandb sync`` uploads them."""
    from fovea.plugins.trackers.wandb import history, segments

    run_id = run.read_trackers()["wandb"]["id"]
    return [row for segment in segments(run.tracker_dir("wandb"), run_id) for row in history(segment)]


def mlflow_history(run: RunDir, key: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    record = run.read_trackers()["mlflow"]
    client = MlflowClient(record["tracking_uri"])
    return sorted((m.step, m.value) for m in client.get_metric_history(record["run_id"], key))


def test_a_run_killed_and_resumed_is_one_tracker_run_with_every_step_once(tmp_path):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    env = offline_env(tmp_path)
    args = set_args(tracked(tmp_path, "wandb", "mlflow", "tensorboard"))
    process = subprocess.Popen([sys.executable, "-m", "fovea", "run", str(QUICKSTART), *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        run = wait_for_step(tmp_path / "runs", N + 2, process)   # two steps past the checkpoint: logged twice
        process.kill()
        process.wait(timeout=60)
    finally:
        process.kill()
    first = run.read_trackers()
    assert [m["step"] for m in run.read_metrics()][:N + 2] == list(range(1, N + 3))

    resumed = subprocess.run([sys.executable, "-m", "fovea", "run", "--resume", str(run.path)], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert run.read_trackers()["wandb"]["id"] == first["wandb"]["id"]
    assert run.read_trackers()["mlflow"]["run_id"] == first["mlflow"]["run_id"]
    metrics = {m["step"]: m for m in run.read_metrics()}
    val = run.read_metrics("val")
    assert sorted(metrics) == list(range(1, 2 * N + 1)) and [v["step"] for v in val] == [2 * N]

    # W&B: the segments of one run id hold every step once, with metrics.jsonl's values (bit-exact on CPU)
    rows = [r for r in wandb_rows(run) if "train/loss" in r]
    assert [r["_step"] for r in rows] == list(range(1, 2 * N + 1))
    assert all(r["train/loss"] == metrics[r["_step"]]["loss"] for r in rows)
    assert [r["_step"] for r in wandb_rows(run) if "val/loss_fine" in r] == [2 * N]

    # MLflow: one run in the experiment, every step once
    client = MlflowClient(first["mlflow"]["tracking_uri"])
    assert len(client.search_runs([first["mlflow"]["experiment_id"]])) == 1
    assert mlflow_history(run, "train/loss") == [(step, metrics[step]["loss"]) for step in range(1, 2 * N + 1)]
    assert mlflow_history(run, "val/loss_fine") == [(2 * N, val[0]["loss_fine"])]
    assert client.get_run(first["mlflow"]["run_id"]).info.status == "FINISHED"

    # TensorBoard: the resumed writer purges what came after the checkpoint
    events = EventAccumulator(str(run.path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == pytest.approx(
        [(step, metrics[step]["loss"]) for step in range(1, 2 * N + 1)])

    # fovea viz and fovea audit add to the same tracker runs
    viz = runner.invoke(app, ["viz", str(run.path), "--clips", "1"], env=env)
    assert viz.exit_code == 0, viz.output
    audit = runner.invoke(app, ["audit", str(run.path)], env=env)
    assert audit.exit_code == 0, audit.output
    counts = json.loads((run.path / "audit.json").read_text())["counts"]
    assert mlflow_history(run, "audit/counts.warn") == [(2 * N, counts["warn"])]
    artifacts = {a.path for a in client.list_artifacts(first["mlflow"]["run_id"], "viz")}
    assert {"viz/losses.png", "viz/attention_clip0.png"} <= artifacts
    assert any("viz/losses" in r for r in wandb_rows(run))
    events.Reload()
    assert "viz/losses" in events.Tags()["images"]
    assert len(client.search_runs([first["mlflow"]["experiment_id"]])) == 1


@pytest.mark.parametrize("name", ["wandb", "mlflow", "tensorboard"])
def test_a_missing_tracker_package_is_one_error_line_before_anything_is_written(tmp_path, monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)          # import NAME raises ImportError
    result = runner.invoke(app, ["run", str(QUICKSTART), *set_args(tracked(tmp_path, name))])
    assert result.exit_code == 2
    assert f"error: the {name} tracker needs the {name} package: pip install 'fovea[{name}]'" in result.output
    assert not (tmp_path / "runs").exists()


def test_a_tracker_that_cannot_start_stops_the_run_before_training_and_leaves_nothing(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    unreachable = {"trackers.mlflow.tracking_uri": '"http://127.0.0.1:9"'}   # nothing listens on port 9
    result = runner.invoke(app, ["run", str(QUICKSTART), *set_args(tracked(tmp_path, "mlflow", **unreachable))])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: tracker 'mlflow' could not start")
    assert not any((tmp_path / "runs").iterdir()) if (tmp_path / "runs").exists() else True
    assert not (tmp_path / "runs" / "latest").exists()


class Flaky:
    """A throwaway tracker that fails at its third row."""

    class Config(BaseModel):
        pass

    rows: list[int] = []

    def __init__(self, config):
        pass

    @classmethod
    def require(cls, config):
        pass

    def start(self, session):
        return {"id": "flaky"}

    def log_metrics(self, row):
        Flaky.rows.append(row["step"])
        if len(Flaky.rows) == 3:
            raise ConnectionError("the service went away")

    def log_summary(self, values, step):
        raise AssertionError("a tracker that failed is not called again")

    def log_images(self, images, step):
        pass

    def finish(self, status):
        raise AssertionError("a tracker that failed is not called again")


class FlakyPlugin:
    @fovea.hookimpl
    def fovea_register_trackers(self, register):
        register("flaky", Flaky)


def test_a_tracker_failing_mid_run_is_one_warning_and_training_goes_on(tmp_path):
    plugin = FlakyPlugin()
    register_plugin(plugin, name="flaky-tracker")
    Flaky.rows.clear()
    try:
        result = runner.invoke(app, ["run", str(QUICKSTART), *set_args(tracked(tmp_path, "flaky"))])
    finally:
        unregister_plugin(plugin)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: tracker")]
    assert warnings == ["warning: tracker 'flaky' failed (logging step 3: ConnectionError: the service went away); "
                        "it is off for the rest of this run, which goes on (metrics.jsonl stays complete)"]
    assert Flaky.rows == [1, 2, 3]
    run = RunDir.open(tmp_path / "runs" / "latest")
    assert [m["step"] for m in run.read_metrics()] == list(range(1, 2 * N + 1)) and run.summary_file.is_file()


def test_the_tracker_contract_is_checked_when_a_tracker_registers():
    class Incomplete:
        class Config(BaseModel):
            pass

        def start(self, session):
            return {}

    class Plugin:
        @fovea.hookimpl
        def fovea_register_trackers(self, register):
            register("incomplete", Incomplete)

    plugin = Plugin()
    register_plugin(plugin, name="incomplete-tracker")
    try:
        with pytest.raises(fovea.FoveaError, match="lacks finish, log_images, log_metrics, log_summary, require"):
            fovea.load_config(QUICKSTART, ['run.trackers=["incomplete"]'])
    finally:
        unregister_plugin(plugin)


def test_tensorboard_true_is_an_alias_of_the_tensorboard_tracker():
    config = fovea.load_config(QUICKSTART, ["run.tensorboard=true", 'run.trackers=["mlflow"]'])
    assert config.run.active_trackers == ["mlflow", "tensorboard"]
    assert fovea.load_config(QUICKSTART, ["run.tensorboard=true", 'run.trackers=["tensorboard"]']
                             ).run.active_trackers == ["tensorboard"]


def test_wandb_rewind_resumes_from_the_step_after_the_checkpoint(tmp_path, monkeypatch):
    """``[trackers.wandb] rewind = true``: the resumed W&B run is W&B's rewind of the same run to the checkpoint
    (offline, the rewind point is recorded in the segment and applied when ``wandb sync`` uploads it)."""
    pytest.importorskip("wandb")
    from wandb.proto import wandb_internal_pb2

    from fovea.plugins.trackers.wandb import records, segments

    for key, value in offline_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    short = {"training.max_steps": str(N), "trackers.wandb.rewind": "true"}
    run = train(fovea.load_config(QUICKSTART, tracked(tmp_path, "wandb", **short)))
    extended = runner.invoke(app, ["run", "--resume", str(run.path), "--set", f"training.max_steps={2 * N}"])
    assert extended.exit_code == 0, extended.output
    run_id = run.read_trackers()["wandb"]["id"]
    first, second = segments(run.tracker_dir("wandb"), run_id)
    points = []
    for payload in records(second):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "run":
            points.append((record.run.branch_point.run, record.run.branch_point.value, record.run.branch_point.metric))
    assert points == [(run_id, N, "_step")]          # W&B keeps steps <= N and continues after them
    assert [r["_step"] for r in wandb_rows(run) if "train/loss" in r] == list(range(1, 2 * N + 1))
