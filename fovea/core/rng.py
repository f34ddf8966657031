"""The random generators a run reads: seeded once at its start (``seed_everything``), saved and restored per
rank by a checkpoint (python, numpy, torch CPU and every CUDA device, as tensors and numbers that
``torch.load(weights_only=True)`` reads back)."""

from __future__ import annotations

import random
from typing import Any

import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device) alike: a run starts from ``run.seed`` (+ its rank)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """The state of every random generator training reads: python, numpy, torch CPU and each CUDA device."""
    import numpy as np

    numpy_state = np.random.get_state(legacy=False)
    return {"python": random.getstate(),
            "numpy": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                      "pos": int(numpy_state["state"]["pos"]), "has_gauss": int(numpy_state["has_gauss"]),
                      "gauss": float(numpy_state["gauss"])},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(states: list[dict[str, Any]]) -> None:
    """Put every generator of this rank back where ``capture_rng`` found it (CUDA devices that exist now).

    ``states`` holds one entry per rank of the saved run; a rank it lacks (the run resumes on more
    processes) keeps the generators it was seeded with.
    """
    import numpy as np

    from fovea.core import distributed

    rank = distributed.current().rank
    if rank >= len(states):
        return
    state = states[rank]
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
                         "has_gauss": numpy_state["has_gauss"], "gauss": numpy_state["gauss"]})
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)
