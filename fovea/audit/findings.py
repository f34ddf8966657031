"""A finding of the audit: the ``Check`` record, ``verdict`` (the one way checks make one), its statuses and
sections, and how numbers and names are shown.

The record every check module builds (``fovea.audit.checks``) and the report renders
(``fovea.audit.report``); it depends on nothing else of the audit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["pass", "warn", "fail", "info"]
SYMBOLS: dict[str, str] = {"pass": "✅", "warn": "⚠️", "fail": "❌", "info": "ℹ️"}
LABELS: dict[str, str] = {"pass": "ALIGNED", "warn": "WARNING", "fail": "MISALIGNED", "info": "INFO"}
SEVERITY: dict[str, int] = {"info": 0, "pass": 1, "warn": 2, "fail": 3}

# (section id, title) in report order
SECTIONS: list[tuple[str, str]] = [
    ("components", "Component training status"),
    ("wiring", "Two-pass wiring"),
    ("query", "Query mechanism"),
    ("head", "Prediction head"),
    ("training", "Training configuration"),
    ("results", "Results"),
    ("resources", "Resources"),
]


@dataclass
class Check:
    """One finding: what the spec expects, what was observed, the evidence, and why it matters."""

    id: str                       # stable dotted id, e.g. "components.encoder", "wiring.no_target_leak"
    title: str
    section: str                  # one of SECTIONS' ids
    status: Status
    expected: str
    observed: str
    evidence: str = ""            # how it was measured, with the numbers
    reason: str = ""              # why it matters / the impact
    recommendation: str = ""      # what to do (non-passing checks)
    label: str = ""               # the word next to the symbol (MODIFIED, SIMPLIFIED, ...); default by status
    measurements: dict[str, Any] = field(default_factory=dict)   # raw numbers for audit.json

    @property
    def symbol(self) -> str:
        return SYMBOLS[self.status]

    @property
    def word(self) -> str:
        return self.label or LABELS[self.status]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "symbol": self.symbol, "label": self.word}


# a check's section is the first part of its id, but for these
SECTION_OF_PREFIX = {"learning": "training"}   # the learning probes: a failing one is a broken training


def verdict(check_id: str, title: str, ok: bool | Status, *, expected: str, observed: str, evidence: str = "",
            reason: str = "", fix: str = "", label: str = "", band: str = "", otherwise: Status = "fail",
            measurements: dict[str, Any] | None = None) -> Check:
    """A finding. ``ok``: True passes, False is ``otherwise`` (``fail``, or ``warn`` for a deviation); or the
    status itself. ``reason`` (why it matters), ``fix`` (what to do) and ``label`` (the word for a deviation:
    MODIFIED, SIMPLIFIED, …) are for a check that does not pass and dropped when it does; ``band`` is a word
    shown whatever the status (LEARNED, SOLID, …). The section is the id's first part (``learning.*``:
    training)."""
    status: Status = ("pass" if ok else otherwise) if isinstance(ok, bool) else ok
    if status == "pass":
        reason = fix = label = ""
    prefix = check_id.split(".")[0]
    return Check(check_id, title, SECTION_OF_PREFIX.get(prefix, prefix), status, expected, observed, evidence,
                 reason, fix, band or label, measurements if measurements is not None else {})


def merge_fixes(checks: list[Check], template: str) -> None:
    """One recommendation for a group of like checks: ``template`` with their fixes joined, on the first."""
    items = [c for c in checks if c.recommendation and c.status != "pass"]
    if items:
        fixes = ", ".join(c.recommendation for c in items)
        for c in items:
            c.recommendation = ""
        items[0].recommendation = template.format(fixes)


def fmt(value: Any) -> str:
    """A number or value as the report shows it."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "unset"
    if isinstance(value, float):
        if value == 0 or math.isinf(value) or math.isnan(value):
            return str(value)
        return f"{value:.3g}" if abs(value) < 1e-3 or abs(value) >= 1e5 else f"{value:.6g}"
    return str(value)


def pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def count(n: int) -> str:
    """A parameter count: 1.2 M, 3.4 k, 12."""
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)


def names(items: list[str], limit: int = 3) -> str:
    """The first ``limit`` names in backquotes, and how many more."""
    shown = ", ".join(f"`{n}`" for n in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
