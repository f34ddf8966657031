"""A finding of the audit: the ``Check`` record, its statuses and sections, and how numbers are shown.

The record every check module builds (``fovea.audit.checks``, ``fovea.audit.learning``) and the report
renders (``fovea.audit.report``); it depends on nothing else of the audit.
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


def _fmt(value: Any) -> str:
    """A number or value as the report shows it."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "unset"
    if isinstance(value, float):
        if value == 0 or math.isinf(value) or math.isnan(value):
            return str(value)
        return f"{value:.3g}" if abs(value) < 1e-3 or abs(value) >= 1e5 else f"{value:.6g}"
    return str(value)


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"
