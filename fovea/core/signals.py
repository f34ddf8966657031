"""Stopping a run cleanly on SIGINT/SIGTERM: the loop finishes its step, saves a checkpoint and raises
``RunInterrupted``; a second Ctrl-C stops at once."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from pathlib import Path

    from fovea.core.rundir import RunDir


class RunInterrupted(Exception):
    """SIGINT/SIGTERM stopped the run after a step; its checkpoint is saved and the run can be resumed."""

    def __init__(self, run: RunDir, step: int, signal_number: int, checkpoint: Path, world_size: int = 1):
        self.run, self.step, self.signal_number, self.checkpoint = run, step, signal_number, checkpoint
        launch = f"torchrun --nproc_per_node={world_size} -m " if world_size > 1 else ""
        super().__init__(f"stopped by {signal.Signals(signal_number).name} after step {step}; checkpoint "
                         f"{checkpoint}. Continue with `{launch}fovea run --resume {run.path}`")


@dataclass
class StopRequest:
    """Set by SIGINT/SIGTERM: the loop finishes its step, saves a checkpoint and stops."""

    signal_number: int | None = None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Turn SIGINT/SIGTERM into a ``StopRequest`` for the block; a second SIGINT stops at once."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():   # signals reach only the main thread
        yield request
        return

    def handle(signal_number: int, frame) -> None:
        if request.signal_number == signal.SIGINT and signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        request.signal_number = signal_number
        print(f"\n{signal.Signals(signal_number).name}: stopping after this step and saving a checkpoint "
              f"(Ctrl-C again stops at once, losing the steps since the last checkpoint)", file=sys.stderr)

    previous = {number: signal.signal(number, handle) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
