"""``fovea compare`` on hand-made run directories with known numbers: the columns are the config keys that
differ, seeds of one setting are one row (mean ± s.d.), each run's interval is shown, Markdown and a PNG."""

from __future__ import annotations

import json

import pytest
import tomli_w
from typer.testing import CliRunner

from fovea.cli import app
from fovea.compare import compare, render_markdown

runner = CliRunner()


def make_run(root, name, *, lr=1e-3, seed=0, improvement=None, fine=0.5, inject=None, summary=True,
             samples_per_s=100.0):
    """A run directory written by hand: config.toml, metrics.jsonl (2 held-out rows), summary.json and,
    with ``improvement`` = (value, low, high), eval.json whose fine loss is ``fine``."""
    path = root / name
    path.mkdir(parents=True)
    encoder = {"name": "deep", "size": "tiny"} if inject is None else \
        {"name": "deep", "size": "tiny", "inject_from_layer": inject}
    config = {"run": {"name": name, "output_dir": str(root), "seed": seed, "progress": seed == 0},
              "data": {"name": "synthetic", "frame_size": 64, "num_clips": 64},
              "model": {"encoder": encoder, "head": {"name": "film", "channels": [16, 32]}},
              "training": {"lr": lr, "max_steps": 10}}
    (path / "config.toml").write_text(tomli_w.dumps(config))
    rows = [{"step": 5, "loss": 1.0, "loss_fine": 0.6, "loss_coarse": 0.6},
            {"step": 5, "split": "val", "loss_fine": fine + 0.1, "loss_coarse": fine + 0.1,
             "baseline_mean_latent": 0.9, "baseline_copy_previous": 0.8},
            {"step": 10, "loss": 0.9, "loss_fine": 0.5, "loss_coarse": 0.5},
            {"step": 10, "split": "val", "loss_fine": fine, "loss_coarse": fine,
             "baseline_mean_latent": 0.9, "baseline_copy_previous": 0.8}]
    (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if summary:
        (path / "summary.json").write_text(json.dumps({"steps": 10, "last": {"samples_per_s": samples_per_s}}))
    if improvement is not None:
        value, low, high = improvement
        coarse = fine / (1 - value)

        def entry(loss):
            return {"loss": loss, "ci95": [loss - 0.01, loss + 0.01], "per_frame": [loss] * 8}

        (path / "eval.json").write_text(json.dumps({
            "split": "val", "step": 10, "clips": 20,
            "modes": {"coarse": entry(coarse), "fine": entry(fine), "autoregressive": entry(fine + 0.02)},
            "baselines": {"mean_latent": entry(0.9), "copy_previous": entry(0.8)}, "best_baseline": "copy_previous",
            "skill": 1 - fine / 0.8, "skill_ci95": [1 - (fine + 0.01) / 0.8, 1 - (fine - 0.01) / 0.8],
            "improvement": {"value": value, "ci95": [low, high]}, "autoregressive_gap": None}))
    return path


@pytest.fixture
def runs(tmp_path):
    """Setting lr=1e-3: three seeds with improvements 10, 20, 30 % (mean 20, s.d. 10); setting lr=2e-3: one
    evaluated run (5 % [1, 9]) and one without eval.json."""
    root = tmp_path / "runs"
    return [make_run(root, "a0", seed=0, improvement=(0.10, 0.05, 0.15), fine=0.40, samples_per_s=90.0),
            make_run(root, "a1", seed=1, improvement=(0.20, 0.15, 0.25), fine=0.50, samples_per_s=100.0),
            make_run(root, "a2", seed=2, improvement=(0.30, 0.25, 0.35), fine=0.60, samples_per_s=110.0),
            make_run(root, "b0", lr=2e-3, seed=0, improvement=(0.05, 0.01, 0.09), fine=0.70),
            make_run(root, "b1", lr=2e-3, seed=1, summary=False)]


def test_settings_are_the_differing_keys_and_seeds_are_one_row(runs):
    comparison = compare(runs)
    assert comparison.keys == ["training.lr"]       # run.name, run.seed, run.output_dir, run.progress ignored
    assert [s.values for s in comparison.settings] == [{"training.lr": 1e-3}, {"training.lr": 2e-3}]
    assert [[r.seed for r in s.runs] for s in comparison.settings] == [[0, 1, 2], [0, 1]]
    assert comparison.modes == ["coarse", "fine", "autoregressive"]


def test_markdown_table_has_mean_and_sd_over_seeds_and_each_runs_interval(runs):
    markdown = render_markdown(compare(runs))
    lines = markdown.splitlines()
    assert lines[2] == ("| # | training.lr | seeds | coarse | fine | autoregressive | best baseline | improvement | "
                        "skill | GFLOPs/clip fwd | GFLOPs/clip train | samples/s | steps |")
    first = lines[4].split(" | ")
    assert first[:3] == ["| 1", "0.001", "0, 1, 2"]
    assert first[4] == "0.5 ± 0.1"                                  # fine: mean ± s.d. of 0.4, 0.5, 0.6
    assert first[6] == "0.8<br>copy_previous"
    assert first[7] == ("+20.00 ± 10.00 %<br>seed 0: +10.00 [+5.00, +15.00]<br>seed 1: +20.00 [+15.00, +25.00]"
                        "<br>seed 2: +30.00 [+25.00, +35.00]")
    assert first[8].startswith("+37.50 ± 12.50 %<br>seed 0: +50.00 [")   # skill 1 - fine / 0.8
    assert first[9:] == ["—", "—", "100", "10 |"]                   # no FLOPs in these eval.json; samples/s; steps
    second = lines[5].split(" | ")
    assert second[:3] == ["| 2", "0.002", "0, 1"]
    assert second[4] == "0.7<br>[0.69, 0.71]<br>(1 of 2 runs)"      # one evaluated run: its value and interval
    assert second[7] == "+5.00 %<br>[+1.00, +9.00]<br>(1 of 2 runs)"
    assert second[12] == "10<br>(1 unfinished) |"
    assert f"- b1: no eval.json; `fovea eval {runs[4]}` fills it" in markdown
    assert f"`fovea run --resume {runs[4]}` continues it" in markdown
    assert f"- #1 training.lr=0.001: `{runs[0]}` (seed 0), `{runs[1]}` (seed 1)" in markdown


def test_cli_prints_the_table_writes_markdown_and_the_plot(runs, tmp_path):
    result = runner.invoke(app, ["compare", *map(str, runs), "--md", str(tmp_path / "c.md"),
                                 "--plot", str(tmp_path / "figures" / "c.png")])
    assert result.exit_code == 0, result.output
    assert "fovea compare — 5 runs, 2 settings" in result.output and "+20.00 ± 10.00 %" in result.output
    assert (tmp_path / "c.md").read_text() == render_markdown(compare(runs))
    assert (tmp_path / "figures" / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_sweep_stands_for_its_runs_and_latest_links_work(runs, tmp_path):
    """A hand-made sweep directory (sweep.json + runs/) through sweeps/latest, next to a plain run."""
    sweep = tmp_path / "sweeps" / "20260101-000000-q"
    (sweep / "runs").mkdir(parents=True)
    for run in runs[:2]:
        run.rename(sweep / "runs" / run.name)
    (sweep / "sweep.json").write_text(json.dumps({"format": 1, "runs": [
        {"name": "a0"}, {"name": "a1"}, {"name": "never-started"}]}))
    (tmp_path / "sweeps" / "latest").symlink_to(sweep.name)
    comparison = compare([tmp_path / "sweeps" / "latest", runs[3]])
    assert [r.run.path.name for r in comparison.runs] == ["a0", "a1", "b0"]
    assert comparison.keys == ["training.lr"]


def test_plain_runs_of_other_configs_compare_and_a_missing_key_shows_a_dash(tmp_path):
    root = tmp_path / "runs"
    plain = make_run(root, "plain", improvement=(0.1, 0.0, 0.2))
    injected = make_run(root, "injected", improvement=(0.2, 0.1, 0.3), inject=4)
    comparison = compare([plain, injected])
    assert comparison.keys == ["model.encoder.inject_from_layer"]
    markdown = render_markdown(comparison)
    assert "| 1 | — | 0 |" in markdown and "| 2 | 4 | 0 |" in markdown


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "is neither a run directory (config.toml) nor a sweep directory (sweep.json)"),
    (lambda p: p / "missing", "is neither a run directory"),
])
def test_a_path_that_is_not_a_run_or_sweep_is_one_error_line(tmp_path, make, message):
    result = runner.invoke(app, ["compare", str(make(tmp_path))])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and message in result.stderr
