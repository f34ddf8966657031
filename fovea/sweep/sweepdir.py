"""The sweep directory's one owner, ``SweepDir``: ``config.toml``, ``sweep.json``, ``runs/``, ``logs/``, the lock
and ``latest`` (layout in ``fovea.sweep``'s docstring)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from fovea.core.errors import FoveaError
from fovea.core.files import OwnedDir, new_stamped_dir
from fovea.core.rundir import RunDir
from fovea.sweep.plan import SweepPlan

SWEEP_FORMAT = 1


class SweepDir(OwnedDir):
    """The one owner of a sweep directory's layout (see the module docstring)."""

    kind = "sweeps"

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
        path = new_stamped_dir(root, plan.name, "sweep directory", "--sweeps-dir")
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

    def run_dirs(self) -> dict[str, RunDir]:
        """The run directory of each run name in ``runs/``: a finished one first, else the one with the
        newest checkpoint, else the newest (a run started again after dying before its first checkpoint)."""
        found: dict[str, list[RunDir]] = {}
        if not self.runs_dir.is_dir():
            return {}
        for path in sorted(self.runs_dir.iterdir()):
            if path.is_symlink() or not RunDir.is_run(path):
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
