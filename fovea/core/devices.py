"""Where a run computes, and in which precision: ``run.device`` and ``precision.dtype`` resolved."""

from __future__ import annotations

import torch

from fovea.core.errors import FoveaError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """The device ``run.device`` names; under torchrun, the GPU of this process's local rank."""
    from fovea.core.distributed import local_device

    if name == "auto":
        return local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if name == "cuda" and not torch.cuda.is_available():
        raise FoveaError("run.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return local_device(torch.device(name))
