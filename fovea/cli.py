"""The ``fovea`` command line: thin typer commands that parse, load the config and call the library.

User mistakes (``FoveaError``) print one ``error:`` line and exit with code 2, without a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

from fovea.core.errors import FoveaError

app = typer.Typer(
    name="fovea",
    help="Train, profile and audit foveated video vision-language models.",
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


def user_errors(command: Callable) -> Callable:
    """Show a ``FoveaError`` as one line on stderr and exit 2."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FoveaError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from None
    return wrapper


@app.command("run")
@user_errors
def run_command(config: Path = ConfigArgument, overrides: List[str] = SetOption) -> None:
    """Train the model a config describes; writes runs/<timestamp>-<name>/ and points runs/latest at it."""
    from fovea.core.config import load_config
    from fovea.core.train import train

    cfg = load_config(config, overrides)
    run = train(cfg)
    last = run.read_metrics()[-1]
    typer.echo(f"run: {run.path}\nstep {last['step']}: loss_fine {last['loss_fine']:.4f}  "
               f"loss_coarse {last['loss_coarse']:.4f}  ratio {last['ratio']:.3f}")


@app.command("precompute")
@user_errors
def precompute_command(config: Path = ConfigArgument, overrides: List[str] = SetOption) -> None:
    """Decode every clip once and cache frames + VAE latents (resumable; `fovea run` reuses the cache)."""
    from fovea.core.cache import build_cache
    from fovea.core.config import load_config
    from fovea.core.train import resolve_device

    cfg = load_config(config, overrides)
    report = build_cache(cfg, resolve_device(cfg.run.device), progress=cfg.run.progress).report()
    typer.echo(f"cache: {report['cache']}\nclips: {report['num_clips']}  skipped: {report['num_skipped']}")
    for item in report["skipped"]:
        typer.echo(f"  skipped {item['source'] or item['index']}: {item['reason']}")


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
    """List every registered encoder, head and loader with its source and description."""
    from fovea.core.plugins import all_parts

    parts = [part.as_dict() for part in all_parts()]
    if as_json:
        typer.echo(json.dumps(parts, indent=2))
        return
    widths = {key: max(len(key), *(len(p[key]) for p in parts)) for key in ("kind", "name", "source")}
    typer.echo("  ".join(key.upper().ljust(w) for key, w in widths.items()) + "  DESCRIPTION")
    for p in parts:
        typer.echo("  ".join(p[key].ljust(w) for key, w in widths.items()) + f"  {p['description']}")


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
