"""Section 7, resources: data-wait share, GPU utilisation and peak memory from ``profile.json`` (written by
``fovea profile``), else the data-wait share of ``metrics.jsonl``; the throughput, recorded."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fovea.audit.checks.components import architecture_mismatch, architecture_of, compared_components
from fovea.audit.findings import Check, fmt, pct

if TYPE_CHECKING:
    from fovea.audit.evidence import Evidence


def check_resources(ev: Evidence) -> list[Check]:
    """Data-wait share (profile.json, else metrics.jsonl), GPU utilisation and peak memory (profile.json)."""
    spec, profile = ev.spec.resources, ev.profile
    checks: list[Check] = []
    if profile is None:
        checks.append(Check(
            "resources.profile", "Profile of the training step", "resources", "info",
            expected="profile.json with GPU utilisation, data-wait share and peak memory",
            observed="no profile.json in the run directory",
            reason="GPU utilisation and peak memory are not in a run's files; the data-wait share below comes "
                   "from metrics.jsonl",
            recommendation="measure them with `fovea profile --steps 20` while this run is runs/latest (it profiles "
                           "that run's config and writes profile.json beside its metrics), then audit again"))

    wait, wait_source = (profile.data_wait_share, "profile.json (data_wait_share)") if profile else (None, "")
    if wait is None:
        shares = [m["data_wait_share"] for m in ev.metrics if isinstance(m.get("data_wait_share"), (int, float))]
        if shares:
            wait, wait_source = sum(shares) / len(shares), f"mean data_wait_share of {len(shares)} metrics.jsonl lines"
    if wait is not None:
        ok = wait <= spec.data_wait_share_max
        checks.append(Check(
            "resources.data_wait", "Data loading keeps up", "resources", "pass" if ok else "warn",
            expected=f"data-wait share of step time ≤ {pct(spec.data_wait_share_max)}",
            observed=f"{pct(wait)} of step time waiting for data",
            evidence=wait_source,
            reason="" if ok else "SPEC \"Failure modes\": data loading on the main process starves the GPU "
                                 "(GPU 2 %, CPU 400 %)",
            recommendation="" if ok else "precompute the clip cache (`fovea precompute`), raise data.num_workers and "
                                         "data.prefetch", measurements={"data_wait_share": wait}))

    util = profile.gpu_util_mean if profile else None
    if util is not None:
        fraction = util / 100.0
        status = "fail" if fraction < spec.gpu_util_fail_below else "warn" if fraction < spec.gpu_util_min else "pass"
        checks.append(Check(
            "resources.gpu_util", "GPU utilisation", "resources", status,
            expected=f"mean GPU utilisation ≥ {pct(spec.gpu_util_min)}", observed=f"{util:.1f} % on {profile.device}",
            evidence="profile.json (gpu_util_mean)",
            reason="" if status == "pass" else "the GPU waits most of the time: the step is bound by data loading or "
                                               "by Python and kernel-launch overhead",
            recommendation="" if status == "pass" else "see resources.data_wait and the profile's diagnosis "
                                                       "(profile.md); a larger training.batch_size if data keeps up",
            label="ISSUE" if status == "fail" else "", measurements={"gpu_util_percent": util}))
    elif profile is not None:
        checks.append(Check("resources.gpu_util", "GPU utilisation", "resources", "info",
                            expected=f"≥ {pct(spec.gpu_util_min)}", observed=f"not measured: profiled on {profile.device}",
                            reason="the profile ran without a GPU",
                            recommendation="profile on the GPU machine that trains the spec's runs"))

    peak = profile.peak_memory_gb if profile else None
    if peak is not None:
        low, high = spec.memory_gb
        spec_sizes = not any(architecture_mismatch(architecture_of(ev, c), c) for _, c in compared_components(ev))
        batch, model_gb = profile.batch.batch_size, profile.memory.model.total_gb
        comparable = spec_sizes and batch == spec.memory_batch_size
        inside = low <= peak <= high
        status = "pass" if inside else "warn" if comparable else "info"
        caveat = "" if comparable else (f"; the estimate is for the spec's models at batch {spec.memory_batch_size}, "
                                        f"this profile has " + ("other model sizes and " if not spec_sizes else "")
                                        + f"batch {batch}")
        model_note = f"; the profiler's memory model predicts {model_gb:.1f} GB"
        checks.append(Check(
            "resources.peak_memory", "Peak GPU memory against the spec's estimate", "resources", status,
            expected=f"{fmt(low)}–{fmt(high)} GB at batch {spec.memory_batch_size} (SPEC estimate)",
            observed=f"{peak:.1f} GB peak allocated at batch {batch}{model_note}{caveat}",
            evidence="profile.json (peak_memory_gb, memory.model)",
            reason="" if inside else "SPEC: a run that uses far less or far more than the estimate deserves an "
                                     "explanation (the estimate, a simplified mechanism, checkpointing, the batch)",
            recommendation="" if inside else "compare with the profiler's memory model (profile.md); use headroom "
                                             "for a larger batch",
            label="" if inside else "UNEXPECTED", measurements={"peak_memory_gb": peak, "batch_size": batch,
                                                                "memory_model_gb": model_gb}))

    last = ev.metrics[-1]
    devices = ", ".join((ev.env or {}).get("devices") or []) or "unknown device"
    if isinstance(last.get("samples_per_s"), (int, float)):
        checks.append(Check(
            "resources.throughput", "Training throughput", "resources", "info",
            expected="recorded for comparison",
            observed=f"{last['samples_per_s']:.1f} clips/s at step {last['step']} on {devices}",
            evidence="last metrics.jsonl line; env.json"))
    return checks
