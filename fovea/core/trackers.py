"""Experiment trackers: starting the ones a config names, and a run's trackers as one.

``[run] trackers = ["tensorboard", "wandb", "mlflow"]`` copies what a run records to those services: the
resolved config (flattened to dotted keys), every ``metrics.jsonl`` row as it is appended (training rows as
``train/<key>``, held-out rows as ``val/<key>``, at their step), ``summary.json`` (``summary/<key>``),
``fovea audit``'s verdict counts (``audit/<status>``) and ``fovea viz``'s figures as images. The run
directory stays the record; a tracker is a copy to browse.

**One tracker run per fovea run.** ``start`` returns a record (the tracker's run id, its store) that the run
directory keeps (``RunDir.write_trackers``, ``trackers.json``); ``fovea run --resume``, ``fovea audit`` and
``fovea viz`` hand it back, so they continue the same tracker run. A resumed run logs again the rows after
its checkpoint (``Session.resume_step``), as ``metrics.jsonl`` does, after handing every tracker the rows
kept up to the checkpoint again (what a killed process's tracker had not flushed is lost with it); each tracker
logs the rows at steps its run does not hold, so every step shows once (what each one shows: its module's
docstring, and the README's "Tracking").

**Failures.** Only rank 0 logs. A tracker that cannot start (its package missing, bad credentials, no
network) is a ``FoveaError`` before training starts, and nothing is written; one that fails during the run
is one warning, and training goes on without it (``metrics.jsonl`` stays complete).

The contract a ``tracker`` part keeps (``Tracker``) and what it is told (``Session``) live in
``fovea.core.contracts``; they are importable from here too, as plugins written before that move import them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from fovea.core.contracts import Session, Tracker
from fovea.core.errors import FoveaError
from fovea.core.plugins import get_part

__all__ = ["RunTrackers", "Session", "Tracker", "flat_params", "flat_values", "numbers", "report_to_trackers",
           "require_trackers", "start_trackers"]


def flat_params(config) -> dict[str, Any]:
    """The resolved config as ``{"training.lr": 0.0001, …}``: scalars as they are, lists as JSON text."""
    def walk(table: dict[str, Any], prefix: str) -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for key, value in table.items():
            if isinstance(value, dict):
                flat.update(walk(value, f"{prefix}{key}."))
            else:
                flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
        return flat

    return walk(config.model_dump(mode="json", exclude_none=True), "")


def flat_values(table: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Numbers and strings of a nested JSON object under dotted keys (``summary/first.loss``); the rest left out."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_values(value, f"{dotted}."))
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
            flat[dotted] = value
        elif isinstance(value, bool):
            flat[dotted] = int(value)
    return flat


def numbers(row: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics row but its step (``None``, from skipped steps, and strings left out)."""
    return {key: float(value) for key, value in row.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}


def require_package(name: str, note: str = "") -> None:
    """A ``FoveaError`` saying how to install ``name`` when the tracker of that name cannot import its package."""
    import importlib

    try:
        importlib.import_module(name)
    except ImportError:
        raise FoveaError(f"the {name} tracker needs the {name} package: pip install 'fovea[{name}]' (or pip install "
                         f"{name}), or leave it out of run.trackers{note}") from None


def require_trackers(config) -> None:
    """Every tracker of ``config`` can be imported: else a ``FoveaError`` saying what to install (before any work)."""
    for name in config.run.active_trackers:
        get_part("tracker", name).cls.require(config.trackers[name].options)


class RunTrackers:
    """A run's started trackers as one: each call goes to every tracker; one that raises is turned off with
    one warning and the others go on. Empty (every call a no-op) without trackers, or off rank 0."""

    def __init__(self, started: dict[str, Tracker] | None = None):
        self.active: dict[str, Tracker] = dict(started or {})

    def __bool__(self) -> bool:
        return bool(self.active)

    def _each(self, what: str, call) -> None:
        for name, tracker in list(self.active.items()):
            try:
                call(tracker)
            except Exception as exc:   # a tracker's failure must never stop training or lose metrics
                del self.active[name]
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                print(f"warning: tracker '{name}' failed ({what}: {type(exc).__name__}: {detail}); it is off for "
                      f"the rest of this run, which goes on (metrics.jsonl stays complete)", file=sys.stderr)

    def log_metrics(self, row: dict[str, Any]) -> None:
        self._each(f"logging step {row.get('step')}", lambda tracker: tracker.log_metrics(row))

    def log_summary(self, values: dict[str, Any], step: int) -> None:
        self._each("logging the summary", lambda tracker: tracker.log_summary(values, step))

    def log_images(self, images: dict[str, Path], step: int) -> None:
        self._each("logging the figures", lambda tracker: tracker.log_images(images, step))

    def finish(self, status: str) -> None:
        self._each("finishing", lambda tracker: tracker.finish(status))
        self.active.clear()


def start_trackers(config, run, resume_step: int | None = None, purpose: str = "train") -> RunTrackers:
    """Start (or continue) the trackers of ``config`` for ``run`` (a ``RunDir``) and keep their records in it.

    A tracker that cannot start is a ``FoveaError`` naming it (those already started are closed first).
    Call on rank 0 only.
    """
    names = config.run.active_trackers
    if not names:
        return RunTrackers()
    require_trackers(config)
    params, kept = flat_params(config), run.read_trackers()
    started: dict[str, Tracker] = {}
    records: dict[str, dict[str, Any]] = {}
    for name in names:
        tracker = get_part("tracker", name).cls(config.trackers[name].options)
        session = Session(run.path, run.tracker_dir(name), run.path.name, params, kept.get(name), resume_step, purpose)
        try:
            records[name] = tracker.start(session)
        except Exception as exc:
            RunTrackers(started).finish("failed")
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FoveaError(f"tracker '{name}' could not start: {detail}. Fix its settings ([trackers.{name}], its "
                             f"environment variables, the network), or leave it out of run.trackers") from None
        started[name] = tracker
    run.write_trackers(records)
    return RunTrackers(started)


def report_to_trackers(run, config, values: dict[str, Any] | None = None,
                       images: dict[str, Path] | None = None) -> None:
    """Add ``values`` (``log_summary``) and ``images`` to the tracker runs of a finished ``run`` (``fovea audit``,
    ``fovea viz``): a tracker that fails is one warning, never an error (the run's own files are written)."""
    if not config.run.active_trackers:
        return
    metrics = run.read_metrics()
    step = metrics[-1]["step"] if metrics else config.training.max_steps
    try:
        trackers = start_trackers(config, run, purpose="report")
    except FoveaError as exc:
        print(f"warning: {exc}; the run directory has everything", file=sys.stderr)
        return
    if values:
        trackers.log_summary(values, step)
    if images:
        trackers.log_images(images, step)
    trackers.finish("finished")
