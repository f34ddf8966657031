"""What the checks look at: the ``Evidence`` of one run (its files, its rebuilt models and a real batch).

``fovea.audit.run`` gathers it (``load_evidence``); the checks (``fovea.audit.checks``) and the report read it.
It depends on nothing of the audit but the spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from fovea.audit.spec import Spec
    from fovea.core.config import FoveaConfig
    from fovea.core.profile_report import ProfileReport
    from fovea.core.records import MetricsRow, Summary
    from fovea.core.rundir import RunDir


@dataclass
class Evidence:
    """Everything the checks look at: the run's files, its rebuilt models and a real batch."""

    run: RunDir
    spec: Spec
    config: FoveaConfig
    metrics: list[MetricsRow]          # metrics.jsonl's training rows
    summary: Summary
    env: dict[str, Any] | None
    data_report: dict[str, Any] | None
    profile: ProfileReport | None           # profile.json, when `fovea profile` ran
    initial: torch.nn.Module          # the run's initialisation (a fresh seeded build), eval mode
    model: torch.nn.Module            # the same build with the checkpoint loaded, eval mode
    checkpoint_extra: list[str]       # checkpoint tensors the model does not have (e.g. a VAE's)
    vae: torch.nn.Module              # the VAE of the targets, as ``load_vae`` returns it
    vae_origin: str                   # where that VAE came from, for the report
    vae_change: float | None          # max |Δ weight| from its initialisation (model.vae.init); None for a pretrained one
    frames: torch.Tensor              # (B, T, 3, S, S) uint8
    latents: torch.Tensor             # (B, T, C, h, w) float32
    batch_origin: str                 # which clips the probes read
    batch_is_real: bool = True
    targets: dict[str, torch.Tensor] | None = None   # what the objectives read for the probe batch (captions' tokens)
    evaluation: dict[str, Any] | None = None   # eval.json of the newest checkpoint (held-out figures)
    evaluation_origin: str = ""                # where it came from, or why there is none

    @property
    def world_size(self) -> int:
        """Processes that trained the run (torchrun); runs from before multi-process training record none: 1."""
        for source in (self.summary, self.env or {}):
            if isinstance(source.get("world_size"), int) and source["world_size"] >= 1:
                return source["world_size"]
        return 1
