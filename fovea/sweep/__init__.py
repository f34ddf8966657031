"""``fovea sweep``: train the cross product of a grid of config values (x seeds), resumably, and evaluate each run.

A sweep directory ``<sweeps dir>/<timestamp>-<name>/`` (``SweepDir``; ``<sweeps dir>/latest`` points at
the newest) holds

- ``config.toml``: the config file as it was given (its bytes); every run of the sweep starts from it;
- ``sweep.json``: the sweep's identity, grid, seeds and overrides, and each run: its name, grid values,
  seed, the ``--set`` items that make its config, its directory and status (``SWEEP_FORMAT``);
- ``runs/``: the runs, ordinary run directories ``<timestamp>-<run name>/`` (``RunDir``; the run's
  ``run.output_dir`` is this directory, so ``runs/latest`` names the newest run of the sweep);
- ``logs/<run name>.log``: each run's output when runs train side by side (``--jobs`` > 1).

Every run is a ``fovea run`` process, then a ``fovea eval`` process; up to ``jobs`` at a time. A sweep
started again continues: a run with ``summary.json`` is not trained again, one with a checkpoint and no
summary continues from it (``fovea run --resume RUN CONFIG --set ...`` with the sweep's config and the
run's overrides), one stopped before its first checkpoint starts again, and a run whose ``eval.json``
is not of its newest checkpoint is evaluated. The filesystem is the truth; ``sweep.json`` records it.

**Which sweep a command continues.** A sweep's identity is the SHA-256 of the config file's bytes, the
grid (keys and values as typed by the schema), ``--seeds`` and the ``--set`` items: the same command
continues the newest sweep of that identity under the sweeps directory (``--new`` starts another);
an edited config file is another sweep. ``fovea sweep --resume DIR`` continues the sweep in DIR
from its own ``config.toml`` and ``sweep.json``.

**Stopping.** SIGINT/SIGTERM to the sweep reach every run it started (each in its own session, so a
Ctrl-C is delivered once): each saves a checkpoint and exits, then the sweep records them as
interrupted and exits 130/143. On Linux a run also gets SIGTERM when the sweep process dies (even by
SIGKILL). The runs a sweep started hold its lock (``.lock``, inherited), so a sweep started again
waits for them to stop before it resumes them.
"""

from fovea.sweep.plan import PlannedRun, SweepPlan, parse_grid, plan_sweep, unique_name
from fovea.sweep.runner import SweepInterrupted, failures, needs_eval, run_sweep, start_sweep
from fovea.sweep.sweepdir import SweepDir

__all__ = ["PlannedRun", "SweepDir", "SweepInterrupted", "SweepPlan", "failures", "needs_eval", "parse_grid",
           "plan_sweep", "run_sweep", "start_sweep", "unique_name"]
