"""Running a sweep: each run a ``fovea run`` process then a ``fovea eval`` process, ``jobs`` at a time, resumable,
with SIGINT/SIGTERM forwarded to the runs (see ``fovea.sweep``'s docstring)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from fovea.core.errors import ConfigError, FoveaError
from fovea.core.rundir import RunDir
from fovea.sweep.plan import SweepPlan
from fovea.sweep.sweepdir import SweepDir

POLL_S = 0.2


class SweepInterrupted(Exception):
    """SIGINT/SIGTERM stopped the sweep; its runs saved checkpoints and it continues when started again."""

    def __init__(self, sweep: SweepDir, signal_number: int):
        self.sweep, self.signal_number = sweep, signal_number
        super().__init__(f"{signal.Signals(signal_number).name}: sweep stopped; its runs saved checkpoints. "
                         f"Continue with the same command, or `fovea sweep --resume {sweep.path}`")


def start_sweep(plan: SweepPlan, sweeps_dir: Path, new: bool = False,
                echo: Callable[[str], None] = print) -> SweepDir:
    """The sweep directory ``plan`` runs in: the newest one of its identity under ``sweeps_dir``, or a new one."""
    sweep = None if new else SweepDir.find(sweeps_dir, plan.identity)
    if sweep is not None:
        echo(f"continuing the sweep {sweep.path} (same config file, grid, seeds and --set; --new starts another)")
        return sweep
    sweep = SweepDir.create(sweeps_dir, plan)
    echo(f"sweep: {sweep.path} ({len(plan.runs)} runs)")
    return sweep


def needs_eval(run: RunDir) -> bool:
    """A finished run with held-out clips whose ``eval.json`` is missing, of an older checkpoint, or lacks a mode."""
    from fovea.core.evaluation import MODES

    return run.holds_out_clips() and run.current_eval(MODES) is None


@dataclass
class _Job:
    """A run's remaining work: train (start or resume), then evaluate; each stage tried once per sweep process."""

    entry: dict[str, Any]
    process: subprocess.Popen | None = None
    stage: str = ""
    started: float = 0.0
    tried: set[str] = field(default_factory=set)


def run_sweep(sweep: SweepDir, jobs: int = 1, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train and evaluate every run of ``sweep`` that is not done, ``jobs`` processes at a time; returns
    the final ``sweep.json`` record. Raises ``SweepInterrupted`` after SIGINT/SIGTERM."""
    from fovea.core.config import load_config

    if jobs < 1:
        raise FoveaError(f"--jobs {jobs}: give at least 1")
    with sweep.lock(echo) as lock_fd:
        record = sweep.read()
        for entry in record["runs"]:   # fovea may have changed since the sweep began: check before training
            try:
                load_config(sweep.config_file, entry["overrides"])
            except ConfigError as exc:
                raise ConfigError(f"run {entry['name']} of {sweep.path}: {exc}") from None
        sweep.mark_latest()
        runner = _Runner(sweep, record, jobs, lock_fd, echo)
        with runner.forwarding_signals():
            runner.run()
        return runner.finish()


class _Runner:
    """The scheduling loop of ``run_sweep``: at most ``jobs`` child processes, one stage of one run each."""

    def __init__(self, sweep: SweepDir, record: dict[str, Any], jobs: int, lock_fd: int,
                 echo: Callable[[str], None]):
        self.sweep, self.record, self.jobs, self.lock_fd, self.echo = sweep, record, jobs, lock_fd, echo
        self.stop_signal: int | None = None
        self.active: list[_Job] = []

    @contextlib.contextmanager
    def forwarding_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM: start nothing new and pass the signal on to every training process (a second
        SIGINT too: a run then stops at once); an evaluation, which has nothing to save, gets SIGTERM."""
        def handle(signal_number: int, frame) -> None:
            if self.stop_signal is None:
                self.echo(f"{signal.Signals(signal_number).name}: stopping the sweep; each running process saves "
                          f"a checkpoint first")
                self.stop_signal = signal_number
            for job in self.active:
                with contextlib.suppress(ProcessLookupError):
                    job.process.send_signal(signal_number if job.stage == "train" else signal.SIGTERM)

        previous = {number: signal.signal(number, handle) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def run(self) -> None:
        queue = [_Job(entry) for entry in self.record["runs"]]
        for job in queue:
            self.refresh(job.entry)
        self.record["status"] = "running"
        self.sweep.write(self.record)
        while queue or self.active:
            while queue and len(self.active) < self.jobs and self.stop_signal is None:
                job = queue.pop(0)
                if self.start_next(job):
                    self.active.append(job)
            if self.stop_signal is not None and not self.active:
                return
            time.sleep(POLL_S)
            for job in [job for job in self.active if job.process.poll() is not None]:
                self.active.remove(job)
                self.stage_done(job)
                if self.stop_signal is None and self.start_next(job):   # its evaluation follows at once
                    self.active.append(job)

    def refresh(self, entry: dict[str, Any]) -> RunDir | None:
        """Read a run's status from its directory into its ``sweep.json`` entry; returns the directory."""
        run = self.sweep.run_dirs().get(entry["name"])
        entry["dir"] = str(run.path.relative_to(self.sweep.path)) if run is not None else None
        entry["eval"] = "pending"
        if run is None or not (run.summary_file.is_file() or run.checkpoints()):
            entry["status"] = "pending"
        elif not run.summary_file.is_file():
            entry["status"] = "interrupted"
        else:
            entry["status"] = "finished"
            if not needs_eval(run):
                entry["eval"] = "done" if run.read_eval() is not None else "none (no held-out clips)"
        return run

    def start_next(self, job: _Job) -> bool:
        """Start the job's next process; ``False`` when the run needs nothing more (or failed in this sweep)."""
        entry = job.entry
        run = self.refresh(entry)
        if entry["status"] != "finished":
            stage = "train"
        elif entry["eval"] == "pending":
            stage = "eval"
        else:
            return False
        if stage in job.tried:
            return False
        progress = ["--set", "run.progress=false"] if self.jobs > 1 else []
        if stage == "train" and run is not None and entry["status"] == "pending":
            self.echo(f"{entry['name']}: {run.path.name} stopped before its first checkpoint; starting it again")
            shutil.rmtree(run.path)
            run = entry["dir"] = None
        # A run starts, and resumes, from the sweep's config.toml and its overrides: what the sweep planned.
        config = [str(self.sweep.config_file), *_sets(entry["overrides"]), "--set",
                  f"run.output_dir={json.dumps(str(self.sweep.runs_dir))}", *progress]
        if stage == "eval":
            args, what = ["eval", str(run.path)], "evaluating"
        elif run is None:
            args, what = ["run", *config], "training"
        else:
            args, what = ["run", "--resume", str(run.path), *config], "resuming"
        log = f" (log: {self.log_path(entry)})" if self.jobs > 1 else ""
        self.echo(f"[{self.record['runs'].index(entry) + 1}/{len(self.record['runs'])}] {entry['name']}: {what}{log}")
        job.stage, job.started = stage, time.monotonic()
        job.tried.add(stage)
        entry["status" if stage == "train" else "eval"] = "running"
        job.process = self.launch(args, entry)
        self.sweep.write(self.record)
        return True

    def log_path(self, entry: dict[str, Any]) -> Path:
        return self.sweep.logs_dir / f"{entry['name']}.log"

    def launch(self, args: list[str], entry: dict[str, Any]) -> subprocess.Popen:
        """``python -m fovea ARGS`` in its own session (a Ctrl-C reaches it once, through the sweep), holding
        the sweep's lock, stopped by SIGTERM if the sweep dies (Linux); output to a log with --jobs > 1."""
        if sys.platform.startswith("linux"):
            command = [sys.executable, "-c", _STOP_WITH_PARENT, str(os.getpid()), *args]
        else:  # pragma: no cover
            command = [sys.executable, "-m", "fovea", *args]
        output = None
        if self.jobs > 1:
            self.sweep.logs_dir.mkdir(exist_ok=True)
            output = open(self.log_path(entry), "a", encoding="utf-8")
            output.write(f"$ fovea {shlex.join(args)}\n")
            output.flush()
            entry["log"] = str(self.log_path(entry).relative_to(self.sweep.path))
        try:
            return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT if output else None,
                                    pass_fds=(self.lock_fd,), start_new_session=True)
        finally:
            if output is not None:
                output.close()

    def stage_done(self, job: _Job) -> None:
        entry, code = job.entry, job.process.returncode
        entry["exit_code"] = code
        entry[f"{job.stage}_s"] = round(time.monotonic() - job.started, 3)
        stopped = self.stop_signal is not None and (code in (130, 143) or code < 0)
        self.refresh(entry)
        if code == 0 or stopped:
            entry["error"] = None
        else:
            entry["error"] = self.error_line(entry) or f"exit code {code}"
            entry["status" if job.stage == "train" else "eval"] = "failed"
            where = f"; see {self.sweep.path / entry['log']}" if entry.get("log") else ""
            self.echo(f"{entry['name']}: {'training' if job.stage == 'train' else 'evaluation'} failed "
                      f"(exit {code}): {entry['error']}{where}")
        self.sweep.write(self.record)

    def error_line(self, entry: dict[str, Any]) -> str | None:
        """The last ``error:`` line of the run's log (with --jobs > 1; otherwise it was printed above)."""
        if not entry.get("log"):
            return None
        lines = (self.sweep.path / entry["log"]).read_text(encoding="utf-8", errors="replace").splitlines()
        errors = [line for line in lines if line.startswith("error:")]
        return errors[-1] if errors else (lines[-1] if lines else None)

    def finish(self) -> dict[str, Any]:
        """Record the sweep's status: finished (every run trained and evaluated), failed, or interrupted."""
        runs = self.record["runs"]
        failed = any(entry["status"] == "failed" or entry["eval"] == "failed" for entry in runs)
        self.record["status"] = ("interrupted" if self.stop_signal is not None else "failed" if failed else
                                 "finished" if all(entry["status"] == "finished" for entry in runs) else "incomplete")
        self.sweep.write(self.record)
        if self.stop_signal is not None:
            raise SweepInterrupted(self.sweep, self.stop_signal)
        return self.record


def _sets(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


# Runs ``python -m fovea ARGS`` after asking Linux for SIGTERM when the sweep (argv[1]) dies: PR_SET_PDEATHSIG
# survives exec, so the run saves a checkpoint and stops instead of training on with no sweep to record it.
_STOP_WITH_PARENT = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):
    sys.exit(143)
os.execv(sys.executable, [sys.executable, "-m", "fovea", *sys.argv[2:]])
"""


def failures(record: dict[str, Any]) -> list[str]:
    """One line per failed run or evaluation of a sweep record."""
    return [f"{entry['name']} ({'training' if entry['status'] == 'failed' else 'evaluation'}: "
            f"{entry.get('error') or 'exit ' + str(entry.get('exit_code'))})"
            for entry in record["runs"] if entry["status"] == "failed" or entry["eval"] == "failed"]
