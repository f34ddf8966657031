"""The audit's outputs: ``audit.md`` (the hand-written alignment check's shape), ``audit.json``, a terminal table.

``audit.md``: a header (run, spec, what the probes read), one numbered section per area with its status
and, per check, expected / observed / evidence / reason-impact; then the alignment summary table,
recommendations and a conclusion. ``audit.json``: every check with id, status, expected, observed,
evidence, reason, recommendation and raw measurements. Both are written atomically into the run.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from fovea.audit.findings import SECTIONS, SEVERITY, SYMBOLS, Check

if TYPE_CHECKING:
    from fovea.audit.evidence import Evidence
    from fovea.core.rundir import RunDir


def section_status(checks: list[Check]) -> tuple[str, str]:
    """(status, word) of a section: its worst check; the word is the shared label of its worst checks."""
    worst = max(checks, key=lambda c: SEVERITY[c.status]).status
    labels = {c.word for c in checks if c.status == worst}
    word = labels.pop() if len(labels) == 1 else {"warn": "WARNINGS", "fail": "MISALIGNED"}.get(worst, "ALIGNED")
    return worst, word


def counts(checks: list[Check]) -> dict[str, int]:
    found = Counter(c.status for c in checks)
    return {status: found.get(status, 0) for status in ("fail", "warn", "pass", "info")}


def _json_safe(value: Any) -> Any:
    """Measurements as JSON: floats that are not finite become strings, tuples lists."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def header(ev: "Evidence") -> dict[str, Any]:
    """What was audited, against what, on what."""
    import fovea

    env = ev.env or {}
    return {"run": str(ev.run.path), "spec": ev.spec.name, "spec_file": str(ev.spec.path),
            "audited_at": time.strftime("%Y-%m-%d %H:%M:%S"), "fovea_version": fovea.__version__,
            "run_git_commit": env.get("git_commit"), "run_devices": env.get("devices"),
            "probe_batch": ev.batch_origin, "probe_device": "cpu, float32"}


def not_measured(checks: list[Check]) -> list[Check]:
    """The checks whose probe could not run on this run (a part without an optional extension, no eval.json, ...)."""
    return [c for c in checks if c.status == "info" and c.observed.startswith(("not measured", "not measurable"))]


def to_json(ev: "Evidence", checks: list[Check]) -> dict[str, Any]:
    return {**header(ev), "counts": counts(checks),
            "not_measured": {c.id: c.observed for c in not_measured(checks)},
            "sections": {sid: section_status([c for c in checks if c.section == sid])[0]
                         for sid, _ in SECTIONS if any(c.section == sid for c in checks)},
            "checks": [_json_safe(c.as_dict()) for c in checks]}


def _short(text: str, limit: int = 90) -> str:
    """The first clause of an observation, cut to ``limit`` characters (for the summary table)."""
    first = text.split("; ")[0]
    return first if len(first) <= limit else first[: limit - 1].rstrip() + "…"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(ev: "Evidence", checks: list[Check]) -> str:
    head = header(ev)
    total = counts(checks)
    config = ev.config
    lines = [
        f"# Spec-alignment audit: {ev.run.path.name}",
        "",
        f"- **Run:** `{head['run']}` (git {head['run_git_commit'] or 'unknown'}, trained on "
        f"{', '.join(head['run_devices'] or ['unknown'])}"
        + (f", {ev.world_size} processes under torchrun ({config.distributed.strategy})" if ev.world_size > 1 else "")
        + ")",
        f"- **Spec:** {ev.spec.name} — `{head['spec_file']}` (from {ev.spec.source or 'the spec file'})",
        f"- **Model:** encoder `{config.model.encoder.name}`, head `{config.model.head.name}`, "
        f"{config.training.max_steps} steps, seed {config.run.seed}",
        f"- **Probes:** {ev.batch_origin}; CPU, float32; model rebuilt from config.toml and the newest checkpoint's weights",
        f"- **Audited:** {head['audited_at']} by fovea {head['fovea_version']}",
        "",
        f"**Result: {total['fail']} ❌ · {total['warn']} ⚠️ · {total['pass']} ✅ · {total['info']} ℹ️**",
        "",
        f"**Probes:** {len(checks) - len(not_measured(checks))} checks measured; "
        + ("every probe ran." if not not_measured(checks) else "not measured: " + "; ".join(
            f"`{c.id}` ({c.observed.removeprefix('not measured: ')})" for c in not_measured(checks))),
        "",
        "---",
    ]
    number = 0
    for sid, title in SECTIONS:
        section = [c for c in checks if c.section == sid]
        if not section:
            continue
        number += 1
        status, word = section_status(section)
        lines += ["", f"## {number}. {title.upper()}", "", f"**STATUS: {SYMBOLS[status]} {word}**", ""]
        for c in section:
            lines += [f"### {c.symbol} {c.title} — {c.word}", f"`{c.id}`", "",
                      f"- **Expected:** {c.expected}", f"- **Observed:** {c.observed}"]
            if c.evidence:
                lines.append(f"- **Evidence:** {c.evidence}")
            if c.reason:
                lines.append(f"- **{'Impact' if c.status == 'warn' else 'Reason'}:** {c.reason}")
            lines.append("")
        lines.append("---")

    number += 1
    lines += ["", f"## {number}. ALIGNMENT SUMMARY", "", "| Area | Status | Notes |", "|---|---|---|"]
    for sid, title in SECTIONS:
        section = [c for c in checks if c.section == sid]
        if not section:
            continue
        status, word = section_status(section)
        flagged = [c for c in section if c.status in ("fail", "warn")]
        notes = "; ".join(f"{c.symbol} {c.title}: {_short(c.observed)}" for c in flagged[:4])
        if len(flagged) > 4:
            notes += f"; and {len(flagged) - 4} more"
        if not flagged:
            passed = sum(c.status == "pass" for c in section)
            notes = f"{passed} check{'s pass' if passed != 1 else ' passes'}"
        lines.append(f"| **{title}** | {SYMBOLS[status]} {word} | {_cell(notes)} |")

    number += 1
    lines += ["", "---", "", f"## {number}. RECOMMENDATIONS", ""]
    groups = [("fail", "Fix (❌ misaligned with the spec)"), ("warn", "Review (⚠️ deviations and symptoms)"),
              ("info", "Measure (ℹ️ not in this run)")]
    any_recommendation = False
    for status, title in groups:
        items = [c for c in checks if c.status == status and c.recommendation]
        if not items:
            continue
        any_recommendation = True
        lines += [f"### {title}:"]
        lines += [f"{i}. **{c.title}** (`{c.id}`): {c.recommendation}" for i, c in enumerate(items, start=1)]
        lines.append("")
    if not any_recommendation:
        lines += ["None: every check passes.", ""]

    number += 1
    lines += ["---", "", f"## {number}. CONCLUSION", "", conclusion(checks), ""]
    figures = figure_lines(ev.run)
    if figures:
        number += 1
        lines += ["---", "", f"## {number}. FIGURES", "", *figures]
    return "\n".join(lines)


FIGURE_TITLES = (("losses", "Losses over steps"), ("entropy", "Attention entropy and peak over steps"),
                 ("attention_clip", "Attention of the static and the dynamic query"),
                 ("predictions_clip", "Frame t and its predictions, decoded"))


def figure_lines(run: RunDir) -> list[str]:
    """Markdown embedding (and linking) the ``fovea viz`` figures the run holds; none: no lines.

    The audit does not draw them: ``fovea viz RUN_DIR`` does, and a later audit shows them.
    """
    found = sorted(run.viz_dir.glob("*.png"))
    if not found:
        return []
    folder = run.viz_dir.name
    lines = [f"Drawn by `fovea viz` ({len(found)} figures in `{folder}/`; run it again after more training to refresh "
             f"them).", ""]
    for prefix, title in FIGURE_TITLES:
        ours = [p for p in found if p.stem == prefix or p.stem.removeprefix(prefix).isdigit()]
        for path in sorted(ours, key=lambda p: int(p.stem.removeprefix(prefix) or 0)):   # clip 2 before clip 10
            clip = path.stem.removeprefix(prefix)
            name = f"{title}, clip {clip}" if clip else title
            link = f"{folder}/{path.name}"
            lines += [f"### {name}", f"[![{name}]({link})]({link})", ""]
    return lines


def conclusion(checks: list[Check]) -> str:
    total = counts(checks)
    failing = [c for c in checks if c.status == "fail"]
    misaligned = [c for c in failing if c.section != "results"]
    if misaligned:
        return (f"**❌ Not aligned:** {len(misaligned)} checks contradict the spec "
                f"({', '.join(f'`{c.id}`' for c in misaligned)}). Fix those before reading the results.")
    if failing:
        return (f"**❌ Not learned:** no measured check contradicts the spec, but on held-out clips the model does not "
                f"beat a trivial predictor ({', '.join(f'`{c.id}`' for c in failing)}): its other results say nothing "
                f"yet. Train it until it does (see the recommendations).")
    if total["warn"]:
        return (f"**✅ No misalignment found; ⚠️ {total['warn']} deviations or symptoms to review.** The wiring, "
                f"trainability and query probes were measured on the rebuilt model; the warnings are changed "
                f"values, simplifications, or symptoms that need a longer run or the spec's models to resolve.")
    return "**✅ Aligned:** every measured check agrees with the spec."


def write_report(ev: "Evidence", checks: list[Check]) -> None:
    """``audit.md`` and ``audit.json`` into the run directory, each written atomically."""
    ev.run.write_json(ev.run.audit_file.name, to_json(ev, checks))
    ev.run.write_text(ev.run.audit_markdown_file.name, to_markdown(ev, checks))


def print_table(ev: "Evidence", checks: list[Check], console=None) -> None:
    """One row per check on the terminal (rich), then the totals."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"fovea audit — {ev.run.path.name} against {ev.spec.name}", show_lines=False,
                  title_justify="left")
    table.add_column("", no_wrap=True)
    table.add_column("check", no_wrap=True, style="bold")
    table.add_column("observed", overflow="fold")
    for c in checks:
        table.add_row(c.symbol, c.id, escape(c.observed))   # `[eval]` is text, not markup
    console.print(table)
    total = counts(checks)
    console.print(f"{total['fail']} ❌  {total['warn']} ⚠️  {total['pass']} ✅  {total['info']} ℹ️   "
                  f"report: {ev.run.audit_markdown_file}", highlight=False)
