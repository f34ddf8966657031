"""The machine-readable spec: what ``fovea audit`` checks a run against (SPEC.md as data).

``configs/spec/foveated_vlm.toml`` is SPEC.md's requirements as TOML; this module's pydantic models
are its schema (every key documented under it, unknown keys are errors). Research values (component
states, training values, bands) have no defaults: a spec states them. The audit's own probe
thresholds have defaults.

Which spec a run is audited against, first match wins: ``--spec FILE`` > the run config's
``[run] spec`` > ``configs/spec/foveated_vlm.toml``. A relative path is looked up in the current
directory, then in the fovea checkout; a spec that ships with fovea (``fovea/audit/specs/``, package
data, the same file as ``configs/spec/``) is found by its file name, so an installed fovea has its
default spec.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from fovea.core.config import format_validation_error
from fovea.core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_SPEC = "configs/spec/foveated_vlm.toml"
PACKAGED_SPECS = Path(__file__).parent / "specs"
REPO_ROOT = Path(__file__).resolve().parents[2]


class SpecTable(BaseModel):
    """A spec table: unknown keys are errors, every field documented by the docstring under it."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


class Component(SpecTable):
    description: str
    """What the part is, as SPEC.md "Components" names it."""
    state: Literal["trainable", "frozen"]
    """Whether the part's weights must train."""
    location: Literal["model", "vae"] = "model"
    """Where its parameters live: in the two-pass model (named by ``modules``), or the target VAE."""
    modules: list[str] = []
    """Names of the model's children or parameters that make up the part (``encoder``, ``q_static``, …)."""
    pretrained: str | None = None
    """The spec's weights (a hub id); unset when the part starts from random init."""
    pretrained_key: str | None = None
    """The config key that names the part's weights, e.g. ``model.encoder.pretrained``."""
    architecture: dict[str, Any] = {}
    """Architecture values the part's (transformers/diffusers) config must have, e.g. ``hidden_size``; a
    ``model_type`` that differs (a DINOv2 backbone for the spec's DINOv3) is reported as another model."""

    @model_validator(mode="after")
    def _located(self):
        if self.location == "model" and not self.modules:
            raise ValueError("a component inside the model needs `modules` (its children or parameters)")
        if self.location == "vae" and self.modules:
            raise ValueError("the VAE is not part of the model: leave `modules` out")
        return self


class QuerySpec(SpecTable):
    encoder: str
    """The spec's query mechanism (a registered encoder name): ``deep`` masked injection."""
    simplified: list[str] = []
    """Encoders that implement a known simplification of it (reported as ⚠️ simplified): ``posthoc``."""
    options: dict[str, Any] = {}
    """The spec encoder's options that the spec fixes (compared only when that encoder is used)."""
    init_std: float = Field(gt=0)
    """Initial standard deviation of ``q_static`` and ``q_init`` (SPEC: 1.0)."""
    input_proj_bias: bool
    """Whether ``query_input_proj`` has a bias (SPEC: no: a bias drowns a small query)."""
    correlation_fail: float = Field(0.999, gt=0, le=1)
    """Mean correlation of the encoder's outputs for two different queries at or above which the query
    counts as ignored (❌; SPEC "Failure modes": correlation ≈ 1)."""
    correlation_warn: float = Field(0.95, gt=0, le=1)
    """Mean correlation at or above which the outputs barely depend on the query (⚠️)."""
    entropy_warn_ratio: float = Field(0.95, gt=0, le=1)
    """Attention entropy / log(number of tokens) at or above which attention counts as near-uniform (⚠️)."""


class WiringSpec(SpecTable):
    tolerance: float = Field(1e-5, gt=0)
    """Relative size of a change the wiring probes treat as float noise rather than a dependence."""


class HeadSpec(SpecTable):
    name: str
    """The spec's prediction head (a registered head name): ``film``."""
    options: dict[str, Any] = {}
    """The spec head's options (compared only when that head is used)."""
    prediction: Literal["full", "residual"]
    """What the head predicts: the full next latent (SPEC) or a residual on the previous one."""


class TrainingValue(SpecTable):
    """One training value the run's config must have (check ``training.<name>``)."""

    key: str | None = None
    """The config key that holds it, e.g. ``training.batch_size`` or ``data.num_frames``; unset only for the
    effective batch, which the audit computes (``batch_size × grad_accum × processes``)."""
    value: bool | int | float | str
    """The spec's value."""
    title: str
    """What the value is, as the report names it."""
    impact: str
    """What a run with another value changes (the report's reason when it differs)."""


class TrainingSpec(SpecTable):
    values: dict[str, TrainingValue]
    """``[training.values.<name>]``: every value compared with the run's config, in report order."""
    max_epochs: float = Field(gt=0)
    """Most passes over the training clips: ``max_steps × effective batch / clips`` (SPEC: ≤ 1)."""

    @model_validator(mode="after")
    def _effective(self):
        keyless = [name for name, entry in self.values.items() if entry.key is None and name != "effective_batch"]
        if keyless:
            raise ValueError(f"values.{keyless[0]}: needs `key`, the config key that holds it")
        parts = [self.values.get(name) for name in ("effective_batch", "batch_size", "grad_accum")]
        if all(parts) and parts[0].value != parts[1].value * parts[2].value:
            raise ValueError(f"effective_batch ({parts[0].value}) must equal batch_size × grad_accum "
                             f"({parts[1].value} × {parts[2].value})")
        return self


class PrecisionSpec(SpecTable):
    dtype: Literal["float32", "bfloat16"]
    """Autocast dtype (``precision.dtype``)."""


class ResultsSpec(SpecTable):
    marginal: float
    """Improvement ``(loss_coarse − loss_fine) / loss_coarse`` below which foveation hurts (SPEC: 0)."""
    solid: float
    """Improvement from which the result is solid rather than marginal (SPEC: 0.05)."""
    strong: float
    """Improvement from which the result is strong (SPEC: 0.15)."""
    equal_decimals: int = Field(3, ge=1)
    """loss_fine equal to loss_coarse to this many decimals is the failure modes' symptom (⚠️)."""
    skill_low: float = Field(0.1, ge=0.0)
    """Held-out skill ``1 − loss_fine / best trivial baseline`` below which the model learned little beyond
    the mean or a copy of the last frame (⚠️); at or below 0 it learned nothing they do not know (❌)."""
    overfit_ratio: float = Field(1.25, ge=1.0)
    """Held-out loss_fine above this multiple of the training loss_fine is a sign of overfitting (⚠️)."""
    autoregressive_gap: float = Field(0.1, ge=0.0)
    """A deployed (autoregressive) loss more than this fraction above the two-pass loss is ⚠️ (train/inference gap)."""

    @model_validator(mode="after")
    def _ordered(self):
        if not self.marginal <= self.solid <= self.strong:
            raise ValueError(f"bands must be ordered: marginal ({self.marginal}) ≤ solid ({self.solid}) "
                             f"≤ strong ({self.strong})")
        return self


class ResourcesSpec(SpecTable):
    memory_gb: tuple[float, float]
    """Estimated peak GPU memory, low and high, in GB at ``memory_batch_size`` (SPEC: 15–18)."""
    memory_batch_size: int = Field(ge=1)
    """The batch size the memory estimate is for (SPEC: 2)."""
    data_wait_share_max: float = Field(0.2, ge=0, le=1)
    """Largest acceptable share of step time spent waiting for data (``profile.json`` ``data_wait_share``)."""
    gpu_util_min: float = Field(0.5, ge=0, le=1)
    """Mean GPU utilisation below which the run is flagged (⚠️), as a fraction."""
    gpu_util_fail_below: float = Field(0.1, ge=0, le=1)
    """Mean GPU utilisation below which the GPU is idle for practical purposes (❌), as a fraction."""


class LearningSpec(SpecTable):
    init_ratio_max: float = Field(3.0, gt=0)
    """Initial loss / the loss of zeros (latents) or of uniform tokens (captions) on the probe batch, above which the initialisation is off."""
    overfit_steps: int = Field(60, ge=1)
    """Optimizer steps a copy of the model trains on the probe batch alone."""
    overfit_drop: float = Field(0.5, gt=0, lt=1)
    """Share of its loss that copy must lose in those steps (otherwise something is broken before any data question)."""
    blank_frames_min: float = Field(0.0)
    """Relative rise of the loss with blank frames below which the frames are taken as unused."""


class Spec(SpecTable):
    """The whole spec: one table per area the audit checks."""

    name: str
    """Short name of the spec, shown in the report."""
    source: str = ""
    """The document the values come from."""
    components: dict[str, Component]
    """``[components.<name>]``: every part whose trainability is checked; the name is the check's id."""
    query: QuerySpec
    """``[query]``: the query mechanism and its probes' thresholds."""
    wiring: WiringSpec = WiringSpec()
    """``[wiring]``: the two-pass wiring probes."""
    head: HeadSpec
    """``[head]``: the prediction head."""
    training: TrainingSpec
    """``[training]``: phase-1 training values, each naming its config key."""
    precision: PrecisionSpec
    """``[precision]``: autocast dtype."""
    results: ResultsSpec
    """``[results]``: the success metric's bands."""
    resources: ResourcesSpec
    """``[resources]``: memory estimate and utilisation thresholds (read from ``profile.json``)."""
    learning: LearningSpec = LearningSpec()
    """``[learning]``: thresholds of the learning probes (fovea's additions to the spec)."""
    requirements: dict[str, Literal["must", "should", "info"]] = {}
    """``[requirements]``: the level of a check (by id): a violated ``must`` is ❌ whatever the check would say,
    a violated ``should`` ⚠️, ``info`` ℹ️. Checks not listed keep the level the check gives."""
    _path: Path | None = PrivateAttr(None)

    @property
    def path(self) -> Path | None:
        """The file the spec was read from (set by ``load_spec``)."""
        return self._path

    @model_validator(mode="after")
    def _one_vae(self):
        if sum(c.location == "vae" for c in self.components.values()) > 1:
            raise ValueError("at most one component can have location = 'vae'")
        return self


def config_value(config: Any, dotted: str) -> Any:
    """``model.encoder.pretrained`` -> its value in the config (plugin options included); None if absent."""
    value = config
    for key in dotted.split("."):
        value = getattr(value, key, None) if not isinstance(value, dict) else value.get(key)
        if value is None:
            return None
    return value


def same(a: Any, b: Any) -> bool:
    """A run's value equal to the spec's: numbers within float rounding, lists item by item."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return a == b


def resolve_spec_path(name: str | Path) -> Path:
    """The spec file ``name`` names: as given, in the fovea checkout, or shipped with fovea."""
    path = Path(name).expanduser()
    candidates = [path] if path.is_absolute() else [path, REPO_ROOT / path, PACKAGED_SPECS / path.name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"spec file not found: {name} (looked in {looked}). Pass an existing TOML spec with "
                      f"--spec FILE, e.g. {DEFAULT_SPEC}.")


def load_spec(path: str | Path | None = None) -> Spec:
    """Read and validate a spec TOML (default: ``configs/spec/foveated_vlm.toml``); ``ConfigError`` on mistakes."""
    resolved = resolve_spec_path(path if path is not None else DEFAULT_SPEC)
    try:
        data = tomllib.loads(resolved.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{resolved}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{resolved}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, Spec, f"spec {resolved}")) from None
    spec._path = resolved
    return spec
