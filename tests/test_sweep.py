"""``fovea sweep``: the grid typed by the schema, one ``error:`` line for a bad key or value, and a sweep
started again that keeps its finished runs untouched and resumes the interrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from fovea.cli import app
from fovea.core.errors import ConfigError
from fovea.sweep import SweepDir, parse_grid, plan_sweep, run_sweep, start_sweep, unique_name
from tests.helpers import QUICKSTART, ROOT, tiny_overrides

runner = CliRunner()


def sweep_sets(tmp_path, **extra) -> list[str]:
    """The tiny test run's overrides, but run.output_dir (a sweep puts its runs in its own directory)."""
    return [item for item in tiny_overrides(tmp_path, **{"data.frame_size": "32", "eval.val_clips": "2", **extra})
            if not item.startswith("run.output_dir=")]


def set_args(overrides):
    return [item for o in overrides for item in ("--set", o)]


def test_grid_values_are_typed_by_the_schema(tmp_path):
    plan = plan_sweep(QUICKSTART, ["training.max_steps=5,10", "model.encoder.name=deep,posthoc"], seeds=2,
                      sets=sweep_sets(tmp_path))
    assert plan.grid == {"training.max_steps": [5, 10], "model.encoder.name": ["deep", "posthoc"]}
    assert all(type(value) is int for value in plan.grid["training.max_steps"])
    assert len(plan.runs) == 8                                   # 2 x 2 grid points x 2 seeds
    first = plan.runs[0]
    assert first.grid == {"training.max_steps": 5, "model.encoder.name": "deep"} and first.seed == 0
    assert first.name == "quickstart-training.max_steps_5-model.encoder.name_deep-seed0"
    assert [run.seed for run in plan.runs[:2]] == [0, 1]
    assert len({run.name for run in plan.runs}) == 8
    assert first.overrides[-4:] == ["training.max_steps=5", "model.encoder.name=deep", "run.seed=0",
                                    f'run.name="{first.name}"']
    # the identity depends on what is swept, not on how the command spelled it
    again = plan_sweep(QUICKSTART, ["training.max_steps=5.0,10", "model.encoder.name=deep,posthoc"], seeds=2,
                       sets=sweep_sets(tmp_path))
    assert again.identity == plan.identity
    other = plan_sweep(QUICKSTART, ["training.max_steps=5,11", "model.encoder.name=deep,posthoc"], seeds=2,
                       sets=sweep_sets(tmp_path))
    assert other.identity != plan.identity


def test_grid_syntax():
    assert parse_grid(["training.lr=1e-3, 2e-3", "a.b=x"]) == [("training.lr", ["1e-3", "2e-3"]), ("a.b", ["x"])]
    for bad, message in [("training.lr", "expected KEY=V1,V2"), ("training.lr=1,,2", "an empty value"),
                         ("training.lr=1,1", "appears twice"), ("run.output_dir=a,b", "cannot be swept")]:
        with pytest.raises(ConfigError, match=message):
            parse_grid([bad])


def test_run_names_are_valid_and_unique():
    taken: set[str] = set()
    assert unique_name("q-model.vae.init_pooling", taken) == "q-model.vae.init_pooling"
    assert unique_name("q-model.vae.init_pooling", taken) == "q-model.vae.init_pooling-2"
    assert unique_name("q-model.head.channels_[16, 32]", taken) == "q-model.head.channels_16_32"
    long = unique_name("q-" + "x" * 200, taken)
    assert len(long) == 100 and long.startswith("q-xxx")


@pytest.mark.parametrize("grid, message", [
    ("training.max_stepz=5,10", "--grid training.max_stepz=5,10: "),   # ... unknown key; did you mean 'max_steps'?
    ("training.max_steps=5,abc", "valid integer"),
    ("model.encoder.name=deep,nope", "registered encoders"),
])
def test_bad_grid_key_or_value_is_one_error_line(tmp_path, grid, message):
    result = runner.invoke(app, ["sweep", str(QUICKSTART), "--grid", grid, "--sweeps-dir", str(tmp_path / "sweeps"),
                                 *set_args(sweep_sets(tmp_path))])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "sweeps").exists()                  # nothing started


@pytest.mark.parametrize("args, message", [
    (["--seeds", "2", "--grid", "run.seed=1,2"], "give the seeds one way"),
    (["--seeds", "2", "--set", "run.output_dir=x"], "--sweeps-dir"),
    ([], "nothing to sweep"),
])
def test_contradictory_sweep_arguments(tmp_path, args, message):
    result = runner.invoke(app, ["sweep", str(QUICKSTART), *args, "--sweeps-dir", str(tmp_path / "sweeps")])
    assert result.exit_code == 2 and message in result.stderr, result.output


def file_times(path):
    return {p.relative_to(path): p.stat().st_mtime_ns for p in sorted(path.rglob("*"))}


def test_sweep_started_again_skips_finished_runs_and_resumes_interrupted_ones(tmp_path, monkeypatch):
    """Two runs: one finished and evaluated, one stopped after its checkpoint at step 2 of 4. The sweep started
    again leaves the first untouched (every file, by mtime), resumes the second to step 4 and evaluates it."""
    import fovea
    from fovea.core.evaluation import evaluate_run
    from fovea.core.train import train

    monkeypatch.setenv("PYTHONPATH", str(ROOT))                  # the runs it starts import this checkout
    plan = plan_sweep(QUICKSTART, ["training.lr=1e-3,2e-3"], sets=sweep_sets(tmp_path, **{"training.save_every": "2"}))
    sweep = start_sweep(plan, tmp_path / "sweeps", echo=lambda line: None)
    output_dir = f"run.output_dir={json.dumps(str(sweep.runs_dir))}"
    done = train(fovea.load_config(sweep.config_file, plan.runs[0].overrides + [output_dir]))
    evaluate_run(done.path, progress=False)
    stopped = train(fovea.load_config(sweep.config_file, plan.runs[1].overrides + [output_dir, "training.max_steps=2"]))
    stopped.summary_file.unlink()                                # as if stopped after its checkpoint at step 2
    before = file_times(done.path)

    lines: list[str] = []
    record = run_sweep(sweep, jobs=2, echo=lines.append)
    assert record["status"] == "finished", lines
    assert [(e["status"], e["eval"]) for e in record["runs"]] == [("finished", "done"), ("finished", "done")]
    assert [e["dir"] for e in record["runs"]] == [f"runs/{done.path.name}", f"runs/{stopped.path.name}"]
    assert file_times(done.path) == before                       # not trained, not evaluated again
    assert not any(plan.runs[0].name in line for line in lines)
    assert any(f"{plan.runs[1].name}: resuming" in line for line in lines)
    assert [m["step"] for m in stopped.read_metrics()] == [2, 4]  # continued in its directory, each step once
    assert stopped.read_summary()["steps"] == 4 and stopped.read_eval()["step"] == 4
    assert (sweep.logs_dir / f"{plan.runs[1].name}.log").is_file()   # --jobs 2: output in logs/
    assert (tmp_path / "sweeps" / "latest").resolve() == sweep.path.resolve()
    assert json.loads(sweep.sweep_file.read_text())["runs"][1]["exit_code"] == 0

    # the same command once more: found by its identity, nothing to do
    again = start_sweep(plan_sweep(QUICKSTART, ["training.lr=1e-3,2e-3"],
                                   sets=sweep_sets(tmp_path, **{"training.save_every": "2"})),
                        tmp_path / "sweeps", echo=lines.append)
    assert again.path == sweep.path
    lines.clear()
    assert run_sweep(again, echo=lines.append)["status"] == "finished" and lines == []


@pytest.mark.slow
def test_sweep_stopped_by_sigint_and_sigkill_finishes_without_redoing_runs(tmp_path):
    """A real `fovea sweep` of 2 runs: SIGINT (exit 130, checkpoints saved), started again and SIGKILLed (its run
    gets SIGTERM and saves), started again: it finishes, each run trained in one directory, each step once."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "fovea", "sweep", str(QUICKSTART), "--grid", "model.encoder.name=deep,posthoc",
            "--sweeps-dir", str(tmp_path / "sweeps"),
            *set_args(sweep_sets(tmp_path, **{"training.max_steps": "400", "training.save_every": "20",
                                              "run.log_every": "20"}))]

    def start_and_kill(sig):
        process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:    # until the first run saved a checkpoint
            if list((tmp_path / "sweeps").glob("*/runs/*/checkpoints/step-*/checkpoint.json")):
                break
            time.sleep(0.5)
        time.sleep(1.0)
        process.send_signal(sig)
        return process.communicate(timeout=240)[0], process.returncode

    output, code = start_and_kill(signal.SIGINT)
    assert code == 130, output
    sweep = SweepDir.open(tmp_path / "sweeps" / "latest")
    assert sweep.read()["status"] == "interrupted"
    first = sweep.runs()[0][1]
    output, code = start_and_kill(signal.SIGKILL)
    assert code == -signal.SIGKILL
    finished = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    record = sweep.read()
    assert [(e["status"], e["eval"]) for e in record["runs"]] == [("finished", "done")] * 2
    assert sweep.runs()[0][1].path == first.path                 # resumed, never started again
    assert len([p for p in sweep.runs_dir.iterdir() if not p.is_symlink()]) == 2
    steps = [m["step"] for m in first.read_metrics()]
    assert steps == sorted(set(steps)) and steps[-1] == 400
