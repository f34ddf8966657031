"""Runs that survive: exact resume after SIGKILL, crash-safe checkpoints, signals, bad run directories."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import fovea
from fovea.cli import app
from fovea.core import checkpoint as checkpoint_module
from fovea.core import train as train_module
from fovea.core.checkpoint import read_checkpoint
from fovea.core.rundir import RunDir
from fovea.core.train import train
from tests.helpers import QUICKSTART, ROOT, tiny_overrides

runner = CliRunner()
N = 3                                                     # a run of 2N steps is killed after its checkpoint at N
RESUMABLE = {"run.log_every": "1", "training.max_steps": str(2 * N), "training.save_every": str(N)}
COMPARED = ("step", "loss", "loss_fine", "loss_coarse", "grad_norm", "lr")


def set_args(overrides):
    return [item for o in overrides for item in ("--set", o)]


def per_step(run: RunDir) -> list[dict]:
    return [{key: m[key] for key in COMPARED} for m in run.read_metrics()]


def start_fovea(*args, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fovea", *args], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=stderr, cwd=ROOT)


def wait_for_step(runs: Path, step: int, process: subprocess.Popen, timeout: float = 240) -> RunDir:
    """Poll until the run under ``runs`` has logged ``step`` (the process must still be running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the run exited ({process.returncode}) before step {step}"
        if (runs / "latest").exists():
            run = RunDir.open(runs / "latest")
            if any(m["step"] >= step for m in run.read_metrics()):
                return run
        time.sleep(0.005)
    raise AssertionError(f"no step {step} after {timeout} s")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Per-step metrics of an uninterrupted run of 2N steps."""
    run = train(fovea.load_config(QUICKSTART, tiny_overrides(tmp_path_factory.mktemp("reference"), **RESUMABLE)))
    assert [m["step"] for m in per_step(run)] == list(range(1, 2 * N + 1))
    return per_step(run)


def test_run_killed_with_sigkill_resumes_with_bit_identical_losses(tmp_path, reference):
    process = start_fovea("run", str(QUICKSTART), *set_args(tiny_overrides(tmp_path, **RESUMABLE)))
    try:
        run = wait_for_step(tmp_path / "runs", N + 1, process)   # past the checkpoint: step N+1 must be redone
        process.kill()
        process.wait(timeout=60)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL
    assert not run.summary_file.exists() and [p.name for p in run.checkpoints()] == [f"step-{N:06d}"]

    resumed = subprocess.run([sys.executable, "-m", "fovea", "run", "--resume", str(run.path)], capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert per_step(run) == reference                       # every step once, the same numbers to the last bit
    assert json.loads(run.summary_file.read_text())["status"] == "completed"
    assert [p.name for p in run.checkpoints()] == [f"step-{N:06d}", f"step-{2 * N:06d}"]


def test_sigint_finishes_the_step_saves_and_exits_130(tmp_path, reference, monkeypatch):
    original, calls = train_module.train_step, []

    def interrupted_at_step_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)      # arrives in the middle of step 2
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", interrupted_at_step_2)
    handler = signal.getsignal(signal.SIGINT)
    result = runner.invoke(app, ["run", str(QUICKSTART), *set_args(tiny_overrides(tmp_path, **RESUMABLE))])
    assert result.exit_code == 130, result.output
    assert "stopped by SIGINT after step 2" in result.output and "fovea run --resume" in result.output
    run = RunDir.open(tmp_path / "runs" / "latest")
    assert [p.name for p in run.checkpoints()] == ["step-000002"] and not run.summary_file.exists()
    assert signal.getsignal(signal.SIGINT) is handler    # the previous handler is back

    monkeypatch.setattr(train_module, "train_step", original)
    resumed = runner.invoke(app, ["run", "--resume", "latest", "--set", f'run.output_dir="{tmp_path / "runs"}"'])
    assert resumed.exit_code == 0, resumed.output
    assert per_step(run) == reference


@pytest.mark.slow
def test_sigterm_from_outside_saves_a_checkpoint_and_exits_143(tmp_path, reference):
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err:
        process = start_fovea("run", str(QUICKSTART), *set_args(tiny_overrides(tmp_path, **RESUMABLE)), stderr=err)
        try:
            run = wait_for_step(tmp_path / "runs", 1, process)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=120) == 143
        finally:
            process.kill()
    step = run.read_metrics()[-1]["step"]
    assert step < 2 * N and f"stopped by SIGTERM after step {step}" in stderr.read_text()
    assert run.checkpoints()[-1].name == f"step-{step:06d}"
    resumed = runner.invoke(app, ["run", "--resume", str(run.path)])
    assert resumed.exit_code == 0, resumed.output
    assert per_step(run) == reference


def test_sigkill_while_writing_checkpoints_never_leaves_a_run_that_cannot_resume(tmp_path):
    """25 writers of checkpoints (the real save_checkpoint) killed at random moments; the run always resumes."""
    from safetensors.torch import load_file

    run = train(fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{"training.max_steps": "2",
                                                                          "training.save_every": "1"})))
    weights = load_file(run.checkpoint_file)
    writer = subprocess.Popen([sys.executable, "-m", "tests.checkpoint_writer", str(run.path)], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    delays, newest_steps, partial_seen = random.Random(0), [], 0
    try:
        assert writer.stdout.readline().strip() == "ready"
        for _ in range(25):
            newest = read_checkpoint(run.latest_checkpoint).step
            writer.stdin.write(f"{newest + 1}\n")
            writer.stdin.flush()
            child = int(writer.stdout.readline())
            time.sleep(delays.uniform(0.0, 0.3))
            os.kill(child, signal.SIGKILL)
            assert writer.stdout.readline().strip() == "reaped"

            partial_seen += bool(list(run.checkpoints_dir.glob(".tmp-*")))
            for path in run.checkpoints():                 # every step-N directory is whole
                assert path.name == f"step-{read_checkpoint(path).step:06d}"
            loaded = load_file(run.checkpoint_file)
            assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights)
            newest_steps.append(read_checkpoint(run.latest_checkpoint).step)
    finally:
        writer.kill()
        writer.wait()
    assert partial_seen > 0                 # some kills did land in the middle of a checkpoint
    assert newest_steps[-1] > 5             # and checkpoints were completed between the kills

    newest = newest_steps[-1]
    resumed = train(fovea.load_config(run.config_file, [f"training.max_steps={newest + 2}"]), resume=run)
    assert resumed.checkpoints()[-1].name == f"step-{newest + 2:06d}" and len(resumed.checkpoints()) == 3
    assert not list(run.checkpoints_dir.glob(".*"))       # the dead writers' leftovers are cleaned up
    assert resumed.read_metrics()[-1]["step"] == newest + 2


# --------------------------------------------------------------------------- bad run directories


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny run of 4 steps with checkpoints at 2 and 4, trained once; tests resume copies of it."""
    overrides = tiny_overrides(tmp_path_factory.mktemp("finished"),
                               **{"run.log_every": "1", "training.save_every": "2"})
    return train(fovea.load_config(QUICKSTART, overrides))


@pytest.fixture
def run_copy(finished_run, tmp_path):
    target = tmp_path / "runs" / finished_run.path.name
    shutil.copytree(finished_run.path, target)
    return RunDir(target)


def newest(run: RunDir, name: str) -> Path:
    return run.checkpoints()[-1] / name


def garble(path: Path) -> None:
    """Same size, different bytes: only the checksum can tell."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "missing directory": (lambda run: shutil.rmtree(run.path), "no run directory at"),
    "no config.toml": (lambda run: run.config_file.unlink(), "is not a fovea run directory (no config.toml"),
    "corrupt config.toml": (lambda run: run.config_file.write_text("[training\nbatch_size ="), "invalid TOML"),
    "corrupt metrics.jsonl": (lambda run: run.metrics_file.write_text('{"step": 1}\nnot json\n{"step": 3}\n'),
                              "metrics.jsonl, line 2: not a metrics record"),
    "missing metrics.jsonl": (lambda run: run.metrics_file.unlink(), "metrics.jsonl is missing, but the run logged"),
    "duplicate metrics step": (lambda run: run.metrics_file.write_text('{"step": 1}\n{"step": 1}\n'),
                               "metrics.jsonl, line 2"),
    "no checkpoint": (lambda run: shutil.rmtree(run.checkpoints_dir), "holds no complete checkpoint"),
    "truncated weights": (lambda run: newest(run, "model.safetensors").write_bytes(b"\0" * 10),
                          "is corrupt: model.safetensors is 10 bytes"),
    "garbled weights": (lambda run: garble(newest(run, "model.safetensors")),
                        "is corrupt: model.safetensors does not match the SHA-256"),
    "garbled training state": (lambda run: garble(newest(run, "training_state.pt")),
                               "is corrupt: training_state.pt does not match"),
    "missing loader state": (lambda run: newest(run, "loader_state.json").unlink(),
                             "is corrupt: loader_state.json is missing"),
    "corrupt checkpoint.json": (lambda run: newest(run, "checkpoint.json").write_text("{"),
                                "is corrupt: checkpoint.json is unreadable"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_run_directory_is_one_clear_error(run_copy, case):
    damage, message = DAMAGE[case]
    damage(run_copy)
    result = runner.invoke(app, ["run", "--resume", str(run_copy.path), "--set", "training.max_steps=6"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output
    assert "Traceback" not in result.output and result.output.count("\n") == 1


def test_damaged_newest_checkpoint_names_the_one_before(run_copy):
    garble(newest(run_copy, "model.safetensors"))
    result = runner.invoke(app, ["run", "--resume", str(run_copy.path)])
    assert f"delete {run_copy.checkpoints()[-1]} to resume from the checkpoint before it (step-000002)" in result.output
    shutil.rmtree(run_copy.checkpoints()[-1])
    assert runner.invoke(app, ["run", "--resume", str(run_copy.path)]).exit_code == 0
    assert [m["step"] for m in run_copy.read_metrics()] == [1, 2, 3, 4]


def test_changed_batch_settings_are_refused_unless_forced(run_copy):
    before = run_copy.metrics_file.read_bytes()
    for key, value in [("training.batch_size", "4"), ("training.grad_accum", "2")]:
        refused = runner.invoke(app, ["run", "--resume", str(run_copy.path), "--set", f"{key}={value}",
                                      "--set", "training.max_steps=6"])
        assert refused.exit_code == 2
        assert f"{key} {2 if key.endswith('size') else 1} -> {value} changed since the run started" in refused.output
        assert "--force" in refused.output
    assert run_copy.metrics_file.read_bytes() == before and run_copy.summary_file.is_file()   # untouched

    forced = runner.invoke(app, ["run", "--resume", str(run_copy.path), "--set", "training.batch_size=4",
                                 "--set", "training.max_steps=6", "--force"])
    assert forced.exit_code == 0, forced.output
    assert "warning: resuming with training.batch_size 2 -> 4 (--force)" in forced.output
    assert [m["step"] for m in run_copy.read_metrics()] == [1, 2, 3, 4, 5, 6]
    assert "batch_size = 4" in run_copy.config_file.read_text()


def test_resume_extends_a_finished_run_and_a_config_that_does_not_fit_is_refused(run_copy):
    wrong = runner.invoke(app, ["run", "--resume", str(run_copy.path), "--set", "model.head.film_hidden=32"])
    assert wrong.exit_code == 2 and "does not fit the model the config builds" in wrong.output

    again = runner.invoke(app, ["run", "--resume", str(run_copy.path)])          # already finished: nothing to do
    assert again.exit_code == 0 and [m["step"] for m in run_copy.read_metrics()] == [1, 2, 3, 4]
    longer = runner.invoke(app, ["run", "--resume", str(run_copy.path), "--set", "training.max_steps=6"])
    assert longer.exit_code == 0, longer.output
    assert [m["step"] for m in run_copy.read_metrics()] == [1, 2, 3, 4, 5, 6]
    assert json.loads(run_copy.summary_file.read_text())["steps"] == 6
    assert [p.name for p in run_copy.checkpoints()] == ["step-000002", "step-000004", "step-000006"]


def test_resume_with_a_config_file_takes_its_settings(run_copy, tmp_path):
    given = tmp_path / "given.toml"
    text = run_copy.config_file.read_text()
    assert "max_steps = 4\n" in text
    given.write_text(text.replace("max_steps = 4\n", "max_steps = 5\n"))
    result = runner.invoke(app, ["run", str(given), "--resume", str(run_copy.path)])
    assert result.exit_code == 0, result.output
    assert [m["step"] for m in run_copy.read_metrics()] == [1, 2, 3, 4, 5]
    assert "max_steps = 5\n" in run_copy.config_file.read_text()    # the run's config is the one it continued with


def test_a_run_is_trained_by_one_process_at_a_time(run_copy):
    with run_copy.lock():
        result = runner.invoke(app, ["run", "--resume", str(run_copy.path), "--set", "training.max_steps=6"])
    assert result.exit_code == 2 and "is being trained by another process" in result.output


@pytest.mark.parametrize("args, message", [
    (["run"], "give a CONFIG to start a run, or --resume RUN_DIR|latest"),
    (["run", str(QUICKSTART), "--force"], "--force only applies with --resume"),
    (["run", "--resume", "latest", "--set", 'run.output_dir="/nonexistent/runs"'], "/nonexistent/runs/latest does not exist"),
])
def test_run_command_mistakes(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.output


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    original = checkpoint_module.write_synced

    def fills_up_at_step_4(path, write):
        if path.name == "training_state.pt" and "step-000004" in path.parent.name:
            buffer = io.BytesIO()
            write(buffer)
            path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])   # half of it fits
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        original(path, write)

    monkeypatch.setattr(checkpoint_module, "write_synced", fills_up_at_step_4)
    overrides = tiny_overrides(tmp_path, **{"run.log_every": "1", "training.save_every": "2"})
    result = runner.invoke(app, ["run", str(QUICKSTART), *set_args(overrides)])
    assert result.exit_code == 2
    assert "could not write the checkpoint of step 4" in result.output and "No space left on device" in result.output
    run = RunDir.open(tmp_path / "runs" / "latest")
    assert f"the previous checkpoint {run.checkpoints_dir / 'step-000002'} is intact" in result.output
    assert [p.name for p in run.checkpoints()] == ["step-000002"] and read_checkpoint(run.latest_checkpoint).step == 2
    assert not list(run.checkpoints_dir.glob(".tmp-*"))

    monkeypatch.setattr(checkpoint_module, "write_synced", original)
    resumed = runner.invoke(app, ["run", "--resume", str(run.path)])
    assert resumed.exit_code == 0, resumed.output
    assert [m["step"] for m in run.read_metrics()] == [1, 2, 3, 4]


def test_a_format_1_checkpoint_from_before_multi_process_training_still_resumes(tmp_path):
    """Format 1 held one RNG state (a dict) and no ``sharded`` flag; it resumes like the run it was."""
    overrides = tiny_overrides(tmp_path, **{"training.max_steps": "4", "training.save_every": "2"})
    run = train(fovea.load_config(QUICKSTART, overrides))
    checkpoint = run.latest_checkpoint
    state = torch.load(checkpoint / "training_state.pt", weights_only=True)
    state["rng"] = state["rng"][0]
    torch.save(state, checkpoint / "training_state.pt")
    info = json.loads((checkpoint / "checkpoint.json").read_text())
    info["format"] = 1
    del info["sharded"]
    info["files"]["training_state.pt"] = {"bytes": (checkpoint / "training_state.pt").stat().st_size,
                                          "sha256": checkpoint_module._sha256(checkpoint / "training_state.pt")}
    (checkpoint / "checkpoint.json").write_text(json.dumps(info))

    read = read_checkpoint(checkpoint)
    assert isinstance(read.training_state["rng"], list) and len(read.training_state["rng"]) == 1
    assert not read.sharded
    result = runner.invoke(app, ["run", "--resume", str(run.path), "--set", "training.max_steps=6"])
    assert result.exit_code == 0, result.output
    assert [m["step"] for m in run.read_metrics()] == [2, 4, 6]
