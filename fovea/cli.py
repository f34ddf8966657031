"""The ``fovea`` command line: thin typer commands that parse, load the config and call the library.

User mistakes (``FoveaError``) and environment failures (``OSError``: a full disk, a path that cannot be
written) print one ``error:`` line and exit with code 2, without a traceback. ``fovea run`` stopped by
SIGINT/SIGTERM saves a checkpoint and exits with 128 + the signal number (130, 143).
"""

from __future__ import annotations

import functools
import json
import shlex
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

from fovea.core.errors import FoveaError

app = typer.Typer(
    name="fovea",
    help="Train, evaluate, profile and audit foveated video vision-language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Show or check a config.", no_args_is_help=True)
app.add_typer(config_app, name="config")

SetOption = typer.Option(
    [], "--set", metavar="KEY=VALUE",
    help="Override a config value, e.g. --set training.batch_size=4 (repeatable; beats the file).")
ConfigArgument = typer.Argument(..., help="A TOML config, e.g. configs/quickstart.toml.", show_default=False)


def optional_config(help: str) -> typer.models.ArgumentInfo:
    """A CONFIG argument that may be left out (the command says what it uses instead)."""
    return typer.Argument(None, help=help, show_default=False)


def user_errors(command: Callable) -> Callable:
    """Show a ``FoveaError`` as one line on stderr and exit 2."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FoveaError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from None
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            typer.echo(f"error: {exc.strerror or exc}{where}; check the disk and the paths in the config", err=True)
            raise typer.Exit(code=2) from None
    return wrapper


@app.command("run")
@user_errors
def run_command(
    config: Optional[Path] = optional_config("A TOML config, e.g. configs/quickstart.toml (with --resume: "
                                             "optional, the run's own config.toml is used)."),
    overrides: List[str] = SetOption,
    resume: Optional[str] = typer.Option(None, "--resume", metavar="RUN_DIR|latest",
                                         help="Continue this run from its newest checkpoint, in its directory."),
    force: bool = typer.Option(False, "--force", help="With --resume: accept a changed batch size, grad_accum or "
                               "world size, or a lost metrics.jsonl."),
) -> None:
    """Train the model a config describes; writes runs/<timestamp>-<name>/ and points runs/latest at it.

    Stopped by Ctrl-C or SIGTERM, it finishes the step, saves a checkpoint and exits with 130/143.
    On several GPUs: `torchrun --nproc_per_node=N -m fovea run CONFIG` (README "Multi-GPU").
    """
    from fovea.core.config import load_config
    from fovea.core.distributed import is_main_process
    from fovea.core.train import RunInterrupted, find_run_to_resume, train

    if resume is None and config is None:
        raise FoveaError("give a CONFIG to start a run, or --resume RUN_DIR|latest to continue one")
    if resume is None and force:
        raise FoveaError("--force only applies with --resume")
    cfg, run_dir = find_run_to_resume(resume, config, overrides) if resume else (load_config(config, overrides), None)
    try:
        run = train(cfg, resume=run_dir, force=force)
    except RunInterrupted as exc:
        if is_main_process():
            typer.echo(str(exc), err=True)
        raise typer.Exit(code=128 + exc.signal_number) from None
    if not is_main_process():   # under torchrun rank 0 speaks for the job
        return
    last = run.read_metrics()[-1]
    losses = (f"loss_fine {last['loss_fine']:.4g}  loss_coarse {last['loss_coarse']:.4g}"
              if last["loss_fine"] is not None else "every step of the last interval was skipped (NaN/inf)")
    typer.echo(f"run: {run.path}\nstep {last['step']}: {losses}" +
               (f"  ratio {last['ratio']:.3f}" if last.get("ratio") is not None else "") + "  (training batches)")
    held_out = run.read_metrics("val")
    if held_out:
        v = held_out[-1]
        typer.echo(f"held out ({v['clips']} clips):")
        for name in cfg.objectives:
            best = v.get(f"{name}_best_baseline")
            skill = v.get(f"{name}_skill")
            typer.echo(f"  {name}: fine {v[f'{name}_fine']:.4g}  coarse {v[f'{name}_coarse']:.4g}  best trivial "
                       f"baseline {'—' if best is None else f'{best:.4g}'}  skill "
                       f"{'—' if skill is None else f'{skill:.3f}'}")
        typer.echo(f"intervals, the autoregressive mode and every held-out clip: fovea eval {run.path}")


@app.command("precompute")
@user_errors
def precompute_command(
    config: Path = ConfigArgument,
    overrides: List[str] = SetOption,
    verify: bool = typer.Option(False, "--verify", help="Check every file of the cache against its SHA-256 and "
                                "list the damaged ones (exit 2 if any); changes nothing."),
    repair: bool = typer.Option(False, "--repair", help="Check every file of the cache and decode again only the "
                                "damaged shards from the source."),
) -> None:
    """Decode every clip once and cache frames + VAE latents (resumable; `fovea run` reuses the cache).

    On N processes: `torchrun --nproc_per_node=N -m fovea precompute CONFIG` (each rank its own shards).
    """
    from fovea.core.cache import build_cache, verify_cache
    from fovea.core.config import load_config
    from fovea.core.devices import resolve_device

    cfg = load_config(config, overrides)
    if verify and not repair:
        root, num_shards, problems = verify_cache(cfg, progress=cfg.run.progress)
        typer.echo(f"cache: {root}\nshards: {num_shards}  damaged files: {len(problems)}")
        for _, problem in problems:
            typer.echo(f"  {problem}")
        if problems:
            command = shlex.join(["fovea", "precompute", "--repair", str(config)] + [a for o in overrides
                                                                                     for a in ("--set", o)])
            raise FoveaError(f"{len(problems)} damaged file(s) in the clip cache at {root}; run `{command}` to "
                             f"make them again from the source")
        return
    from fovea.core import distributed

    device = resolve_device(cfg.run.device)   # under torchrun: this rank's GPU
    with distributed.process_group(cfg.distributed.backend, device) as world:   # under torchrun: shards by rank
        report = build_cache(cfg, device, progress=cfg.run.progress, repair=repair, parallel=True).report()
    if not world.is_main:
        return
    typer.echo(f"cache: {report['cache']}\nclips: {report['num_clips']}  skipped: {report['num_skipped']}")
    for item in report["skipped"]:
        typer.echo(f"  skipped {item['source'] or item['index']}: {item['reason']}")


@app.command("profile")
@user_errors
def profile_command(
    config: Optional[Path] = optional_config("A TOML config; default: the config of runs/latest."),
    steps: int = typer.Option(20, "--steps", min=1, help="Measured training steps."),
    warmup: int = typer.Option(3, "--warmup", min=0, help="Steps run first and not measured."),
    overrides: List[str] = SetOption,
) -> None:
    """Measure where step time and memory go; writes profile.json and profile.md into the run directory.

    Under torchrun it reports every rank's figures and the slowest rank.
    """
    from fovea.core.distributed import is_main_process
    from fovea.profile import profile, profile_target, render_table

    cfg, run = profile_target(config, overrides)
    report, run = profile(cfg, run, steps=steps, warmup=warmup)
    if is_main_process():
        render_table(report)
        typer.echo(f"wrote {run.profile_file} and {run.profile_markdown_file.name}")


@app.command("eval")
@user_errors
def eval_command(
    run_dir: Path = typer.Argument(..., help="A run directory, e.g. runs/latest.", show_default=False),
    split: str = typer.Option("val", "--split", help="val: the held-out clips; train: clips the run trained on."),
    clips: Optional[int] = typer.Option(None, "--clips", min=1, help="Evaluate at most N clips, evenly spread "
                                        "(default: every held-out clip)."),
    checkpoint: Optional[int] = typer.Option(None, "--checkpoint", metavar="STEP", min=0,
                                             help="The checkpoint of this optimizer step (default: the newest)."),
    modes: str = typer.Option("coarse,fine,autoregressive", "--modes",
                              help="Comma-separated: coarse, fine, autoregressive."),
    ablate: Optional[List[str]] = typer.Option(None, "--ablate", metavar="NAME", help="Also evaluate with pass 2 "
                                               "ablated (repeatable): shuffle_queries, static_queries, blind."),
) -> None:
    """Did it learn, and did foveation help? Held-out losses of each mode against trivial baselines.

    Writes eval.json and eval.md into the run (eval-train.json for --split train) and prints, per objective,
    a table: coarse (pass 1), fine (two passes, as trained), autoregressive (one pass with its own queries),
    the objective's trivial baselines, skill, improvement and the autoregressive gap, each with a 95 %
    bootstrap interval over clips; with --ablate, how much improvement each ablation leaves.
    """
    from fovea.core.evaluation import UNITS, ablation_lines, evaluate_run, headline, objective_results, rows
    from fovea.core.rundir import RunDir

    result = evaluate_run(run_dir, split=split, clips=clips, step=checkpoint,
                          modes=[m.strip() for m in modes.split(",") if m.strip()], ablations=ablate or [])
    typer.echo(f"{result['split']} split, {result['clips']} clips, checkpoint of step {result['step']} "
               f"(95 % bootstrap interval over clips)")
    for name, figures in objective_results(result).items():
        typer.echo(f"{name} ({UNITS.get(name, 'loss per clip')})")
        table = rows(figures)
        widths = [max(len(row[i]) for row in table) for i in range(3)]
        for row in table:
            typer.echo("  " + "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + f"  {row[3]}")
        for line in headline(figures):
            typer.echo(line)
    for line in ablation_lines(result):
        typer.echo(line)
    flops = result["flops_per_clip"]
    typer.echo(f"FLOPs per clip: {flops['forward'] / 1e9:.4g} G forward, {flops['train_step'] / 1e9:.4g} G training step")
    written = RunDir.resolve(run_dir).eval_file(split)
    typer.echo(f"wrote {written} and {written.with_suffix('.md').name}")


@app.command("caption")
@user_errors
def caption_command(
    run_dir: Path = typer.Argument(..., help="A run trained with the caption objective, e.g. runs/latest.",
                                   show_default=False),
    videos: Optional[List[Path]] = typer.Argument(None, help="Video files to caption (default: held-out clips).",
                                                  show_default=False),
    split: str = typer.Option("val", "--split", help="Without VIDEO: val (the held-out clips) or train."),
    clips: int = typer.Option(16, "--clips", min=1, help="Without VIDEO: caption at most N clips, evenly spread."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, help="Stop a caption after N tokens "
                                             "(default: the caption objective's max_tokens)."),
    checkpoint: Optional[int] = typer.Option(None, "--checkpoint", metavar="STEP", min=0,
                                             help="The checkpoint of this optimizer step (default: the newest)."),
) -> None:
    """Write captions with a trained model, frame by frame with its own queries, beside the reference ones.

    Greedy decoding in the autoregressive mode (one pass, KV cache); writes captions.jsonl into the run.
    """
    from fovea.core.captioning import caption_run

    path, rows = caption_run(run_dir, [str(v) for v in videos or []], split=split, clips=clips,
                             max_tokens=max_tokens, step=checkpoint)
    for row in rows:
        typer.echo(row["source"])
        typer.echo(f"  generated: {row['generated']}")
        if row["reference"] is not None:
            typer.echo(f"  reference: {row['reference']}")
    typer.echo(f"wrote {path}")


@config_app.command("show")
@user_errors
def config_show(config: Path = ConfigArgument, overrides: List[str] = SetOption) -> None:
    """Print the resolved config (defaults, file and overrides merged) as TOML."""
    from fovea.core.config import config_to_toml, load_config

    typer.echo(config_to_toml(load_config(config, overrides)), nl=False)


@config_app.command("validate")
@user_errors
def config_validate(config: Path = ConfigArgument, overrides: List[str] = SetOption) -> None:
    """Check a config (keys, types, plugin names and options) without building anything."""
    from fovea.core.config import load_config

    load_config(config, overrides)
    typer.echo(f"{config}: ok")


@app.command("plugins")
@user_errors
def plugins_command(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List every registered encoder, head, clip source (kind source), objective and tracker: where it comes from and what it is."""
    from fovea.core.plugins import all_parts

    parts = [part.as_dict() for part in all_parts()]
    if as_json:
        typer.echo(json.dumps(parts, indent=2))
        return
    widths = {key: max(len(key), *(len(p[key]) for p in parts)) for key in ("kind", "name", "source")}
    typer.echo("  ".join(key.upper().ljust(w) for key, w in widths.items()) + "  DESCRIPTION")
    for p in parts:
        typer.echo("  ".join(p[key].ljust(w) for key, w in widths.items()) + f"  {p['description']}")


@app.command("audit")
@user_errors
def audit_command(
    run_dir: Path = typer.Argument(..., help="A run directory, e.g. runs/latest.", show_default=False),
    spec: Optional[Path] = typer.Option(
        None, "--spec", help="The spec TOML to check against (default: run.spec in the run's config, else "
                             "configs/spec/foveated_vlm.toml)."),
    strict: bool = typer.Option(False, "--strict", help="Exit with code 1 when any check fails (❌)."),
) -> None:
    """Check a run against the spec from measurements and probes; writes audit.md and audit.json into it.

    The verdict counts also go to the run's experiment trackers ([run] trackers)."""
    from fovea.audit import audit_run, print_table, write_report

    evidence, checks = audit_run(run_dir, spec)
    write_report(evidence, checks)
    print_table(evidence, checks)
    if strict and any(check.status == "fail" for check in checks):
        raise typer.Exit(code=1)


@app.command("viz")
@user_errors
def viz_command(
    run_dir: Path = typer.Argument(..., help="A run directory, e.g. runs/latest.", show_default=False),
    clips: int = typer.Option(2, "--clips", min=1, help="Clips to draw attention and predictions for."),
) -> None:
    """Draw what the model looks at and predicts, and its loss and entropy curves; writes PNGs into RUN_DIR/viz/.

    The figures also go to the run's experiment trackers as images ([run] trackers)."""
    from fovea.viz import visualize

    for path in visualize(run_dir, clips):
        typer.echo(f"wrote {path}")


@app.command("sweep")
@user_errors
def sweep_command(
    config: Optional[Path] = optional_config("A TOML config, e.g. configs/quickstart.toml."),
    grid: List[str] = typer.Option([], "--grid", metavar="KEY=V1,V2",
                                   help="Values of one config key to sweep, comma-separated, typed like --set "
                                   "values (repeatable: the runs are the cross product)."),
    seeds: Optional[int] = typer.Option(None, "--seeds", metavar="N", min=1,
                                        help="Train every grid point with run.seed = 0 .. N-1."),
    jobs: int = typer.Option(1, "--jobs", metavar="J", min=1, help="Runs trained at a time (their output goes "
                             "to the sweep's logs/ when J > 1)."),
    overrides: List[str] = SetOption,
    sweeps_dir: Path = typer.Option(Path("sweeps"), "--sweeps-dir", help="Where sweep directories go."),
    new: bool = typer.Option(False, "--new", help="Start a new sweep even if this one was started before."),
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="SWEEP_DIR|latest",
                                          help="Continue this sweep, as recorded in its sweep.json."),
) -> None:
    """Train the cross product of --grid values (x --seeds), evaluate each run, then compare them.

    Writes sweeps/<timestamp>-<name>/ (sweep.json, the runs under runs/) and points sweeps/latest at it.
    Resumable: the same command again skips finished runs, resumes interrupted ones and evaluates what
    is not evaluated (README "Sweeps and comparisons").
    """
    from fovea.compare import compare, print_table
    from fovea.sweep import SweepDir, SweepInterrupted, failures, plan_sweep, run_sweep, start_sweep

    if resume is not None:
        if config is not None or grid or seeds is not None or overrides or new:
            raise FoveaError("--resume continues a sweep as its sweep.json records it: give no CONFIG, --grid, "
                             "--seeds, --set or --new")
        sweep = SweepDir.open(sweeps_dir / "latest" if str(resume) == "latest" else resume)
        typer.echo(f"continuing the sweep {sweep.path}")
    elif config is None:
        raise FoveaError("give a CONFIG and --grid KEY=V1,V2 to start a sweep, or --resume SWEEP_DIR|latest")
    else:
        if not grid and seeds is None:
            raise FoveaError("nothing to sweep: give --grid KEY=V1,V2 (repeatable) and/or --seeds N")
        plan = plan_sweep(config, grid, seeds, overrides)
        sweep = start_sweep(plan, sweeps_dir, new=new, echo=typer.echo)
    try:
        record = run_sweep(sweep, jobs, echo=typer.echo)
    except SweepInterrupted as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=128 + exc.signal_number) from None
    if any(run is not None for _, run in sweep.runs()):
        print_table(compare([sweep.path]))
    typer.echo(f"sweep: {sweep.path} ({record['status']}); compare again with `fovea compare {sweep.path}`")
    failed = failures(record)
    if failed:
        raise FoveaError(f"{len(failed)} of {len(record['runs'])} runs failed: {'; '.join(failed)}. Fix the cause "
                         f"and run the same command again: it retries them and keeps the rest")


@app.command("compare")
@user_errors
def compare_command(
    paths: List[Path] = typer.Argument(..., metavar="RUN_OR_SWEEP...", show_default=False,
                                       help="Run directories and sweep directories (runs/latest, sweeps/latest "
                                       "work); a sweep stands for its runs."),
    md: Optional[Path] = typer.Option(None, "--md", metavar="FILE", help="Also write the table as Markdown."),
    plot_file: Optional[Path] = typer.Option(None, "--plot", metavar="FILE",
                                             help="Also draw a PNG: improvement per setting with error bars, "
                                             "held-out loss curves."),
) -> None:
    """Compare runs: one row per setting (the config keys that differ), held-out losses of each mode,
    improvement and skill (mean ± s.d. over seeds, each run's 95 % interval), samples/s and steps."""
    from fovea.compare import compare, plot, print_table, render_markdown

    comparison = compare(paths)
    print_table(comparison)
    if md is not None:
        md.write_text(render_markdown(comparison), encoding="utf-8")
        typer.echo(f"wrote {md}")
    if plot_file is not None:
        typer.echo(f"wrote {plot(comparison, plot_file)}")


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
