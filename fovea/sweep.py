"""``fovea sweep``: train the cross product of a grid of config values (x seeds), resumably, and evaluate each run.

A sweep directory ``<sweeps dir>/<timestamp>-<name>/`` (``SweepDir``; ``<sweeps dir>/latest`` points at
the newest) holds

- ``config.toml``: the config file as it was given (its bytes); every run of the sweep starts from it;
- ``sweep.json``: the sweep's identity, grid, seeds and overrides, and each run: its name, grid values,
  seed, the ``--set`` items that make its config, its directory and status (``SWEEP_FORMAT``);
- ``runs/``: the runs, ordinary run directories ``<timestamp>-<run name>/`` (``RunDir``; the run's
  ``run.output_dir`` is this directory, so ``runs/latest`` names the newest run of the sweep);
- ``logs/<run name>.log``: each run's output when runs train side by side (``--jobs`` > 1).

Every run is a ``fovea run`` process, then a ``fovea eval`` process; up to ``jobs`` at a time. A sweep
started again continues: a run with ``summary.json`` is not trained again, one with a checkpoint and no
summary continues from it (``fovea run --resume RUN CONFIG --set ...`` with the sweep's config and the
run's overrides), one stopped before its first checkpoint starts again, and a run whose ``eval.json``
is not of its newest checkpoint is evaluated. The filesystem is the truth; ``sweep.json`` records it.

**Which sweep a command continues.** A sweep's identity is the SHA-256 of the config file's bytes, the
grid (keys and values as typed by the schema), ``--seeds`` and the ``--set`` items: the same command
continues the newest sweep of that identity under the sweeps directory (``--new`` starts another);
an edited config file is another sweep. ``fovea sweep --resume DIR`` continues the sweep in DIR
from its own ``config.toml`` and ``sweep.json``.

**Stopping.** SIGINT/SIGTERM to the sweep reach every run it started (each in its own session, so a
Ctrl-C is delivered once): each saves a checkpoint and exits, then the sweep records them as
interrupted and exits 130/143. On Linux a run also gets SIGTERM when the sweep process dies (even by
SIGKILL). The runs a sweep started hold its lock (``.lock``, inherited), so a sweep started again
waits for them to stop before it resumes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from fovea.core.errors import ConfigError, FoveaError
from fovea.core.rundir import RunDir, checkpoint_step

SWEEP_FORMAT = 1
MAX_NAME = 100                       # RunConfig.name's max_length
SET_BY_SWEEP = ("run.output_dir",)   # each run's output_dir is the sweep's runs/
POLL_S = 0.2


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its config is the sweep's ``config.toml`` with ``overrides`` applied."""

    name: str                  # run.name, unique within the sweep
    grid: dict[str, Any]       # grid key -> its value in this run, typed by the schema
    seed: int | None           # run.seed when the sweep has --seeds
    overrides: list[str]       # --set items: the sweep's --set, the grid values, run.seed and run.name


@dataclass(frozen=True)
class SweepPlan:
    """What ``fovea sweep CONFIG --grid ...`` trains, validated: every run's config loads."""

    config_path: Path
    config_bytes: bytes
    name: str                  # run.name of the config (after --set): names the sweep and prefixes its runs
    grid: dict[str, list[Any]]
    seeds: int | None
    sets: list[str]
    runs: list[PlannedRun]
    raw_grid: list[tuple[str, list[str]]]   # the grid as typed on the command line

    @property
    def identity(self) -> str:
        """SHA-256 of the config file's bytes, the typed grid, the seeds and the --set items."""
        digest = hashlib.sha256(self.config_bytes)
        digest.update(json.dumps({"grid": [[key, values] for key, values in self.grid.items()],
                                  "seeds": self.seeds, "sets": self.sets}, sort_keys=True).encode())
        return digest.hexdigest()

    def command(self) -> str:
        """The ``fovea sweep`` command line that makes this plan (recorded in sweep.json)."""
        args = ["fovea", "sweep", str(self.config_path)]
        for key, values in self.raw_grid:
            args += ["--grid", f"{key}={','.join(values)}"]
        if self.seeds is not None:
            args += ["--seeds", str(self.seeds)]
        for item in self.sets:
            args += ["--set", item]
        return shlex.join(args)


def parse_grid(items: Iterable[str]) -> list[tuple[str, list[str]]]:
    """``["training.lr=1e-3,2e-3"]`` -> ``[("training.lr", ["1e-3", "2e-3"])]``: the syntax only.

    Values are comma-separated scalars (a list value cannot be a grid value); each is typed later by the
    schema, as a ``--set`` value is.
    """
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        values = [value.strip() for value in raw.split(",")]
        if not sep or not key or not all(part.strip() for part in key.split(".")):
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2 with a dotted key, e.g. "
                              f"--grid training.lr=1e-3,2e-3")
        if not all(values):
            raise ConfigError(f"--grid {item!r}: an empty value; give comma-separated values, e.g. {key}=1,2 "
                              f"(a list cannot be a grid value)")
        if len(set(values)) < len(values):
            raise ConfigError(f"--grid {item!r}: a value appears twice")
        if any(key == other for other, _ in grid):
            raise ConfigError(f"--grid {key}: given twice; put every value of a key in one --grid {key}=V1,V2")
        if key in SET_BY_SWEEP or key == "run.name":
            raise ConfigError(f"--grid {key}: a sweep names its runs and puts them in its own directory "
                              f"(--sweeps-dir); {key} cannot be swept")
        grid.append((key, values))
    return grid


def plan_sweep(config: Path, grid: Iterable[str], seeds: int | None = None, sets: Iterable[str] = ()) -> SweepPlan:
    """Parse and validate a sweep: every grid value, then every run's whole config (``load_config``),
    before anything trains. A bad key or value is a ``ConfigError`` naming the ``--grid`` item."""
    from fovea.core.config import load_config, parse_override

    sets = list(sets)
    raw_grid = parse_grid(grid)
    set_keys = {".".join(parse_override(item)[0]) for item in sets}
    if seeds is not None and any(key == "run.seed" for key, _ in raw_grid):
        raise ConfigError("--grid run.seed and --seeds: give the seeds one way")
    if set_keys & set(SET_BY_SWEEP):
        raise ConfigError("--set run.output_dir: a sweep's runs go into its own directory; choose where sweeps go "
                          "with --sweeps-dir")
    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds {seeds}: give at least 1")
    base = load_config(config, sets)
    for key, values in raw_grid:   # each value alone first, so an error names its --grid item
        for value in values:
            try:
                load_config(config, sets + [f"{key}={value}"])
            except ConfigError as exc:
                raise ConfigError(f"--grid {key}={','.join(values)}: {exc}") from None

    names: set[str] = set()
    runs: list[PlannedRun] = []
    typed_grid: dict[str, list[Any]] = {key: [] for key, _ in raw_grid}
    for combination in itertools.product(*[values for _, values in raw_grid]):
        assignment = [f"{key}={value}" for (key, _), value in zip(raw_grid, combination)]
        try:
            resolved = load_config(config, sets + assignment).model_dump(mode="json")
        except ConfigError as exc:
            raise ConfigError(f"--grid combination {', '.join(assignment)}: {exc}") from None
        typed = {key: _lookup(resolved, key) for key, _ in raw_grid}
        for key, value in typed.items():
            if value not in typed_grid[key]:
                typed_grid[key].append(value)
        for seed in (range(seeds) if seeds is not None else [None]):
            stem = "-".join([base.run.name] + [f"{key}_{_name_part(value, raw)}" for (key, _), raw, value
                                               in zip(raw_grid, combination, typed.values())]
                            + ([f"seed{seed}"] if seed is not None else []))
            name = unique_name(stem, names)
            overrides = sets + assignment + ([f"run.seed={seed}"] if seed is not None else []) \
                + [f"run.name={json.dumps(name)}"]
            runs.append(PlannedRun(name, typed, seed, overrides))
    for run in runs:   # the seed and the name are valid too: the last check before anything runs
        load_config(config, run.overrides)
    return SweepPlan(Path(config), Path(config).read_bytes(), base.run.name, typed_grid, seeds, sets, runs, raw_grid)


def _lookup(table: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        table = table.get(key) if isinstance(table, dict) else None
    return table


def _name_part(value: Any, raw: str) -> str:
    return value if isinstance(value, str) else raw


def unique_name(stem: str, taken: set[str]) -> str:
    """``stem`` made a valid ``run.name`` (letters, digits, ``.``, ``_``, ``-``; at most ``MAX_NAME``
    characters), not in ``taken``."""
    name = re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9._-]+", "_", stem)).strip("._-") or "run"
    if len(name) > MAX_NAME:   # keep it readable and unique: a cut plus a hash of the whole
        name = f"{name[:MAX_NAME - 9]}-{hashlib.sha256(stem.encode()).hexdigest()[:8]}"
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name[:MAX_NAME - 1 - len(str(n))]}-{n}"
    taken.add(candidate)
    return candidate


# --------------------------------------------------------------------------- the sweep directory


@dataclass(frozen=True)
class SweepDir:
    """The one owner of a sweep directory's layout (see the module docstring)."""

    path: Path

    sweep_file = property(lambda self: self.path / "sweep.json")
    config_file = property(lambda self: self.path / "config.toml")
    runs_dir = property(lambda self: self.path / "runs")
    logs_dir = property(lambda self: self.path / "logs")

    @staticmethod
    def is_sweep(path: str | Path) -> bool:
        return (Path(path) / "sweep.json").is_file()

    @classmethod
    def open(cls, path: str | Path) -> "SweepDir":
        """An existing sweep directory (``sweeps/latest`` works)."""
        resolved = Path(path).resolve()
        if not cls.is_sweep(resolved):
            raise FoveaError(f"{path} is not a fovea sweep directory (no sweep.json in it); start one with "
                             f"`fovea sweep CONFIG --grid KEY=V1,V2`")
        return cls(resolved)

    @classmethod
    def create(cls, root: Path, plan: SweepPlan) -> "SweepDir":
        """A new sweep directory holding the config file and the plan as ``sweep.json`` (all runs pending)."""
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{plan.name}"
        path, n = root / stem, 1
        while path.exists():
            path, n = root / f"{stem}-{n}", n + 1
        try:
            path.mkdir(parents=True)
        except OSError as exc:
            raise FoveaError(f"cannot create the sweep directory {path} ({exc.strerror}); check --sweeps-dir") \
                from None
        sweep = cls(path)
        sweep.config_file.write_bytes(plan.config_bytes)
        sweep.write({
            "format": SWEEP_FORMAT, "identity": plan.identity, "name": plan.name,
            "created": _now(), "updated": _now(), "status": "pending", "command": plan.command(),
            "config": str(plan.config_path), "config_sha256": hashlib.sha256(plan.config_bytes).hexdigest(),
            "grid": plan.grid, "seeds": plan.seeds, "sets": plan.sets,
            "runs": [{"name": run.name, "grid": run.grid, "seed": run.seed, "overrides": run.overrides,
                      "dir": None, "status": "pending", "eval": "pending", "exit_code": None, "log": None,
                      "train_s": None, "eval_s": None, "error": None} for run in plan.runs],
        })
        return sweep

    @classmethod
    def find(cls, root: Path, identity: str) -> "SweepDir | None":
        """The newest sweep under ``root`` whose identity is ``identity``."""
        found = []
        for sweep_file in root.glob("*/sweep.json"):
            if sweep_file.parent.is_symlink():
                continue
            with contextlib.suppress(OSError, ValueError):
                if json.loads(sweep_file.read_text(encoding="utf-8")).get("identity") == identity:
                    found.append(sweep_file.parent)
        return cls(max(found, key=lambda p: p.name)) if found else None

    def read(self) -> dict[str, Any]:
        try:
            record = json.loads(self.sweep_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FoveaError(f"{self.sweep_file}: unreadable ({exc}); the sweep's runs are intact in "
                             f"{self.runs_dir}: compare them with `fovea compare {self.runs_dir}/*`") from None
        if not isinstance(record, dict) or record.get("format") != SWEEP_FORMAT:
            raise FoveaError(f"{self.sweep_file}: not a sweep record of format {SWEEP_FORMAT}")
        return record

    def write(self, record: dict[str, Any]) -> None:
        """Write ``sweep.json`` atomically."""
        record["updated"] = _now()
        tmp = self.path / f".{self.sweep_file.name}.tmp"
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.sweep_file)

    def mark_latest(self) -> None:
        """Point ``<sweeps dir>/latest`` at this sweep (atomically, relative)."""
        latest = self.path.parent / "latest"
        if latest.exists() and not latest.is_symlink():
            raise FoveaError(f"{latest} exists and is not a symlink; move it away so fovea can point it at sweeps")
        tmp = self.path.parent / f".latest-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.path.name)
        os.replace(tmp, latest)

    def run_dirs(self) -> dict[str, RunDir]:
        """The run directory of each run name in ``runs/``: a finished one first, else the one with the
        newest checkpoint, else the newest (a run started again after dying before its first checkpoint)."""
        found: dict[str, list[RunDir]] = {}
        if not self.runs_dir.is_dir():
            return {}
        for path in sorted(self.runs_dir.iterdir()):
            if path.is_symlink() or not (path / "config.toml").is_file():
                continue
            run = RunDir(path)
            name = run.read_config_table().get("run", {}).get("name")
            found.setdefault(name, []).append(run)
        return {name: max(runs, key=lambda r: (r.summary_file.is_file(), bool(r.checkpoints()), r.path.name))
                for name, runs in found.items()}

    def runs(self) -> list[tuple[dict[str, Any], RunDir | None]]:
        """Each run of ``sweep.json`` with its directory (``None``: not started)."""
        dirs = self.run_dirs()
        return [(entry, dirs.get(entry["name"])) for entry in self.read()["runs"]]

    @contextlib.contextmanager
    def lock(self, echo: Callable[[str], None]) -> Iterator[int]:
        """Hold the sweep; yields the lock's file descriptor, which the runs inherit (they hold it too).

        An advisory ``flock`` the kernel drops when every holder has exited: a sweep started again while
        runs of an earlier, killed one are still stopping waits for them.
        """
        import fcntl

        with open(self.path / ".lock", "a", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                echo(f"{self.path} is held by another fovea sweep or by runs an interrupted one started; "
                     f"waiting for them to stop")
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield handle.fileno()
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# --------------------------------------------------------------------------- running it


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

    split = run.read_json(run.split_file)
    if not split or not split.get("num_val"):
        return False
    current = run.read_eval()
    return not (current is not None and current.get("step") == checkpoint_step(run.latest_checkpoint)
                and set(MODES) <= set(current.get("modes", {})))


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
