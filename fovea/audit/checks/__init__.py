"""The audit's checks: one module per section of the report, each function returning ``Check`` records.

Every check compares what the spec expects with what was *measured* on the run (``fovea.audit.probes`` on
its rebuilt model and a real batch, its metrics, its files), never with what the code says, and makes its
finding with ``fovea.audit.findings.verdict``. Statuses:

- ✅ ``pass``: aligned with the spec.
- ⚠️ ``warn``: a deliberate or harmless deviation (a changed training value, the post-hoc encoder, a
  debug-size model), or a symptom worth a look (near-uniform attention, a marginal result).
- ❌ ``fail``: the run contradicts the spec: a component with the wrong trainability, broken two-pass
  wiring, a prediction that sees its target, a query the encoder ignores, patch features that depend
  on the query, a residual head, an idle GPU.
- ℹ️ ``info``: not measurable from this run; the record says how to measure it.

Sections, in report order: ``components``, ``wiring``, ``query``, ``head``, ``training`` (with ``learning``:
the loss's composition and the learning probes), ``results``, ``resources``. Thresholds that are the spec's
live in the spec file; ``apply_level`` gives a violated check the level the spec's ``[requirements]`` set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from fovea.audit.checks.components import check_components, check_components_models
from fovea.audit.checks.head import check_head
from fovea.audit.checks.learning import check_learning, check_loss_composition
from fovea.audit.checks.query import check_query
from fovea.audit.checks.resources import check_resources
from fovea.audit.checks.results import check_results
from fovea.audit.checks.training import check_execution, check_training
from fovea.audit.checks.wiring import check_wiring
from fovea.audit.findings import Check

if TYPE_CHECKING:
    from fovea.audit.evidence import Evidence

CHECK_GROUPS: list[Callable[[Evidence], list[Check]]] = [
    check_components, check_wiring, check_query, check_head, check_training, check_loss_composition,
    check_learning, check_results, check_resources]

LEVEL_WORDS = {"must": "a MUST of the spec", "should": "a SHOULD of the spec", "info": "informative in this spec"}


def run_checks(ev: Evidence, groups: list[Callable[[Evidence], list[Check]]] | None = None) -> list[Check]:
    """The check groups (default: all, in report order) on one run's evidence, at the spec's levels."""
    checks: list[Check] = []
    for group in groups or CHECK_GROUPS:
        checks += group(ev)
    return [apply_level(check, ev.spec.requirements) for check in checks]


def apply_level(check: Check, requirements: dict[str, str]) -> Check:
    """A violated (⚠️/❌) check at the level the spec gives it: must ❌, should ⚠️, info ℹ️; passes unchanged."""
    level = requirements.get(check.id)
    if level is None or check.status not in ("warn", "fail"):
        return check
    status = {"must": "fail", "should": "warn", "info": "info"}[level]
    if status != check.status:
        check.reason = f"{LEVEL_WORDS[level]}: " + (check.reason or "violated")
        check.status = status
    return check


__all__ = ["CHECK_GROUPS", "apply_level", "check_components", "check_components_models", "check_execution",
           "check_head", "check_learning", "check_loss_composition", "check_query", "check_resources",
           "check_results", "check_training", "check_wiring", "run_checks"]
