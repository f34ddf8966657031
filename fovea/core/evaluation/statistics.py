"""The figures of ``eval.json`` from per-clip losses: means with 95 % bootstrap intervals over clips,
``skill = 1 - loss_fine / best baseline``, ``improvement = (coarse - fine) / coarse`` (SPEC.md's metric)
and ``autoregressive_gap = (autoregressive - fine) / fine`` (the train/inference gap)."""

from __future__ import annotations

from typing import Any, Iterable

import torch

from fovea.core.evaluation.losses import MODES

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0


def bootstrap_draws(num_clips: int, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> torch.Tensor:
    """Clip indices resampled with replacement, (samples, num_clips), from a private seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_clips, (samples, num_clips), generator=generator)


def interval(values: torch.Tensor) -> list[float]:
    """The central 95 % of bootstrap replicates (samples,) -> [low, high]."""
    low, high = torch.quantile(values.double(), torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return [low, high]


def mean_ci(per_clip: torch.Tensor, draws: torch.Tensor) -> list[float]:
    """95 % percentile-bootstrap interval of the mean of ``per_clip`` (N,) over the resampled clips."""
    return interval(per_clip.double()[draws].mean(dim=1))


def relative_change(reference: torch.Tensor, other: torch.Tensor, draws: torch.Tensor) -> dict[str, Any]:
    """``(mean(reference) - mean(other)) / mean(reference)`` with a paired bootstrap interval (same clips)."""
    ref, oth = reference.double(), other.double()
    value = float((ref.mean() - oth.mean()) / ref.mean())
    replicates = (ref[draws].mean(1) - oth[draws].mean(1)) / ref[draws].mean(1)
    return {"value": value, "ci95": interval(replicates)}


def summarize_objective(losses: dict[str, torch.Tensor]) -> dict[str, Any]:
    """One objective's figures from its losses (N, K): means, intervals, skill, improvement, gap.

    Keys that are neither a mode nor ``per_frame`` detail are baselines; ``skill`` is measured against the
    best of them (None without baselines).
    """
    per_clip = {name: values.mean(dim=1) for name, values in losses.items()}  # (N,) each
    num_clips = len(next(iter(per_clip.values())))
    draws = bootstrap_draws(num_clips)
    baselines = [name for name in losses if name not in MODES]

    def entry(name: str) -> dict[str, Any]:
        return {"loss": float(per_clip[name].double().mean()), "ci95": mean_ci(per_clip[name], draws),
                "per_frame": losses[name].double().mean(dim=0).tolist()}

    result: dict[str, Any] = {
        "clips": num_clips,
        "modes": {name: entry(name) for name in MODES if name in losses},
        "baselines": {name: entry(name) for name in baselines},
        "bootstrap": {"samples": BOOTSTRAP_SAMPLES, "seed": BOOTSTRAP_SEED, "unit": "clip"},
    }
    best = min(baselines, key=lambda name: result["baselines"][name]["loss"]) if baselines else None
    result["best_baseline"] = best
    if "fine" in losses and best is not None:   # skill of the fine pass against the best baseline, paired over clips
        change = relative_change(per_clip[best], per_clip["fine"], draws)
        result["skill"], result["skill_ci95"] = change["value"], change["ci95"]
    else:
        result["skill"] = result["skill_ci95"] = None
    result["improvement"] = (relative_change(per_clip["coarse"], per_clip["fine"], draws)
                             if "coarse" in losses and "fine" in losses else None)
    if "autoregressive" in losses and "fine" in losses:   # (autoregressive - fine) / fine: minus the change
        gap = relative_change(per_clip["fine"], per_clip["autoregressive"], draws)
        result["autoregressive_gap"] = {"value": -gap["value"], "ci95": [-gap["ci95"][1], -gap["ci95"][0]],
                                        "absolute": result["modes"]["autoregressive"]["loss"]
                                        - result["modes"]["fine"]["loss"]}
    else:
        result["autoregressive_gap"] = None
    return result


def primary_objective(objectives: Iterable[str]) -> str:
    """The objective whose figures ``eval.json`` also holds at its top level: ``next_latent`` if trained, else the first."""
    names = list(objectives)
    return "next_latent" if "next_latent" in names else names[0]


def summarize_objectives(losses: dict[str, dict[str, torch.Tensor]]) -> dict[str, Any]:
    """``eval.json``'s figures: every objective under ``objectives``, the primary one's also at the top level."""
    per_objective = {name: summarize_objective(table) for name, table in losses.items()}
    primary = primary_objective(per_objective)
    return {**per_objective[primary], "primary": primary, "objectives": per_objective}
