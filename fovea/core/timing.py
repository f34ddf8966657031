"""Wall time per named phase of a training step, honest on GPUs.

``timer("forward")`` is a context manager. With ``sync=True`` the device is synchronised at both
edges, so the GPU work a phase queued is counted in that phase, not in whichever later call happens
to wait for it (slower, so only ``fovea profile`` uses it). The training loop uses ``sync=False`` and
reads only the data wait, which is host time anyway.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

import torch


class PhaseTimer:
    def __init__(self, device: torch.device | None = None, sync: bool = False):
        self.sync = sync and device is not None and device.type == "cuda"
        self.device = device
        self.totals: dict[str, float] = defaultdict(float)
        self._started: dict[str, float] = {}

    def _wait(self) -> None:
        if self.sync:
            torch.cuda.synchronize(self.device)

    def start(self, name: str) -> None:
        self._wait()
        self._started[name] = time.perf_counter()

    def stop(self, name: str) -> None:
        self._wait()
        self.totals[name] += time.perf_counter() - self._started.pop(name)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def pop(self) -> dict[str, float]:
        """Seconds per phase since the last ``pop``, and reset."""
        totals, self.totals = dict(self.totals), defaultdict(float)
        return totals
