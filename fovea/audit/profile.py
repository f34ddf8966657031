"""``fovea profile``: where the step time and the memory go, measured on the real training step.

K warm-up steps, then N measured steps of ``fovea.core.train.train_step`` (same model, loader,
optimizer and precision as ``fovea run``), with the device synchronised at every phase boundary so GPU
time lands in the phase that queued it. The model's parts are timed from outside through the encoder
contract (``encode``/``attend``) and module hooks (LLM, head), so any plugin is profiled the same way.
Writes ``profile.json`` and ``profile.md`` into the run directory, where ``fovea audit`` reads them.

Under torchrun every rank profiles its own share of the distributed step; rank 0 writes its report
with every rank's headline figures (``ranks``) and the slowest rank, which sets the pace of all.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Iterator

import torch

from fovea.audit.resources import GB, ResourceSampler, bf16_peak_flops, memory_model
from fovea.core.config import FoveaConfig
from fovea.core.rundir import RunDir
from fovea.core.timing import PhaseTimer

# What one step is made of; they add up to the step time up to the loop's own overhead ("unaccounted").
PHASES = ("data_wait", "encode", "attend_pass1", "attend_pass2", "llm", "head", "forward_other",
          "backward", "optimizer")
DATA_BOUND_SHARE = 0.20   # more of the step than this waiting for data: the loader is the bottleneck
LOW_GPU_UTIL = 50.0       # percent
IMBALANCE = 0.10          # a rank this much slower than the fastest (median step) holds the others back


@contextlib.contextmanager
def instrument(model: torch.nn.Module, timer: PhaseTimer) -> Iterator[None]:
    """Time the model's parts inside ``timer("forward")``: encode, the two attends, LLM, head."""
    from fovea.core.instrument import wrap_encoder

    calls = {"attend": 0}

    def timed_encode(encode, frames):
        calls["attend"] = 0                      # a new forward: the next attend is pass 1
        with timer("encode"):
            return encode(frames)

    def timed_attend(attend, queries, cache, *args, **kwargs):
        calls["attend"] += 1
        with timer(f"attend_pass{min(calls['attend'], 2)}"):
            return attend(queries, cache, *args, **kwargs)

    handles = []
    for name, module in (("llm", model.llm), ("head", model.head)):
        handles.append(module.register_forward_pre_hook(lambda mod, args, _n=name: timer.start(_n)))
        handles.append(module.register_forward_hook(lambda mod, args, out, _n=name: timer.stop(_n)))
    try:
        with wrap_encoder(model.encoder, encode=timed_encode, attend=timed_attend):
            yield
    finally:
        for handle in handles:
            handle.remove()


class PartTracker:
    """Which part of the model is running now, told by ``instrument`` as a ``PhaseTimer`` would be (a stack of
    phases): ``part`` is ``encoder`` (encode, both attends), ``llm``, ``head``, or ``other``."""

    def __init__(self):
        self.stack: list[str] = []

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        self.start(phase)
        try:
            yield
        finally:
            self.stop(phase)

    def start(self, phase: str) -> None:
        self.stack.append("encoder" if phase == "encode" or phase.startswith("attend") else phase)

    def stop(self, phase: str) -> None:
        self.stack.pop()

    @property
    def part(self) -> str:
        return self.stack[-1] if self.stack else "other"


ACTIVATION_PARTS = ("encoder", "llm", "head", "other")


def measure_micro_batch(state, batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
    """FLOPs of one micro-batch's forward and backward (what runs: frozen parts get no weight gradients),
    and the bytes of the tensors autograd saved for backward — the activations, measured on any device — by
    the part that saved them (``ACTIVATION_PARTS``). Under activation checkpointing a block saves only its
    inputs (what ``torch.utils.checkpoint`` keeps to run it again), so this shows what checkpointing saves.
    Compiled parts run eagerly here (a compiled graph hides what it saves from these hooks)."""
    from torch.utils.flop_counter import FlopCounterMode

    from fovea.core.compile import eager

    saved: dict[int, tuple[int, str]] = {}
    parts = PartTracker()

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        saved.setdefault(storage.data_ptr(), (storage.nbytes(), parts.part))   # a storage saved twice is held once
        return tensor

    weights = {_storage(p) for p in state.module.parameters()}   # FSDP2: the local shards

    def note_weights(module: torch.nn.Module, args) -> None:   # FSDP2's gathered copies, in use now
        weights.update(_storage(p) for p in module.parameters(recurse=False))

    frames, latents = batch["frames"].to(state.device), batch["latents"].to(state.device)
    targets = {k: v.to(state.device) for k, v in state.module.prepare(batch).items()}
    hooks = [module.register_forward_pre_hook(note_weights) for module in state.module.modules()]
    try:
        with eager(), instrument(state.module, parts), FlopCounterMode(display=False) as counter:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
                    torch.autocast(state.device.type, dtype=state.dtype, enabled=state.dtype != torch.float32):
                out = state.model(frames, latents, targets)
            out.loss.backward()
    finally:
        for hook in hooks:
            hook.remove()
    state.model.zero_grad(set_to_none=True)
    by_part = dict.fromkeys(ACTIVATION_PARTS, 0.0)
    for ptr, (size, part) in saved.items():
        if ptr not in weights:                        # weights are not activations
            by_part[part] += size
    return float(counter.get_total_flops()), by_part


def _storage(tensor: torch.Tensor) -> int:
    from torch.distributed.tensor import DTensor

    return (tensor.to_local() if isinstance(tensor, DTensor) else tensor).untyped_storage().data_ptr()


def probe_largest_batch(state, cache, config: FoveaConfig) -> int | None:
    """The largest micro-batch that runs forward and backward without running out of GPU memory:
    the memory model's guess first, then halving towards the configured batch on an OOM. Compiled parts run
    eagerly here (each new size would compile again)."""
    from fovea.core.compile import eager

    with eager():
        return _probe_largest_batch(state, cache, config)


def _probe_largest_batch(state, cache, config: FoveaConfig) -> int | None:
    device = state.device
    free = torch.cuda.mem_get_info(device)[0] / GB
    per_clip = memory_model(config, state.module)["activations_per_clip_gb"]
    if not per_clip:
        return None
    size = min(len(cache), config.training.batch_size + int(0.9 * free / per_clip))
    while size > config.training.batch_size:
        try:
            batch = cache.read(list(range(size)))
            with torch.autocast(device.type, dtype=state.dtype, enabled=state.dtype != torch.float32):
                out = state.model(batch["frames"].to(device), batch["latents"].to(device))
            out.loss.backward()
            return size
        except torch.cuda.OutOfMemoryError:
            size //= 2
        finally:
            state.model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    return config.training.batch_size


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {"median": statistics.median(ordered), "p90": p90, "mean": statistics.mean(ordered)}


def profile(config: FoveaConfig, run: RunDir | None, steps: int, warmup: int) -> dict[str, Any]:
    """Profile ``steps`` training steps after ``warmup``; write profile.json/.md into ``run`` (None: a new
    run directory, made by rank 0 under torchrun); return the figures (rank 0's, with every rank's)."""
    from fovea.core import distributed
    from fovea.core.devices import resolve_device

    device = resolve_device(config.run.device)
    with distributed.process_group(config.distributed.backend, device) as world:
        if run is None:
            run = distributed.from_main(lambda: RunDir.create(config))
        report = _profile_steps(config, device, world, steps, warmup)
        ranks = distributed.gather(rank_figures(report, world.rank))
        report["world_size"] = world.world_size
        if world.world_size > 1:
            report["ranks"] = ranks
            report["slowest_rank"] = max(ranks, key=lambda r: r["step_s_median"])["rank"]
        report["diagnosis"] = diagnose(config, report)
        distributed.on_main(lambda: write_profile(run, report))
    report["run"] = str(run.path)
    return report


def _profile_steps(config: FoveaConfig, device: torch.device, world, steps: int, warmup: int) -> dict[str, Any]:
    from fovea.core import distributed
    from fovea.core.cache import build_cache
    from fovea.core.loader import build_loader, shutdown
    from fovea.core.model import build_model
    from fovea.core.train import prepare_training, seed_everything, train_step

    seed_everything(config.run.seed + world.rank)
    model = distributed.main_first(lambda: build_model(config)).to(device).train()
    cache = distributed.main_first(lambda: build_cache(config, device, progress=config.run.progress and world.is_main))
    loader = build_loader(cache, config, device, rank=world.rank, world_size=world.world_size)
    state = prepare_training(config, model, device)
    timer = PhaseTimer(device, sync=True)
    batches = iter(loader)
    per_step: list[dict[str, float]] = []
    try:
        with instrument(model, timer):
            for _ in range(warmup):
                train_step(state, batches, timer)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            timer.pop()
            sampler = ResourceSampler(device).start()
            for _ in range(steps):
                start = time.perf_counter()
                train_step(state, batches, timer)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                step_s = time.perf_counter() - start
                phases = timer.pop()
                phases["data_wait"] = phases.pop("data", 0.0)
                phases["forward_other"] = phases.pop("forward", 0.0) - sum(
                    phases.get(p, 0.0) for p in ("encode", "attend_pass1", "attend_pass2", "llm", "head"))
                per_step.append({"step_s": step_s, **{p: phases.get(p, 0.0) for p in PHASES}})
            sampler.stop()
        flops, activations = measure_micro_batch(state, next(batches))
        # The OOM probe would leave ranks in different collectives; profile one process to get it.
        probe = device.type == "cuda" and world.world_size == 1
        largest = probe_largest_batch(state, cache, config) if probe else None
    finally:
        shutdown(loader)

    shards = world.world_size if distributed.is_sharded(state.model) else 1
    report = summarize(config, model, device, per_step, sampler.summary(), flops * config.training.grad_accum,
                       sum(activations.values()), steps, warmup, world.world_size, shards)
    report["memory"]["activations_saved_by_part_gb"] = {part: size / GB for part, size in activations.items()}
    report["memory"]["largest_batch_that_fits"] = largest
    return report


def rank_figures(report: dict[str, Any], rank: int) -> dict[str, Any]:
    """The headline figures of one rank's profile, gathered on rank 0 under torchrun."""
    return {"rank": rank, "device": report["device"], "step_s_median": report["step_s"]["median"],
            "step_s_p90": report["step_s"]["p90"], "data_wait_share": report["data_wait_share"],
            "phases_median_s": {p: report["phases_s"][p]["median"] for p in PHASES},
            "peak_memory_gb": report["peak_memory_gb"], "gpu_util_mean": report["gpu_util_mean"]}


def summarize(config: FoveaConfig, model, device: torch.device, per_step: list[dict[str, float]],
              resources: dict[str, Any], flops_per_step: float, activation_bytes: float, steps: int,
              warmup: int, world_size: int = 1, shards: int = 1) -> dict[str, Any]:
    """One process's figures; throughput counts the global batch (all ``world_size`` processes)."""
    step = stats([s["step_s"] for s in per_step])
    phases = {p: stats([s[p] for s in per_step]) for p in PHASES}
    total = sum(s["step_s"] for s in per_step)
    share = {p: sum(s[p] for s in per_step) / total for p in PHASES}
    unaccounted = 1.0 - sum(share.values())
    clips = config.global_batch_size(world_size)
    memory = {"model": memory_model(config, model, shards), "sharded_over": shards, "spec_estimate_gb": [15.0, 18.0],
              "activations_saved_gb": activation_bytes / GB, "measured": None}
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    if device.type == "cuda":
        memory["measured"] = {"peak_allocated_gb": torch.cuda.max_memory_allocated(device) / GB,
                              "peak_reserved_gb": torch.cuda.max_memory_reserved(device) / GB,
                              "device_total_gb": torch.cuda.get_device_properties(device).total_memory / GB}
    peak = bf16_peak_flops(gpu_name) if gpu_name else None
    achieved = flops_per_step / step["median"]
    report = {
        "config": config.run.name, "device": gpu_name or "cpu", "steps": steps, "warmup": warmup,
        "batch": {"batch_size": config.training.batch_size, "grad_accum": config.training.grad_accum,
                  "world_size": world_size, "global_batch": clips,
                  "num_frames": config.data.num_frames, "frame_size": config.data.frame_size,
                  "dtype": config.precision.dtype, "num_workers": config.data.num_workers},
        "execution": execution_settings(config),
        "step_s": step,
        "phases_s": phases,
        "phase_share": share,
        "unaccounted_share": unaccounted,
        "data_wait_share": share["data_wait"],
        "samples_per_s": clips / step["median"],
        "frames_per_s": clips * config.data.num_frames / step["median"],
        "flops": {"per_step": flops_per_step, "per_second": achieved,
                  "bf16_peak_per_second": peak, "mfu": achieved / peak if peak else None},
        "memory": memory,
        "resources": resources,
        "gpu_util_mean": _gpu_util(resources),
        "peak_memory_gb": memory["measured"]["peak_allocated_gb"] if memory["measured"] else None,
        "per_step": per_step,
    }
    return report


def execution_settings(config: FoveaConfig) -> dict[str, Any]:
    """How the step ran: ``torch.compile`` (and its backend) and activation checkpointing per component."""
    from fovea.core.compile import checkpointed_parts

    return {"compile": config.training.compile,
            "compile_backend": config.training.compile_backend if config.training.compile else None,
            "activation_checkpointing": checkpointed_parts(config)}


def _gpu_util(resources: dict[str, Any]) -> float | None:
    utils = [d["util_percent_mean"] for d in resources["gpu"] or [] if d["util_percent_mean"] is not None]
    return max(utils) if utils else None


def diagnose(config: FoveaConfig, report: dict[str, Any]) -> list[dict[str, str]]:
    """Findings with what to change, most important first."""
    findings = []
    ranks = report.get("ranks") or []
    wait = max([report["data_wait_share"]] + [r["data_wait_share"] for r in ranks])   # the worst rank's
    if wait > DATA_BOUND_SHARE:
        findings.append({"kind": "data-bound", "severity": "warn", "message": (
            f"data-bound: {wait:.0%} of step time is spent waiting for data (threshold {DATA_BOUND_SHARE:.0%}). "
            f"Raise data.num_workers (now {config.data.num_workers}) and data.prefetch (now "
            f"{config.data.prefetch}); keep the clip cache on a local disk (`fovea precompute` builds it once).")})
    else:
        findings.append({"kind": "data", "severity": "ok", "message": (
            f"not data-bound: {wait:.1%} of step time waiting for data.")})

    util = report["gpu_util_mean"]
    if util is None:
        findings.append({"kind": "gpu", "severity": "info", "message": (
            "no GPU: utilisation, peak GPU memory and MFU are not measured on this machine.")})
    elif util < LOW_GPU_UTIL and wait <= DATA_BOUND_SHARE:
        findings.append({"kind": "cpu-bound", "severity": "warn", "message": (
            f"GPU {util:.0f}% busy while data arrives in time: the step is bound by Python and kernel-launch "
            f"overhead. Raise training.batch_size (with fewer grad_accum steps for the same effective batch).")})

    measured, model = report["memory"]["measured"], report["memory"]["model"]
    if measured:
        largest = report["memory"].get("largest_batch_that_fits")
        extra = (largest or config.training.batch_size) - config.training.batch_size
        findings.append({"kind": "memory", "severity": "warn" if extra >= 1 else "info", "message": (
            f"peak {measured['peak_allocated_gb']:.1f} GB allocated ({measured['peak_reserved_gb']:.1f} GB reserved) "
            f"of {measured['device_total_gb']:.0f} GB; the memory model predicts {model['total_gb']:.1f} GB. "
            + (f"A micro-batch of {largest} clips ran forward and backward in the probe: raise "
               f"training.batch_size (now {config.training.batch_size}) and lower grad_accum to keep the "
               f"effective batch." if extra >= 1 else "No room for a larger micro-batch."))})
    else:
        findings.append({"kind": "memory", "severity": "info", "message": (
            f"memory model: {model['total_gb']:.2f} GB for training at batch {config.training.batch_size} "
            f"(weights {model['parameters_gb']:.2f}, gradients {model['gradients_gb']:.2f}, AdamW "
            f"{model['optimizer_gb']:.2f}, activations {model['activations_gb']:.2f}); no GPU to compare with.")})

    if ranks:
        slowest = next(r for r in ranks if r["rank"] == report["slowest_rank"])
        fastest = min(r["step_s_median"] for r in ranks)
        gap = slowest["step_s_median"] / fastest - 1
        if gap > IMBALANCE:
            data_bound = slowest["data_wait_share"] > DATA_BOUND_SHARE
            cause = ("it waits for data: raise data.num_workers on its node" if data_bound
                     else "not for data: check its device (clocks, other processes) and its node's load")
            findings.append({"kind": "imbalance", "severity": "warn", "message": (
                f"rank {slowest['rank']} is the slowest, {gap:.0%} behind the fastest (median step "
                f"{1000 * slowest['step_s_median']:.1f} ms vs {1000 * fastest:.1f} ms), and every rank waits for "
                f"it at each gradient reduction; {cause}.")})
        else:
            findings.append({"kind": "ranks", "severity": "ok", "message": (
                f"{len(ranks)} ranks within {gap:.0%} of each other (median step); the slowest is rank "
                f"{slowest['rank']} at {1000 * slowest['step_s_median']:.1f} ms.")})

    if report["unaccounted_share"] > 0.10:
        findings.append({"kind": "overhead", "severity": "warn", "message": (
            f"{report['unaccounted_share']:.0%} of step time is outside the timed phases: loop overhead.")})
    return findings


def profile_target(config_path, overrides=()) -> tuple[FoveaConfig, RunDir | None]:
    """The config to profile and the run directory to write into.

    With a config: None, a new run directory of its own that ``profile`` makes (``latest`` keeps
    naming the last training run). Without: the config of the newest run (``RunDir.resolve("latest")``),
    and the profile goes into that run, beside its metrics.
    """
    from fovea.core.config import load_config
    from fovea.core.errors import FoveaError
    from fovea.core.rundir import NoRunError

    if config_path is None:
        try:
            run = RunDir.resolve("latest", None, overrides)   # under run.output_dir when --set names one
        except NoRunError as exc:
            raise FoveaError(f"no CONFIG given and no {exc.link} to take one from: pass a config, e.g. "
                             f"`fovea profile configs/quickstart.toml --steps 20`") from None
        return load_config(run.config_file, overrides), run
    config = load_config(config_path, overrides)
    config.run.name = f"{config.run.name}-profile"
    return config, None


def render_table(report: dict[str, Any]) -> None:
    """The compact terminal view: phases with median, p90 and share, then the headline figures."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"fovea profile: {report['config']} on {report['device']}")
    for column in ("phase", "median ms", "p90 ms", "mean ms", "share of time"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for phase in PHASES:
        s = report["phases_s"][phase]
        table.add_row(phase, *(f"{1000 * s[k]:.1f}" for k in ("median", "p90", "mean")),
                      f"{report['phase_share'][phase]:.1%}")
    step = report["step_s"]
    table.add_row("step", *(f"{1000 * step[k]:.1f}" for k in ("median", "p90", "mean")),
                  f"unaccounted {report['unaccounted_share']:.1%}", style="bold")
    console = Console()
    console.print(table)
    mfu, util = report["flops"]["mfu"], report["gpu_util_mean"]
    mfu_text = "n/a" if mfu is None else f"{mfu:.1%}"
    util_text = "no GPU" if util is None else f"{util:.0f}%"
    console.print(f"samples/s {report['samples_per_s']:.1f}  frames/s {report['frames_per_s']:.1f}  "
                  f"data wait {report['data_wait_share']:.1%}  MFU {mfu_text}  GPU util {util_text}")
    memory = report["memory"]
    parts = "  ".join(f"{part} {size:.3f}" for part, size in memory.get("activations_saved_by_part_gb", {}).items())
    console.print(f"{describe_execution(report.get('execution'))}; activations saved for backward (GB, one "
                  f"micro-batch): {memory['activations_saved_gb']:.3f}  ({parts}); memory model "
                  f"{memory['model']['activations_gb']:.3f}", highlight=False)
    if report.get("ranks"):
        ranks = Table(title=f"per rank ({report['world_size']} processes; the table above is rank 0's)")
        for column in RANK_COLUMNS:
            ranks.add_column(column, justify="right")
        for row in rank_rows(report):
            ranks.add_row(*row)
        console.print(ranks)
    for finding in report["diagnosis"]:
        console.print(f"[{finding['severity']}] {finding['message']}", markup=False)


def describe_execution(execution: dict[str, Any] | None) -> str:
    """``compiled (inductor), activation checkpointing: encoder, llm`` in words."""
    if not execution:
        return "eager"
    compiled = f"compiled ({execution['compile_backend']})" if execution["compile"] else "eager"
    checkpointed = [part for part, on in execution["activation_checkpointing"].items() if on]
    return f"{compiled}, activation checkpointing: {', '.join(checkpointed) or 'none'}"


RANK_COLUMNS = ("rank", "median step ms", "p90 step ms", "data wait", "peak GPU GB", "GPU util")


def rank_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row of ``RANK_COLUMNS`` per rank; the slowest is marked."""
    def maybe(value, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    return [(f"{r['rank']}{' (slowest)' if r['rank'] == report['slowest_rank'] else ''}",
             f"{1000 * r['step_s_median']:.1f}", f"{1000 * r['step_s_p90']:.1f}", f"{r['data_wait_share']:.1%}",
             maybe(r["peak_memory_gb"], ".2f"), maybe(r["gpu_util_mean"], ".0f"))
            for r in report["ranks"]]


def write_profile(run: RunDir, report: dict[str, Any]) -> None:
    run.write_json("profile.json", report)
    run.write_text("profile.md", render_markdown(report))


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Profile: {report['config']}", "",
             f"{report['steps']} measured steps after {report['warmup']} warm-up on **{report['device']}**; "
             f"batch {report['batch']['batch_size']} x accumulation {report['batch']['grad_accum']}, "
             f"{report['batch']['num_frames']} frames at {report['batch']['frame_size']} px, {report['batch']['dtype']}; "
             f"{describe_execution(report.get('execution'))}.",
             "", "| phase | median (ms) | p90 (ms) | mean (ms) | share of time |", "|---|---:|---:|---:|---:|"]
    for phase in PHASES:
        s = report["phases_s"][phase]
        lines.append(f"| {phase} | {1000 * s['median']:.1f} | {1000 * s['p90']:.1f} | {1000 * s['mean']:.1f} | "
                     f"{report['phase_share'][phase]:.1%} |")
    s = report["step_s"]
    lines += [f"| **step** | **{1000 * s['median']:.1f}** | **{1000 * s['p90']:.1f}** | **{1000 * s['mean']:.1f}** | "
              f"unaccounted {report['unaccounted_share']:.1%} |", "",
              f"- samples/s: {report['samples_per_s']:.1f}; frames/s: {report['frames_per_s']:.1f}",
              f"- data-wait share: {report['data_wait_share']:.1%}",
              f"- FLOPs per step: {report['flops']['per_step'] / 1e12:.3f} TFLOP; achieved "
              f"{report['flops']['per_second'] / 1e12:.2f} TFLOP/s; MFU: "
              + (f"{report['flops']['mfu']:.1%}" if report["flops"]["mfu"] is not None else "n/a (no GPU peak known)")]
    gpu = report["resources"]["gpu"]
    lines.append("- GPU: " + ("no GPU" if not gpu else "; ".join(
        f"{d['name']}: {d['util_percent_mean']}% mean util, {d['memory_used_max_gb']:.1f} GB used max"
        for d in gpu)))
    cores = report["resources"]["cpu_percent_per_core"]
    lines.append(f"- CPU per core (mean %): {', '.join(f'{c:.0f}' for c in cores) or 'not sampled'}")
    model, measured = report["memory"]["model"], report["memory"]["measured"]
    if report.get("ranks"):
        lines += ["", f"## Ranks ({report['world_size']} processes; the figures above are rank 0's)", "",
                  "| " + " | ".join(RANK_COLUMNS) + " |", "|" + "---:|" * len(RANK_COLUMNS)]
        lines += ["| " + " | ".join(row) + " |" for row in rank_rows(report)]
    lines += ["", "## Memory", "", "| part | GB |", "|---|---:|"]
    lines += [f"| {k.removesuffix('_gb')} | {v:.3f} |" for k, v in model.items() if k != "activations_per_clip_gb"]
    lines.append(f"| activations saved for backward (measured, one micro-batch) | "
                 f"{report['memory']['activations_saved_gb']:.3f} |")
    for part, size in report["memory"].get("activations_saved_by_part_gb", {}).items():
        lines.append(f"| &nbsp;&nbsp;saved by the {part} | {size:.3f} |")
    lines.append("| measured peak allocated | " + (f"{measured['peak_allocated_gb']:.3f} |" if measured else "no GPU |"))
    lines.append(f"| spec estimate | {report['memory']['spec_estimate_gb'][0]:.0f}-{report['memory']['spec_estimate_gb'][1]:.0f} |")
    lines += ["", "## Diagnosis", ""] + [f"- **{f['kind']}** ({f['severity']}): {f['message']}" for f in report["diagnosis"]]
    return "\n".join(lines) + "\n"
