"""The profile for people: the terminal table (``render_table``) and ``profile.md`` (``render_markdown``)."""

from __future__ import annotations

from fovea.core.profile_report import PHASES, Execution, ProfileReport, Stats

RANK_COLUMNS = ("rank", "median step ms", "p90 step ms", "data wait", "peak GPU GB", "GPU util")


def render_table(report: ProfileReport) -> None:
    """The compact terminal view: phases with median, p90 and share, then the headline figures."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"fovea profile: {report.config} on {report.device}")
    for column in ("phase", "median ms", "p90 ms", "mean ms", "share of time"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for phase in PHASES:
        table.add_row(phase, *_milliseconds(report.phases_s[phase]), f"{report.phase_share[phase]:.1%}")
    table.add_row("step", *_milliseconds(report.step_s), f"unaccounted {report.unaccounted_share:.1%}", style="bold")
    console = Console()
    console.print(table)
    mfu, util = report.flops.mfu, report.gpu_util_mean
    mfu_text = "n/a" if mfu is None else f"{mfu:.1%}"
    util_text = "no GPU" if util is None else f"{util:.0f}%"
    console.print(f"samples/s {report.samples_per_s:.1f}  frames/s {report.frames_per_s:.1f}  "
                  f"data wait {report.data_wait_share:.1%}  MFU {mfu_text}  GPU util {util_text}")
    memory = report.memory
    parts = "  ".join(f"{part} {size:.3f}" for part, size in memory.activations_saved_by_part_gb.items())
    console.print(f"{describe_execution(report.execution)}; activations saved for backward (GB, one "
                  f"micro-batch): {memory.activations_saved_gb:.3f}  ({parts}); memory model "
                  f"{memory.model.activations_gb:.3f}", highlight=False)
    if report.ranks:
        ranks = Table(title=f"per rank ({report.world_size} processes; the table above is rank 0's)")
        for column in RANK_COLUMNS:
            ranks.add_column(column, justify="right")
        for row in rank_rows(report):
            ranks.add_row(*row)
        console.print(ranks)
    for finding in report.diagnosis:
        console.print(f"[{finding.severity}] {finding.message}", markup=False)


def _milliseconds(stats: Stats) -> tuple[str, str, str]:
    return f"{1000 * stats.median:.1f}", f"{1000 * stats.p90:.1f}", f"{1000 * stats.mean:.1f}"


def describe_execution(execution: Execution | None) -> str:
    """``compiled (inductor), activation checkpointing: encoder, llm`` in words."""
    if not execution:
        return "eager"
    compiled = f"compiled ({execution.compile_backend})" if execution.compile else "eager"
    checkpointed = [part for part, on in execution.activation_checkpointing.items() if on]
    return f"{compiled}, activation checkpointing: {', '.join(checkpointed) or 'none'}"


def rank_rows(report: ProfileReport) -> list[tuple[str, ...]]:
    """One row of ``RANK_COLUMNS`` per rank; the slowest is marked."""
    def maybe(value, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    return [(f"{r.rank}{' (slowest)' if r.rank == report.slowest_rank else ''}",
             f"{1000 * r.step_s_median:.1f}", f"{1000 * r.step_s_p90:.1f}", f"{r.data_wait_share:.1%}",
             maybe(r.peak_memory_gb, ".2f"), maybe(r.gpu_util_mean, ".0f"))
            for r in report.ranks or []]


def render_markdown(report: ProfileReport) -> str:
    """``profile.md``: the same figures as ``profile.json``, as tables and lines."""
    batch, memory = report.batch, report.memory
    lines = [f"# Profile: {report.config}", "",
             f"{report.steps} measured steps after {report.warmup} warm-up on **{report.device}**; "
             f"batch {batch.batch_size} x accumulation {batch.grad_accum}, "
             f"{batch.num_frames} frames at {batch.frame_size} px, {batch.dtype}; "
             f"{describe_execution(report.execution)}.",
             "", "| phase | median (ms) | p90 (ms) | mean (ms) | share of time |", "|---|---:|---:|---:|---:|"]
    for phase in PHASES:
        lines.append(f"| {phase} | {' | '.join(_milliseconds(report.phases_s[phase]))} | "
                     f"{report.phase_share[phase]:.1%} |")
    lines += [f"| **step** | {' | '.join(f'**{ms}**' for ms in _milliseconds(report.step_s))} | "
              f"unaccounted {report.unaccounted_share:.1%} |", "",
              f"- samples/s: {report.samples_per_s:.1f}; frames/s: {report.frames_per_s:.1f}",
              f"- data-wait share: {report.data_wait_share:.1%}",
              f"- FLOPs per step: {report.flops.per_step / 1e12:.3f} TFLOP; achieved "
              f"{report.flops.per_second / 1e12:.2f} TFLOP/s; MFU: "
              + (f"{report.flops.mfu:.1%}" if report.flops.mfu is not None else "n/a (no GPU peak known)")]
    gpu = report.resources.gpu
    lines.append("- GPU: " + ("no GPU" if not gpu else "; ".join(
        f"{d.name}: {d.util_percent_mean}% mean util, {d.memory_used_max_gb:.1f} GB used max" for d in gpu)))
    cores = report.resources.cpu_percent_per_core
    lines.append(f"- CPU per core (mean %): {', '.join(f'{c:.0f}' for c in cores) or 'not sampled'}")
    if report.ranks:
        lines += ["", f"## Ranks ({report.world_size} processes; the figures above are rank 0's)", "",
                  "| " + " | ".join(RANK_COLUMNS) + " |", "|" + "---:|" * len(RANK_COLUMNS)]
        lines += ["| " + " | ".join(row) + " |" for row in rank_rows(report)]
    lines += ["", "## Memory", "", "| part | GB |", "|---|---:|"]
    lines += [f"| {k.removesuffix('_gb')} | {v:.3f} |" for k, v in memory.model.model_dump().items()
              if k != "activations_per_clip_gb"]
    lines.append(f"| activations saved for backward (measured, one micro-batch) | {memory.activations_saved_gb:.3f} |")
    for part, size in memory.activations_saved_by_part_gb.items():
        lines.append(f"| &nbsp;&nbsp;saved by the {part} | {size:.3f} |")
    lines.append("| measured peak allocated | " + (f"{memory.measured.peak_allocated_gb:.3f} |" if memory.measured
                                                   else "no GPU |"))
    low, high = memory.spec_estimate_gb
    lines.append(f"| spec estimate | {low:.0f}-{high:.0f} |")
    lines += ["", "## Diagnosis", ""] + [f"- **{f.kind}** ({f.severity}): {f.message}" for f in report.diagnosis]
    return "\n".join(lines) + "\n"
