"""``eval.md`` and the lines `fovea eval` prints: tables of losses with intervals, the headline
figures, the ablations, FLOPs."""

from __future__ import annotations

import math
from typing import Any


def format_number(value: float | None, digits: int = 5) -> str:
    """``value`` to ``digits`` significant digits; a dash for None, NaN and infinities."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}g}"


NOTES = {"coarse": "pass 1 alone (static query)", "fine": "two passes, as trained",
         "autoregressive": "one pass, its own queries (deployed)",
         "mean_latent": "baseline: training mean latent", "copy_previous": "baseline: previous frame's latent",
         "unigram": "baseline: token frequencies of training captions",
         "bigram": "baseline: next token given the previous one (training captions)"}


def rows(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """``(name, loss, 95 % interval, what it is)`` for every mode and baseline of one objective's result."""
    out = []
    for group in ("modes", "baselines"):
        for name, entry in result[group].items():
            low, high = entry["ci95"]
            out.append((name, format_number(entry["loss"]), f"[{format_number(low)}, {format_number(high)}]",
                        NOTES.get(name, "")))
    return out


def headline(result: dict[str, Any]) -> list[str]:
    """Skill, improvement and the autoregressive gap of one objective, one line each, with their intervals."""
    def pct(entry: dict[str, Any] | None, key: str = "value") -> str:
        if entry is None:
            return "—"
        low, high = entry["ci95"]
        return f"{100 * entry[key]:+.2f} % (95 % CI {100 * low:+.2f} … {100 * high:+.2f} %)"

    lines = []
    if result.get("single_pass"):
        lines.append("one pass: a query-free encoder has no coarse and fine reads, so no improvement to report")
    if result.get("skill") is not None:
        lines.append(f"skill        {pct({'value': result['skill'], 'ci95': result['skill_ci95']})}  "
                     f"= 1 − fine / {result['best_baseline']}")
    if not result.get("single_pass"):
        lines.append(f"improvement  {pct(result.get('improvement'))}  = (coarse − fine) / coarse")
    if result.get("autoregressive_gap") is not None:
        lines.append(f"autoregressive gap {pct(result['autoregressive_gap'])}  = (autoregressive − fine) / fine")
    return lines


ABLATION_NOTES = {"shuffle_queries": "pass 2 reads each clip with another clip's queries",
                  "static_queries": "pass 2 reads with q_static, as pass 1",
                  "blind": "every frame replaced by the training clips' mean frame"}


def ablation_lines(result: dict[str, Any]) -> list[str]:
    """One line per ablation and objective: the improvement left (and its share), the change of the fine loss."""
    lines = []
    for ablation, per_objective in (result.get("ablations") or {}).items():
        for name, figures in per_objective.items():
            left, change = figures["improvement"], figures["fine_change"]
            share = figures["improvement_left"]
            lines.append(f"{ablation} ({ABLATION_NOTES[ablation]}), {name}: improvement left "
                         f"{100 * left['value']:+.2f} % (95 % CI {100 * left['ci95'][0]:+.2f} … "
                         f"{100 * left['ci95'][1]:+.2f} %)" + ("" if share is None else f", {share:.2f} of it")
                         + f"; fine loss {100 * change['value']:+.2f} % (95 % CI {100 * change['ci95'][0]:+.2f} … "
                         f"{100 * change['ci95'][1]:+.2f} %)")
    return lines


UNITS = {"next_latent": "MSE per clip", "caption": "cross-entropy per caption token (nats), mean per clip"}


def objective_results(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each objective's figures of an eval result (a result from before objectives: its top level, ``next_latent``)."""
    return result.get("objectives") or {"next_latent": result}


def render_markdown(result: dict[str, Any], title: str) -> str:
    """``eval.md``: per objective, the table, the headline figures and (per frame) the losses by position."""
    lines = [f"# Held-out evaluation of {title}" if result["split"] == "val" else f"# Evaluation of {title} "
             f"on training clips", "",
             f"Checkpoint of step {result['step']}, {result['clips']} clips of the `{result['split']}` split; "
             f"mean over clips with a 95 % bootstrap interval over clips "
             f"({result['bootstrap']['samples']} resamples)."]
    for name, figures in objective_results(result).items():
        lines += ["", f"## Objective `{name}` ({UNITS.get(name, 'loss per clip')})", "",
                  "| | loss | 95 % interval | |", "|---|---|---|---|"]
        lines += [f"| {row} | {loss} | {ci} | {note} |" for row, loss, ci, note in rows(figures)]
        lines += ["", *[f"- {line}" for line in headline(figures)]]
        T = len(next(iter(figures["modes"].values()))["per_frame"])
        if T > 1:
            lines += ["", "### Per frame position", "",
                      "| | " + " | ".join(f"t={t + 1}" for t in range(T)) + " |", "|---|" + "---|" * T]
            for group in ("modes", "baselines"):
                for key, entry in figures[group].items():
                    lines.append(f"| {key} | " + " | ".join(format_number(v, 4) for v in entry["per_frame"]) + " |")
    if result.get("ablations"):
        lines += ["", "## Ablations (the same clips)", "", *[f"- {line}" for line in ablation_lines(result)]]
    if result.get("flops_per_clip"):
        flops = result["flops_per_clip"]
        lines += ["", f"FLOPs per clip (torch's FlopCounterMode): {flops['forward'] / 1e9:.4g} G forward, "
                      f"{flops['train_step'] / 1e9:.4g} G training step (forward and backward)."]
    return "\n".join(lines) + "\n"
