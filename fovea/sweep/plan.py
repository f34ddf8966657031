"""A sweep's plan: the ``--grid`` items parsed, every run's overrides and name, each run's config checked.

``plan_sweep`` types each grid value by the config schema (as a ``--set`` value is) and loads every run's
config before anything trains; ``SweepPlan.identity`` decides which sweep directory a command continues.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from fovea.core.errors import ConfigError

MAX_NAME = 100                       # RunConfig.name's max_length
SET_BY_SWEEP = ("run.output_dir",)   # each run's output_dir is the sweep's runs/


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its config is the sweep's ``config.toml`` with ``overrides`` applied."""

    name: str                  # run.name, unique within the sweep
    grid: dict[str, Any]       # grid key -> its value in this run, typed by the schema
    seed: int | None           # run.seed when the sweep has --seeds
    overrides: list[str]       # --set items: the sweep's --set, the grid values, run.seed and run.name


@dataclass(frozen=True)
class SweepPlan:
    """What ``fovea sweep CONFIG --grid ...`` trains, validated: every run's config loads."""

    config_path: Path
    config_bytes: bytes
    name: str                  # run.name of the config (after --set): names the sweep and prefixes its runs
    grid: dict[str, list[Any]]
    seeds: int | None
    sets: list[str]
    runs: list[PlannedRun]
    raw_grid: list[tuple[str, list[str]]]   # the grid as typed on the command line

    @property
    def identity(self) -> str:
        """SHA-256 of the config file's bytes, the typed grid, the seeds and the --set items."""
        digest = hashlib.sha256(self.config_bytes)
        digest.update(json.dumps({"grid": [[key, values] for key, values in self.grid.items()],
                                  "seeds": self.seeds, "sets": self.sets}, sort_keys=True).encode())
        return digest.hexdigest()

    def command(self) -> str:
        """The ``fovea sweep`` command line that makes this plan (recorded in sweep.json)."""
        args = ["fovea", "sweep", str(self.config_path)]
        for key, values in self.raw_grid:
            args += ["--grid", f"{key}={','.join(values)}"]
        if self.seeds is not None:
            args += ["--seeds", str(self.seeds)]
        for item in self.sets:
            args += ["--set", item]
        return shlex.join(args)


def parse_grid(items: Iterable[str]) -> list[tuple[str, list[str]]]:
    """``["training.lr=1e-3,2e-3"]`` -> ``[("training.lr", ["1e-3", "2e-3"])]``: the syntax only.

    Values are comma-separated scalars (a list value cannot be a grid value); each is typed later by the
    schema, as a ``--set`` value is.
    """
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        values = [value.strip() for value in raw.split(",")]
        if not sep or not key or not all(part.strip() for part in key.split(".")):
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2 with a dotted key, e.g. "
                              f"--grid training.lr=1e-3,2e-3")
        if not all(values):
            raise ConfigError(f"--grid {item!r}: an empty value; give comma-separated values, e.g. {key}=1,2 "
                              f"(a list cannot be a grid value)")
        if len(set(values)) < len(values):
            raise ConfigError(f"--grid {item!r}: a value appears twice")
        if any(key == other for other, _ in grid):
            raise ConfigError(f"--grid {key}: given twice; put every value of a key in one --grid {key}=V1,V2")
        if key in SET_BY_SWEEP or key == "run.name":
            raise ConfigError(f"--grid {key}: a sweep names its runs and puts them in its own directory "
                              f"(--sweeps-dir); {key} cannot be swept")
        grid.append((key, values))
    return grid


def plan_sweep(config: Path, grid: Iterable[str], seeds: int | None = None, sets: Iterable[str] = ()) -> SweepPlan:
    """Parse and validate a sweep: every grid value, then every run's whole config (``load_config``),
    before anything trains. A bad key or value is a ``ConfigError`` naming the ``--grid`` item."""
    from fovea.core.config import load_config, parse_override

    sets = list(sets)
    raw_grid = parse_grid(grid)
    set_keys = {".".join(parse_override(item)[0]) for item in sets}
    if seeds is not None and any(key == "run.seed" for key, _ in raw_grid):
        raise ConfigError("--grid run.seed and --seeds: give the seeds one way")
    if set_keys & set(SET_BY_SWEEP):
        raise ConfigError("--set run.output_dir: a sweep's runs go into its own directory; choose where sweeps go "
                          "with --sweeps-dir")
    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds {seeds}: give at least 1")
    base = load_config(config, sets)
    for key, values in raw_grid:   # each value alone first, so an error names its --grid item
        for value in values:
            try:
                load_config(config, sets + [f"{key}={value}"])
            except ConfigError as exc:
                raise ConfigError(f"--grid {key}={','.join(values)}: {exc}") from None

    names: set[str] = set()
    runs: list[PlannedRun] = []
    typed_grid: dict[str, list[Any]] = {key: [] for key, _ in raw_grid}
    for combination in itertools.product(*[values for _, values in raw_grid]):
        assignment = [f"{key}={value}" for (key, _), value in zip(raw_grid, combination)]
        try:
            resolved = load_config(config, sets + assignment).model_dump(mode="json")
        except ConfigError as exc:
            raise ConfigError(f"--grid combination {', '.join(assignment)}: {exc}") from None
        typed = {key: _lookup(resolved, key) for key, _ in raw_grid}
        for key, value in typed.items():
            if value not in typed_grid[key]:
                typed_grid[key].append(value)
        for seed in (range(seeds) if seeds is not None else [None]):
            stem = "-".join([base.run.name] + [f"{key}_{_name_part(value, raw)}" for (key, _), raw, value
                                               in zip(raw_grid, combination, typed.values())]
                            + ([f"seed{seed}"] if seed is not None else []))
            name = unique_name(stem, names)
            overrides = sets + assignment + ([f"run.seed={seed}"] if seed is not None else []) \
                + [f"run.name={json.dumps(name)}"]
            runs.append(PlannedRun(name, typed, seed, overrides))
    for run in runs:   # the seed and the name are valid too: the last check before anything runs
        load_config(config, run.overrides)
    return SweepPlan(Path(config), Path(config).read_bytes(), base.run.name, typed_grid, seeds, sets, runs, raw_grid)


def _lookup(table: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        table = table.get(key) if isinstance(table, dict) else None
    return table


def _name_part(value: Any, raw: str) -> str:
    return value if isinstance(value, str) else raw


def unique_name(stem: str, taken: set[str]) -> str:
    """``stem`` made a valid ``run.name`` (letters, digits, ``.``, ``_``, ``-``; at most ``MAX_NAME``
    characters), not in ``taken``."""
    name = re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9._-]+", "_", stem)).strip("._-") or "run"
    if len(name) > MAX_NAME:   # keep it readable and unique: a cut plus a hash of the whole
        name = f"{name[:MAX_NAME - 9]}-{hashlib.sha256(stem.encode()).hexdigest()[:8]}"
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name[:MAX_NAME - 1 - len(str(n))]}-{n}"
    taken.add(candidate)
    return candidate
