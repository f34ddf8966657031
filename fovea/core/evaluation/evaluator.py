"""The held-out evaluation during training: a ``metrics.jsonl`` row (``"split": "val"``) every
``eval.every`` steps, from the same per-clip losses and baselines as `fovea eval`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from fovea.core.evaluation.baselines import Baseline, fit_baselines
from fovea.core.evaluation.losses import clip_losses
from fovea.core.evaluation.statistics import primary_objective
from fovea.core.records import MetricsRow
from fovea.core.split import ClipSet


@dataclass
class Evaluator:
    """The held-out evaluation run every ``eval.every`` steps: coarse and fine losses, baselines, skill.

    Built once per run (the baselines are fitted once on the first training clips); reads the cache
    directly, so the training loader's position never moves.
    """

    clips: ClipSet                  # the held-out clips evaluated (at most eval.max_clips)
    baselines: dict[str, dict[str, Baseline]]   # per objective, fitted on training clips
    weights: dict[str, float]       # per objective: its weight in the trained loss
    lambda_coarse: float
    batch_size: int
    device: torch.device
    dtype: torch.dtype

    @classmethod
    def build(cls, split, config, device: torch.device, dtype: torch.dtype, model) -> "Evaluator | None":
        """``None`` when the run holds out no clips."""
        if not len(split.val):
            return None
        e = config.eval
        baselines = fit_baselines(model, split.train.first(e.baseline_clips), e.batch_size)
        return cls(split.val.spread(e.max_clips), baselines, {n: t.weight for n, t in config.objectives.items()},
                   config.model.lambda_coarse, e.batch_size, device, dtype)

    def __call__(self, model: torch.nn.Module, step: int) -> MetricsRow:
        """One ``metrics.jsonl`` row (``"split": "val"``); ``model`` is put back in training mode.

        ``loss_fine``/``loss_coarse`` are weighted over the objectives as the training rows' are;
        ``<objective>_coarse``/``_fine``/``_best_baseline``/``_skill`` and ``baseline_<name>`` per objective; ``skill`` and
        ``improvement`` of the primary objective (``next_latent`` when trained).
        """
        started = time.perf_counter()
        try:
            losses = clip_losses(model, self.clips, self.baselines, ("coarse", "fine"), self.batch_size,
                                 self.device, self.dtype)
        finally:
            model.train()
        row: MetricsRow = {"step": step, "split": "val", "clips": len(self.clips)}
        per_objective: dict[str, dict[str, Any]] = {}
        for name, table in losses.items():
            means = {key: float(values.mean(dim=1).double().mean()) for key, values in table.items()}
            best = min((means[k] for k in self.baselines[name]), default=None)
            per_objective[name] = {"coarse": means["coarse"], "fine": means["fine"], "best_baseline": best,
                                   "skill": 1 - means["fine"] / best if best else None}
            row.update({f"baseline_{k}": means[k] for k in self.baselines[name]})
        fine = sum(self.weights[n] * v["fine"] for n, v in per_objective.items())
        coarse = sum(self.weights[n] * v["coarse"] for n, v in per_objective.items())
        primary = per_objective[primary_objective(per_objective)]
        row.update({"loss_fine": fine, "loss_coarse": coarse, "ratio": coarse / fine if fine > 0 else None,
                    "improvement": (primary["coarse"] - primary["fine"]) / primary["coarse"]
                    if primary["coarse"] > 0 and not getattr(model, "single_pass", False) else None,
                    "skill": primary["skill"]})
        for name, values in per_objective.items():
            row.update({f"{name}_{key}": value for key, value in values.items()})
        row["eval_s"] = time.perf_counter() - started
        return row
