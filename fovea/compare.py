"""``fovea compare``: the held-out figures of several runs side by side, one row per setting.

A *setting* is what the runs' resolved configs (``config.toml``, flattened to dotted keys) say, but for
``IGNORED`` keys: runs that differ only in ``run.seed`` are one setting, their figures a mean ± s.d. over
seeds (sample s.d.) next to each run's 95 % bootstrap interval. The columns are the config keys whose
values differ between the runs, then from each run's ``eval.json`` (``fovea eval``) the held-out loss of
every mode, the best trivial baseline, the improvement ``(coarse − fine) / coarse`` and the skill
``1 − fine / best baseline``, and from ``summary.json`` the training throughput and steps. A figure
(``plot``) shows the improvement per setting with its error bars and the held-out loss curves
(``metrics.jsonl`` rows with ``"split": "val"``).

Everything is read through ``RunDir`` and ``SweepDir``; nothing is evaluated here (a run without
``eval.json`` shows "—" and the note says which ``fovea eval`` fills it).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from fovea.core.errors import FoveaError
from fovea.core.records import MetricsRow, Summary
from fovea.core.rundir import RunDir, checkpoint_step

IGNORED = ("run.name", "run.seed", "run.output_dir", "run.progress")   # never part of a setting
MISSING = "—"   # a figure a run lacks, or a config key it lacks (its value is None: TOML has no null)


# --------------------------------------------------------------------------- reading the runs


@dataclass
class RunFigures:
    """What one run contributes: its flattened config, seed, eval.json (the top level: the primary objective's
    figures), summary.json and held-out curve."""

    run: RunDir
    config: dict[str, Any]            # dotted key -> value (lists as tuples)
    seed: int
    evaluation: dict[str, Any] | None  # eval.json, or None
    summary: Summary | None            # summary.json, or None (unfinished)
    held_out: list[MetricsRow]         # metrics.jsonl rows with "split": "val"
    last_step: int | None              # the last logged training step
    stale_eval: bool = False           # eval.json is of an older checkpoint than the newest

    def mode_loss(self, mode: str) -> tuple[float, list[float]] | None:
        entry = (self.evaluation or {}).get("modes", {}).get(mode)
        return (entry["loss"], entry["ci95"]) if entry else None

    def baseline(self) -> tuple[str, float] | None:
        name = (self.evaluation or {}).get("best_baseline")   # None: the objective has no trivial baseline
        return (name, self.evaluation["baselines"][name]["loss"]) if name else None

    def improvement(self) -> tuple[float, list[float]] | None:
        entry = (self.evaluation or {}).get("improvement")
        return (entry["value"], entry["ci95"]) if entry else None

    def skill(self) -> tuple[float, list[float]] | None:
        ev = self.evaluation or {}
        return (ev["skill"], ev["skill_ci95"]) if ev.get("skill") is not None else None

    def samples_per_s(self) -> float | None:
        return ((self.summary or {}).get("last") or {}).get("samples_per_s")

    def flops(self, which: str) -> float | None:
        """FLOPs per clip of a ``forward`` or a ``train_step`` (forward and backward), measured by ``fovea eval``."""
        return ((self.evaluation or {}).get("flops_per_clip") or {}).get(which)


def expand(paths: Iterable[str | Path]) -> list[RunDir]:
    """Run directories from run and sweep directories (a sweep gives its started runs), each once, in order."""
    from fovea.sweep import SweepDir

    runs: list[RunDir] = []
    for path in paths:
        if SweepDir.is_sweep(path):
            found = [run for _, run in SweepDir.open(path).runs() if run is not None]
            if not found:
                raise FoveaError(f"the sweep {path} has no run yet; start it with the `command` in its sweep.json")
        elif RunDir.is_run(path):
            found = [RunDir.open(path)]
        else:
            raise FoveaError(f"{path} is neither a run directory (config.toml) nor a sweep directory (sweep.json); "
                             f"give runs/<run>, runs/latest, sweeps/<sweep> or sweeps/latest")
        runs += [run for run in found if run.path not in {r.path for r in runs}]
    return runs


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become tuples (hashable, comparable)."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = tuple(value) if isinstance(value, list) else value
    return flat


def read_figures(run: RunDir) -> RunFigures:
    config = flatten(run.read_config_table())
    evaluation = run.read_eval()
    checkpoints = run.checkpoints()
    stale = bool(evaluation and checkpoints and evaluation.get("step") != checkpoint_step(checkpoints[-1]))
    metrics = run.read_metrics(split=None)
    train = [row for row in metrics if row.get("split", "train") == "train"]
    return RunFigures(run, config, int(config.get("run.seed", 0)), evaluation, run.read_summary(),
                      [row for row in metrics if row.get("split") == "val"], train[-1]["step"] if train else None,
                      stale)


# --------------------------------------------------------------------------- settings


@dataclass
class Setting:
    """Runs whose configs agree on every key but ``IGNORED`` ones (their seeds, usually)."""

    values: dict[str, Any]            # the differing keys' values (None where a run's config lacks the key)
    runs: list[RunFigures] = field(default_factory=list)

    def label(self) -> str:
        shown = [f"{key}={show(value)}" for key, value in self.values.items() if value is not None]
        return ", ".join(shown) or "all runs"


@dataclass
class Comparison:
    keys: list[str]                   # the config keys whose values differ between the runs
    settings: list[Setting]
    modes: list[str]                  # eval.json modes found in any run, in eval.json's order

    @property
    def runs(self) -> list[RunFigures]:
        return [run for setting in self.settings for run in setting.runs]


def compare(paths: Iterable[str | Path]) -> Comparison:
    """Read every run of ``paths`` and group them into settings by the config keys that differ."""
    runs = [read_figures(run) for run in expand(paths)]
    if not runs:
        raise FoveaError("nothing to compare: give run or sweep directories")
    every = sorted({key for run in runs for key in run.config} - set(IGNORED), key=_key_order(runs))
    keys = [key for key in every if len({_hashable(run.config.get(key)) for run in runs}) > 1]
    settings: dict[tuple, Setting] = {}
    for run in runs:
        values = {key: run.config.get(key) for key in keys}
        settings.setdefault(tuple(map(_hashable, values.values())), Setting(values)).runs.append(run)
    for setting in settings.values():
        setting.runs.sort(key=lambda r: (r.seed, r.run.path.name))
    modes = []
    for run in runs:
        modes += [mode for mode in (run.evaluation or {}).get("modes", {}) if mode not in modes]
    return Comparison(keys, list(settings.values()), modes)


def _key_order(runs: list[RunFigures]) -> Callable[[str], int]:
    """Keys in the order of the first config that has them (the TOML's order: run, data, model, ...)."""
    order: dict[str, int] = {}
    for run in runs:
        for key in run.config:
            order.setdefault(key, len(order))
    return order.__getitem__


def _hashable(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


# --------------------------------------------------------------------------- numbers to text


def show(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


def number(value: float | None, digits: int = 4) -> str:
    return MISSING if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def percent(value: float) -> str:
    return f"{100 * value:+.2f}"


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def loss_cell(setting: Setting, get: Callable[[RunFigures], tuple[float, list[float]] | None]) -> list[str]:
    """Lines of a loss cell: one run: the loss, then its ``[low, high]``; several: ``mean ± s.d.`` over the
    runs that have it."""
    found = [value for value in map(get, setting.runs) if value is not None]
    if not found:
        return [MISSING]
    if len(found) == 1:
        loss, (low, high) = found[0]
        return [number(loss), f"[{number(low)}, {number(high)}]", *_of(found, setting)]
    mean, sd = mean_sd([loss for loss, _ in found])
    return [f"{number(mean)} ± {number(sd, 2)}", *_of(found, setting)]


def relative_cell(setting: Setting, get: Callable[[RunFigures], tuple[float, list[float]] | None]) -> list[str]:
    """Lines of an improvement or skill cell, in %: one run: the value, then its ``[low, high]``; several:
    ``mean ± s.d.``, then each run's ``seed k: value [low, high]``."""
    found = [(run, value) for run in setting.runs if (value := get(run)) is not None]
    if not found:
        return [MISSING]
    if len(found) == 1:
        value, (low, high) = found[0][1]
        return [f"{percent(value)} %", f"[{percent(low)}, {percent(high)}]", *_of(found, setting)]
    mean, sd = mean_sd([value for _, (value, _) in found])
    return [f"{percent(mean)} ± {100 * sd:.2f} %", *_of(found, setting)] + \
        [f"seed {run.seed}: {percent(value)} [{percent(low)}, {percent(high)}]" for run, (value, (low, high)) in found]


def flops_cell(setting: Setting, which: str) -> list[str]:
    """GFLOPs per clip (the same for every seed of a setting: one figure)."""
    found = [f for f in (run.flops(which) for run in setting.runs) if f is not None]
    return [number(statistics.fmean(found) / 1e9, 4)] if found else [MISSING]


def _of(found: list, setting: Setting) -> list[str]:
    return [f"({len(found)} of {len(setting.runs)} runs)"] if len(found) < len(setting.runs) else []


def header(comparison: Comparison) -> list[str]:
    return ["#", *comparison.keys, "seeds", *comparison.modes, "best baseline", "improvement", "skill",
            "GFLOPs/clip fwd", "GFLOPs/clip train", "samples/s", "steps"]


def cells(comparison: Comparison, setting: Setting) -> list[list[str]]:
    """The cells of a setting's row, each a list of lines."""
    baselines = [b for b in (run.baseline() for run in setting.runs) if b is not None]
    rates = [r for r in (run.samples_per_s() for run in setting.runs) if r is not None]
    steps = sorted({run.summary["steps"] if run.summary else run.last_step for run in setting.runs} - {None})
    unfinished = sum(run.summary is None for run in setting.runs)
    return [
        [str(comparison.settings.index(setting) + 1)],
        *[[show(value)] for value in setting.values.values()],
        [", ".join(str(run.seed) for run in setting.runs)],
        *[loss_cell(setting, lambda run, m=mode: run.mode_loss(m)) for mode in comparison.modes],
        [number(statistics.fmean(loss for _, loss in baselines)), baselines[0][0]] if baselines else [MISSING],
        relative_cell(setting, RunFigures.improvement),
        relative_cell(setting, RunFigures.skill),
        *[flops_cell(setting, which) for which in ("forward", "train_step")],
        [number(statistics.fmean(rates), 3) if rates else MISSING],
        [(str(steps[0]) if len(steps) == 1 else f"{steps[0]}–{steps[-1]}") if steps else MISSING]
        + ([f"({unfinished} unfinished)"] if unfinished else []),
    ]


def notes(comparison: Comparison) -> list[str]:
    """What the table leaves out, and the command that fills it."""
    lines = []
    for run in comparison.runs:
        if run.evaluation is None:
            lines.append(f"{run.run.path.name}: no eval.json; `fovea eval {run.run.path}` fills it")
        elif run.stale_eval:
            lines.append(f"{run.run.path.name}: eval.json is of step {run.evaluation.get('step')}, the run has a "
                         f"newer checkpoint; `fovea eval {run.run.path}` updates it")
        if run.summary is None:
            lines.append(f"{run.run.path.name}: unfinished (no summary.json, last step {run.last_step}); "
                         f"`fovea run --resume {run.run.path}` continues it")
    return lines


def legend(comparison: Comparison) -> str:
    return ("Held-out clips of each run (eval.json): MSE per clip of each mode, [95 % bootstrap interval over "
            "clips]; improvement = (coarse − fine) / coarse, skill = 1 − fine / best baseline. Settings with "
            "several seeds: mean ± sample s.d. over seeds, then each run's value and interval. samples/s: the "
            "last logged training interval (summary.json); steps: training.max_steps.")


# --------------------------------------------------------------------------- outputs


def print_table(comparison: Comparison, console=None) -> None:
    """The comparison on the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if Console().is_terminal else 200)
    runs = comparison.runs
    table = Table(title=f"fovea compare — {len(runs)} runs, {len(comparison.settings)} settings",
                  title_justify="left", show_lines=True)
    for name in header(comparison):
        table.add_column(name, overflow="fold")
    for setting in comparison.settings:
        table.add_row(*["\n".join(lines) for lines in cells(comparison, setting)])
    console.print(table)
    console.print(legend(comparison), highlight=False)
    for line in notes(comparison):
        console.print(f"note: {line}", highlight=False)


def render_markdown(comparison: Comparison) -> str:
    """The comparison as a Markdown document: the table, what it means, the runs of each setting, notes."""
    def row(items: list[str]) -> str:
        return "| " + " | ".join(item.replace("|", "\\|") for item in items) + " |"

    names = header(comparison)
    lines = [f"# Comparison of {len(comparison.runs)} runs ({len(comparison.settings)} settings)", "",
             row(names), "|" + "---|" * len(names)]
    lines += [row(["<br>".join(cell) for cell in cells(comparison, setting)]) for setting in comparison.settings]
    lines += ["", legend(comparison), "", "## Runs", ""]
    for number_, setting in enumerate(comparison.settings, 1):
        lines.append(f"- #{number_} {setting.label()}: " + ", ".join(f"`{run.run.path}` (seed {run.seed})"
                                                          for run in setting.runs))
    if notes(comparison):
        lines += ["", "## Notes", "", *[f"- {line}" for line in notes(comparison)]]
    return "\n".join(lines) + "\n"


def plot(comparison: Comparison, path: str | Path) -> Path:
    """A PNG: left, the improvement per setting (each run's value with its 95 % interval; the mean ± s.d.
    over seeds in black); right, the held-out ``loss_fine`` over steps of every run, coloured by setting."""
    import matplotlib

    matplotlib.use("Agg")   # files only: no display needed
    import matplotlib.pyplot as plt

    path = Path(path)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), dpi=100)
    for i, setting in enumerate(comparison.settings):
        colour = colours[i % len(colours)]
        found = [value for value in map(RunFigures.improvement, setting.runs) if value is not None]
        offsets = [0.0] if len(found) == 1 else [0.25 * (k / (len(found) - 1) - 0.5) for k in range(len(found))]
        for offset, (value, (low, high)) in zip(offsets, found):
            left.errorbar(i + offset, 100 * value, yerr=[[100 * (value - low)], [100 * (high - value)]], fmt="o",
                          color=colour, capsize=3, alpha=0.8)
        if len(found) > 1:
            mean, sd = mean_sd([value for value, _ in found])
            left.errorbar(i, 100 * mean, yerr=100 * sd, fmt="_", color="black", markersize=24, capsize=8,
                          label="mean ± s.d. over seeds" if i == 0 else None)
        for k, run in enumerate(setting.runs):
            steps = [row["step"] for row in run.held_out if row.get("loss_fine") is not None]
            losses = [row["loss_fine"] for row in run.held_out if row.get("loss_fine") is not None]
            right.plot(steps, losses, color=colour, marker="." if len(steps) < 30 else None, alpha=0.8,
                       label=f"#{i + 1} {_wrap(setting.label())}" if k == 0 else None)
    baselines = [min(row["baseline_mean_latent"], row["baseline_copy_previous"]) for run in comparison.runs
                 for row in run.held_out[-1:] if row.get("baseline_copy_previous") is not None]
    if baselines:
        right.axhline(min(baselines), color="grey", linestyle=":", label="best trivial baseline")
    left.axhline(0.0, color="grey", linewidth=0.8)
    left.set_xticks(range(len(comparison.settings)), [f"#{i + 1}" for i in range(len(comparison.settings))])
    left.set_xlim(-0.6, len(comparison.settings) - 0.4)
    left.set_xlabel("setting (legend on the right; the table's # column)")
    left.set_ylabel("improvement (coarse − fine) / coarse, % (held out, 95 % CI)")
    left.set_title("Did foveation help? (eval.json)")
    if not any(run.improvement() for run in comparison.runs):
        left.text(0.5, 0.5, "no eval.json: run `fovea eval RUN`", ha="center", transform=left.transAxes)
    if left.get_legend_handles_labels()[0]:
        left.legend(fontsize=8)
    right.set_xlabel("optimizer step")
    right.set_ylabel("held-out loss_fine (MSE)")
    right.set_title("Held-out loss during training (metrics.jsonl)")
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=7)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _wrap(label: str) -> str:
    return label.replace(", ", "\n")
