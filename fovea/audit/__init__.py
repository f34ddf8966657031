"""Checking runs against the spec: ``fovea audit RUN_DIR``.

``spec`` (the machine-readable spec and its schema), ``evidence`` (what the checks look at: a run's files,
its rebuilt models, a probe batch), ``probes/`` (measurements of the real model: wiring, query mechanism,
head, learning), ``findings`` (the ``Check`` record and ``verdict``), ``checks/`` (one module per report
section, each returning ``Check`` records), ``run`` (read a run directory into ``Evidence``, run the
checks: ``audit_run``), ``report`` (audit.md, audit.json, the terminal table). ``fovea profile``
(``fovea.profile``) writes the ``profile.json`` the audit reads. Heavy imports stay inside the
functions, so importing this package is cheap.
"""

from __future__ import annotations


def audit_run(run_dir, spec_path=None, groups=None):
    """Audit a run directory: ``(evidence, checks)``; see ``fovea.audit.run.audit_run``."""
    from fovea.audit.run import audit_run as _audit_run

    return _audit_run(run_dir, spec_path, groups)


def write_report(evidence, checks) -> None:
    """Write ``audit.md`` and ``audit.json`` into the run directory (atomically), and give the verdict
    counts and each section's status to the run's experiment trackers (``[run] trackers``)."""
    from fovea.audit.report import to_json
    from fovea.audit.report import write_report as _write_report
    from fovea.core.trackers import flat_values, report_to_trackers

    _write_report(evidence, checks)
    report = to_json(evidence, checks)
    report_to_trackers(evidence.run, evidence.config,
                       values=flat_values({"counts": report["counts"], "sections": report["sections"]}, "audit/"))


def print_table(evidence, checks, console=None) -> None:
    """Print one row per check on the terminal."""
    from fovea.audit.report import print_table as _print_table

    _print_table(evidence, checks, console)


__all__ = ["audit_run", "print_table", "write_report"]
