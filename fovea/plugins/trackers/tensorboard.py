"""``tensorboard``: the run's scalars and figures as TensorBoard event files in ``<run>/tensorboard/``.

``tensorboard --logdir runs/latest/tensorboard``. Needs the ``tensorboard`` package (``pip install
'fovea[tensorboard]'``); ``[run] tensorboard = true`` is an alias of listing it in ``run.trackers``.

On resume, the writer opens a new event file with ``purge_step`` = the checkpoint's step + 1: TensorBoard
hides every event at or after that step written before, so the rows logged after the checkpoint (and
logged again by the resumed run) show once, **with the resumed run's values** (each row is flushed when
logged, so the steps up to the checkpoint are in the earlier files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from fovea.core.hookspecs import hookimpl
from fovea.core.contracts import Session
from fovea.core.trackers import numbers, require_package


class TensorBoardTracker:
    """TensorBoard event files in the run directory (scalars, the config as text, the viz figures)."""

    class Config(BaseModel):
        """Options of the ``tensorboard`` tracker (none: it writes into ``<run>/tensorboard/``)."""

        model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    def __init__(self, config: Config):
        self.config = config
        self.writer = None
        self.held = 0                      # steps at or below this are in the event files already

    @classmethod
    def require(cls, config: Config) -> None:
        require_package("tensorboard", " (and run.tensorboard)")

    def start(self, session: Session) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter

        purge = session.resume_step + 1 if session.resume_step is not None else None
        self.writer = SummaryWriter(log_dir=str(session.files), purge_step=purge)
        # Every row is flushed when logged: an earlier process's event files hold the steps up to the checkpoint.
        self.held = session.resume_step if session.record is not None and purge is not None else 0
        if session.record is None:   # a new run: its config, once
            self.writer.add_text("config", "\n".join(f"    {k} = {v}" for k, v in session.params.items()))
        return {"log_dir": session.files.name}

    def log_metrics(self, row: dict[str, Any]) -> None:
        step, split = row["step"], row.get("split", "train")
        if step <= self.held:
            return
        for key, value in numbers(row).items():
            self.writer.add_scalar(f"{split}/{key}", value, step)
        self.writer.flush()

    def log_summary(self, values: dict[str, Any], step: int) -> None:
        for key, value in values.items():
            if isinstance(value, str):
                self.writer.add_text(key, value, step)
            else:
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_images(self, images: dict[str, Path], step: int) -> None:
        import numpy as np
        from PIL import Image

        for name, path in images.items():
            image = np.asarray(Image.open(path).convert("RGB"))                # (H, W, 3) uint8
            self.writer.add_image(name, image, step, dataformats="HWC")
        self.writer.flush()

    def finish(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()


@hookimpl
def fovea_register_trackers(register):
    register("tensorboard", TensorBoardTracker)
