"""Optional TensorBoard logging (``[run] tensorboard = true``) into ``<run>/tensorboard/``.

The run's files stay the record (``metrics.jsonl``, ``viz/*.png``); TensorBoard gets a copy of the
logged scalars and of ``fovea viz``'s figures to browse: ``tensorboard --logdir runs/latest/tensorboard``.
Needs the ``tensorboard`` package (``pip install 'fovea[tensorboard]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fovea.core.errors import FoveaError

LOG_DIR = "tensorboard"


def require_tensorboard() -> None:
    """A ``FoveaError`` saying what to install when TensorBoard is asked for but missing."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise FoveaError("run.tensorboard = true needs the tensorboard package: pip install 'fovea[tensorboard]' "
                         "(or pip install tensorboard), or set run.tensorboard = false")


def open_writer(run_path: Path):
    """A ``SummaryWriter`` on ``<run>/tensorboard/`` (a resumed run appends a new event file)."""
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_path / LOG_DIR))


def log_scalars(writer, record: dict[str, Any]) -> None:
    """Every number of a metrics line as ``<split>/<key>`` (``train/``, ``val/``) at its step (``None``s, from
    skipped steps, left out)."""
    step, split = record["step"], record.get("split", "train")
    for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(f"{split}/{key}", value, step)
    writer.flush()
