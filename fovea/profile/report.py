"""The profile's figures from its measurements (``build_report``), and what to change (``diagnose``)."""

from __future__ import annotations

import statistics
from typing import Any

import torch

from fovea.core.config import FoveaConfig
from fovea.core.profile_report import PHASES, Finding, ProfileReport, RankFigures
from fovea.profile.resources import GB, bf16_peak_flops, memory_model

DATA_BOUND_SHARE = 0.20   # more of the step than this waiting for data: the loader is the bottleneck
LOW_GPU_UTIL = 50.0       # percent
IMBALANCE = 0.10          # a rank this much slower than the fastest (median step) holds the others back
OVERHEAD = 0.10           # more of the step than this outside the timed phases: the loop's own overhead
SPEC_ESTIMATE_GB = (15.0, 18.0)


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {"median": statistics.median(ordered), "p90": p90, "mean": statistics.mean(ordered)}


def build_report(config: FoveaConfig, model: torch.nn.Module, device: torch.device, per_step: list[dict[str, float]],
                 resources: dict[str, Any], measured: dict[str, float] | None, flops_per_step: float,
                 activations: dict[str, float], largest_batch: int | None, warmup: int, world_size: int = 1,
                 shards: int = 1) -> ProfileReport:
    """One process's figures, without a diagnosis: ``measured`` is the GPU memory of the timed steps
    (``time_steps``), ``activations`` the bytes saved for backward by part (``measure_micro_batch``);
    throughput counts the global batch (all ``world_size`` processes)."""
    step = stats([s["step_s"] for s in per_step])
    total = sum(s["step_s"] for s in per_step)
    share = {p: sum(s[p] for s in per_step) / total for p in PHASES}
    clips = config.global_batch_size(world_size)
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak = bf16_peak_flops(gpu_name) if gpu_name else None
    achieved = flops_per_step / step["median"]
    return ProfileReport(
        config=config.run.name, device=gpu_name or "cpu", steps=len(per_step), warmup=warmup,
        batch={"batch_size": config.training.batch_size, "grad_accum": config.training.grad_accum,
               "world_size": world_size, "global_batch": clips,
               "num_frames": config.data.num_frames, "frame_size": config.data.frame_size,
               "dtype": config.precision.dtype, "num_workers": config.data.num_workers},
        execution=execution_settings(config),
        step_s=step,
        phases_s={p: stats([s[p] for s in per_step]) for p in PHASES},
        phase_share=share,
        unaccounted_share=1.0 - sum(share.values()),
        data_wait_share=share["data_wait"],
        samples_per_s=clips / step["median"],
        frames_per_s=clips * config.data.num_frames / step["median"],
        flops={"per_step": flops_per_step, "per_second": achieved,
               "bf16_peak_per_second": peak, "mfu": achieved / peak if peak else None},
        memory={"model": memory_model(config, model, shards), "sharded_over": shards,
                "spec_estimate_gb": SPEC_ESTIMATE_GB, "activations_saved_gb": sum(activations.values()) / GB,
                "measured": measured,
                "activations_saved_by_part_gb": {part: size / GB for part, size in activations.items()},
                "largest_batch_that_fits": largest_batch},
        resources=resources,
        gpu_util_mean=_gpu_util(resources),
        peak_memory_gb=measured["peak_allocated_gb"] if measured else None,
        per_step=per_step,
        world_size=world_size,
    )


def execution_settings(config: FoveaConfig) -> dict[str, Any]:
    """How the step ran: ``torch.compile`` (and its backend) and activation checkpointing per component."""
    from fovea.core.compile import checkpointed_parts

    return {"compile": config.training.compile,
            "compile_backend": config.training.compile_backend if config.training.compile else None,
            "activation_checkpointing": checkpointed_parts(config)}


def _gpu_util(resources: dict[str, Any]) -> float | None:
    utils = [d["util_percent_mean"] for d in resources["gpu"] or [] if d["util_percent_mean"] is not None]
    return max(utils) if utils else None


def rank_figures(report: ProfileReport, rank: int) -> RankFigures:
    """The headline figures of one rank's profile, gathered on rank 0 under torchrun."""
    return RankFigures(rank=rank, device=report.device, step_s_median=report.step_s.median,
                       step_s_p90=report.step_s.p90, data_wait_share=report.data_wait_share,
                       phases_median_s={p: report.phases_s[p].median for p in PHASES},
                       peak_memory_gb=report.peak_memory_gb, gpu_util_mean=report.gpu_util_mean)


def diagnose(config: FoveaConfig, report: ProfileReport) -> list[Finding]:
    """Findings with what to change, most important first."""
    ranks = report.ranks or []
    wait = max([report.data_wait_share] + [r.data_wait_share for r in ranks])   # the worst rank's
    findings = [_data(config, wait)]
    util = report.gpu_util_mean
    if util is None:
        findings.append(Finding(kind="gpu", severity="info", message=(
            "no GPU: utilisation, peak GPU memory and MFU are not measured on this machine.")))
    elif util < LOW_GPU_UTIL and wait <= DATA_BOUND_SHARE:
        findings.append(Finding(kind="cpu-bound", severity="warn", message=(
            f"GPU {util:.0f}% busy while data arrives in time: the step is bound by Python and kernel-launch "
            f"overhead. Raise training.batch_size (with fewer grad_accum steps for the same effective batch).")))
    findings.append(_memory(config, report))
    if ranks:
        findings.append(_ranks(ranks, report.slowest_rank))
    if report.unaccounted_share > OVERHEAD:
        findings.append(Finding(kind="overhead", severity="warn", message=(
            f"{report.unaccounted_share:.0%} of step time is outside the timed phases: loop overhead.")))
    return findings


def _data(config: FoveaConfig, wait: float) -> Finding:
    if wait > DATA_BOUND_SHARE:
        return Finding(kind="data-bound", severity="warn", message=(
            f"data-bound: {wait:.0%} of step time is spent waiting for data (threshold {DATA_BOUND_SHARE:.0%}). "
            f"Raise data.num_workers (now {config.data.num_workers}) and data.prefetch (now "
            f"{config.data.prefetch}); keep the clip cache on a local disk (`fovea precompute` builds it once)."))
    return Finding(kind="data", severity="ok", message=f"not data-bound: {wait:.1%} of step time waiting for data.")


def _memory(config: FoveaConfig, report: ProfileReport) -> Finding:
    measured, model, batch = report.memory.measured, report.memory.model, config.training.batch_size
    if not measured:
        return Finding(kind="memory", severity="info", message=(
            f"memory model: {model.total_gb:.2f} GB for training at batch {batch} (weights "
            f"{model.parameters_gb:.2f}, gradients {model.gradients_gb:.2f}, AdamW {model.optimizer_gb:.2f}, "
            f"activations {model.activations_gb:.2f}); no GPU to compare with."))
    largest = report.memory.largest_batch_that_fits
    room = (largest or batch) - batch >= 1
    advice = (f"A micro-batch of {largest} clips ran forward and backward in the probe: raise training.batch_size "
              f"(now {batch}) and lower grad_accum to keep the effective batch." if room
              else "No room for a larger micro-batch.")
    return Finding(kind="memory", severity="warn" if room else "info", message=(
        f"peak {measured.peak_allocated_gb:.1f} GB allocated ({measured.peak_reserved_gb:.1f} GB reserved) "
        f"of {measured.device_total_gb:.0f} GB; the memory model predicts {model.total_gb:.1f} GB. " + advice))


def _ranks(ranks: list[RankFigures], slowest_rank: int | None) -> Finding:
    slowest = next(r for r in ranks if r.rank == slowest_rank)
    fastest = min(r.step_s_median for r in ranks)
    gap = slowest.step_s_median / fastest - 1
    if gap > IMBALANCE:
        cause = ("it waits for data: raise data.num_workers on its node" if slowest.data_wait_share > DATA_BOUND_SHARE
                 else "not for data: check its device (clocks, other processes) and its node's load")
        return Finding(kind="imbalance", severity="warn", message=(
            f"rank {slowest.rank} is the slowest, {gap:.0%} behind the fastest (median step "
            f"{1000 * slowest.step_s_median:.1f} ms vs {1000 * fastest:.1f} ms), and every rank waits for "
            f"it at each gradient reduction; {cause}."))
    return Finding(kind="ranks", severity="ok", message=(
        f"{len(ranks)} ranks within {gap:.0%} of each other (median step); the slowest is rank "
        f"{slowest.rank} at {1000 * slowest.step_s_median:.1f} ms."))
