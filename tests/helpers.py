"""Paths and override sets shared by the tests."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.toml"


def tiny_overrides(tmp_path: Path, **extra) -> list[str]:
    """Overrides that turn the quick-start config into a seconds-long test run writing under tmp_path."""
    values = {"run.output_dir": f'"{tmp_path / "runs"}"', "run.progress": "false", "run.log_every": "2",
              "data.num_clips": "8", "training.batch_size": "2", "training.max_steps": "4",
              "training.warmup_steps": "1", "training.save_every": "4", **extra}
    return [f"{key}={value}" for key, value in values.items()]
