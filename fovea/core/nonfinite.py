"""Steps whose loss or gradient is NaN/inf: the error a step raises and the diagnosis a run keeps of it.

``train_step`` raises ``NonFiniteStep`` before the optimizer touches the weights; the loop then stops or
skips the step (``training.on_nonfinite``) and appends what went wrong to ``<run>/nonfinite.jsonl``: the
losses per micro-batch, the batch's source clips, the parameters whose gradient is not finite.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from fovea.core.errors import FoveaError

if TYPE_CHECKING:
    import torch

    from fovea.core.rundir import RunDir


class NonFiniteStep(FoveaError):
    """A step's loss or gradient norm is NaN/inf; raised before the optimizer touches the weights."""

    def __init__(self, losses: torch.Tensor, grad_norm: torch.Tensor, clips: list[list[int]], parameters: list[str],
                 names: tuple[str, ...] = ("loss", "loss_fine", "loss_coarse")):
        self.losses = losses.tolist()              # per micro-batch: one value per name (``loss_names``)
        self.names = names
        self.grad_norm = grad_norm.item()
        self.clips = clips                         # per micro-batch: cache indices of its clips
        self.parameters = parameters               # trainable parameters whose gradient is not finite
        bad = sorted({names[i] for row in self.losses for i, value in enumerate(row) if not math.isfinite(value)},
                     key=names.index)
        self.which = bad or ["gradient"]
        super().__init__(f"non-finite {', '.join(self.which)} (grad norm {self.grad_norm}); the weights were "
                         f"not updated")


def nonfinite_message(exc: NonFiniteStep, step: int, run: RunDir) -> str:
    """The error a run stopped by a NaN/inf step ends with: where the diagnosis is, what to do."""
    checkpoints = run.checkpoints()
    kept = f"the last checkpoint, {checkpoints[-1].name}, is intact" if checkpoints else "no checkpoint was saved yet"
    return (f"step {step}: {exc}. The diagnosis (losses, the batch's source clips, parameters with NaN/inf "
            f"gradients) is in {run.nonfinite_file}; {kept}. Lower training.lr or check those clips, "
            f"or skip such steps: `fovea run --resume {run.path} --set training.on_nonfinite=skip`")


def report_nonfinite(exc: NonFiniteStep, step: int, run: RunDir, clip_info: Callable[[], list[dict]] | None,
                     action: str) -> None:
    """Append the diagnosis of a NaN/inf step to ``nonfinite.jsonl``: the losses, the batch's source clips."""
    import json

    info = clip_info() if clip_info is not None else []
    names = exc.names
    checkpoints = run.checkpoints()
    record = {
        "step": step,
        "action": action,
        "nonfinite": exc.which,
        "grad_norm": _json_number(exc.grad_norm),
        "micro_batches": [{"losses": {name: _json_number(value) for name, value in zip(names, losses)},
                           "clips": [{"index": i, **(info[i] if 0 <= i < len(info) else {})} for i in clips]}
                          for losses, clips in zip(exc.losses, exc.clips)],
        "parameters_with_nonfinite_grad": len(exc.parameters),
        "first_parameters_with_nonfinite_grad": exc.parameters[:20],   # in model order: where it starts
        "last_checkpoint": checkpoints[-1].name if checkpoints else None,
    }
    with run.nonfinite_file.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _json_number(value: float) -> float | str:
    """A float as strict JSON allows: NaN and infinities as strings."""
    return value if math.isfinite(value) else str(value)
