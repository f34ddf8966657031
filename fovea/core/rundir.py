"""The run directory: everything a run writes, and everything ``audit``/``profile`` read back.

Layout of ``<output_dir>/<timestamp>-<name>/``: ``config.toml`` (resolved), ``env.json``,
``metrics.jsonl``, ``model.safetensors`` and ``loader_state.json`` (at each checkpoint),
``data_report.json`` (the clip cache used, the VAE of its targets, skipped files and why),
``summary.json``. ``<output_dir>/latest`` is a relative symlink to the newest run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fovea.core.config import FoveaConfig, config_to_toml
from fovea.core.errors import FoveaError


@dataclass(frozen=True)
class RunDir:
    path: Path

    config_file = property(lambda self: self.path / "config.toml")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    checkpoint_file = property(lambda self: self.path / "model.safetensors")
    summary_file = property(lambda self: self.path / "summary.json")
    data_report_file = property(lambda self: self.path / "data_report.json")

    @classmethod
    def create(cls, config: FoveaConfig) -> "RunDir":
        """A new run directory holding the resolved config and environment (``latest`` is not moved yet)."""
        root = Path(config.run.output_dir)
        latest = root / "latest"
        if latest.exists() and not latest.is_symlink():
            raise FoveaError(f"{latest} exists and is not a symlink; move it away so fovea can point it at new runs")
        root.mkdir(parents=True, exist_ok=True)
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{config.run.name}"
        path, n = root / stem, 1
        while path.exists():
            path, n = root / f"{stem}-{n}", n + 1
        path.mkdir()
        run = cls(path)
        run.config_file.write_text(config_to_toml(config), encoding="utf-8")
        run.write_json("env.json", collect_environment())
        return run

    def mark_latest(self) -> None:
        """Point ``<output_dir>/latest`` at this run (atomically: it always names a complete directory)."""
        latest = self.path.parent / "latest"
        tmp = self.path.parent / f".latest-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.path.name)   # relative: the runs directory can move
        os.replace(tmp, latest)

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """An existing run directory (``runs/latest`` works); an error says what is missing."""
        resolved = Path(path).resolve()
        if not resolved.is_dir():
            raise FoveaError(f"no run directory at {path}; train one first with `fovea run CONFIG`")
        if not (resolved / "config.toml").is_file():
            raise FoveaError(f"{path} is not a fovea run directory (no config.toml in it)")
        return cls(resolved)

    def write_json(self, name: str, data: Any) -> None:
        """Write ``name`` atomically: readers see the old file or the new one, never half of one."""
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.path / name)

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics_file.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.is_file():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text(encoding="utf-8").splitlines() if line]


def collect_environment() -> dict[str, Any]:
    """Versions, git commit and devices: enough to say later what produced a run."""
    import platform
    import subprocess
    import sys
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def _version(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    def _git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "argv": sys.argv,
        "packages": {name: _version(name) for name in
                     ("fovea", "torch", "transformers", "diffusers", "torchdata", "pydantic", "pluggy")},
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "cpu_count": os.cpu_count(),
        "cuda": torch.version.cuda if cuda else None,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else ["cpu"],
    }
