"""Auditing a run: read what the run wrote, rebuild its model, run the checks.

The audit reads only the run directory (``config.toml``, ``metrics.jsonl``, the newest checkpoint's
``model.safetensors``, ``summary.json``, ``env.json``, ``data_report.json``, ``profile.json`` when
present) and rebuilds the
model from the run's own config through the same factories as training (STYLE.md: data flows one way).
``build_model`` is seeded by ``run.seed``, so a fresh build *is* the run's initialisation; the
checkpoint loaded into a copy of it is the trained model. Probes run on CPU in float32 on a real batch:
the first clips of the run's data source and their latents from the run's (frozen) VAE.

A run directory the audit cannot read (a missing or corrupt file) is a ``FoveaError`` naming the file
and what to do; nothing is written into the run directory unless the audit completes.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fovea.audit.spec import Spec, load_spec
from fovea.core.checkpoint import load_weights
from fovea.core.config import FoveaConfig
from fovea.core.errors import FoveaError
from fovea.core.rundir import RunDir, checkpoint_step

PROBE_CLIPS = 2
PROBE_CAPTION = "a stand-in caption for the wiring probes"
METRIC_KEYS = ("step", "loss_fine", "loss_coarse")


@dataclass
class Evidence:
    """Everything the checks look at: the run's files, its rebuilt models and a real batch."""

    run: RunDir
    spec: Spec
    config: FoveaConfig
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]
    env: dict[str, Any] | None
    data_report: dict[str, Any] | None
    profile: dict[str, Any] | None
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


def audit_run(run_dir: str | Path, spec_path: str | Path | None = None, groups: list | None = None):
    """Read ``run_dir``, check it against the spec; returns ``(evidence, checks)``.

    The spec: ``spec_path``, else the run config's ``[run] spec``, else the default spec. ``groups``:
    the check functions to run (``fovea.audit.checks.check_wiring``, …); default all of them.
    """
    from fovea.audit.checks import run_checks

    evidence = load_evidence(run_dir, spec_path)
    with torch.random.fork_rng(devices=[]):   # probes draw noise and queries: reproducible, and no side effects
        torch.manual_seed(evidence.config.run.seed)
        checks = run_checks(evidence, groups)
    return evidence, checks


def load_evidence(run_dir: str | Path, spec_path: str | Path | None = None) -> Evidence:
    """The run's files, parsed and checked for completeness, its models rebuilt and a probe batch read."""
    import fovea

    run = RunDir.open(run_dir)
    config = fovea.load_config(run.config_file)
    spec = load_spec(spec_path if spec_path is not None else config.run.spec)
    metrics = read_metrics(run)
    summary = run.read_json(run.summary_file, required=True,
                            missing="the run did not finish (or crashed before writing it); audit a finished run")
    env = run.read_json(run.env_file)
    data_report = run.read_json(run.data_report_file)
    profile = run.read_json(run.profile_file)
    checkpoint = run.checkpoint_file   # the newest complete checkpoint's weights; a FoveaError if none
    if not checkpoint.exists():
        raise FoveaError(f"{checkpoint}: missing; the run's newest checkpoint has no weights. Restore the file, "
                         f"or train again with `fovea run {run.config_file}`")

    with torch.random.fork_rng(devices=[]):
        initial = fovea.build_model(config).eval()   # seeded by run.seed: the run's initialisation
    model = copy.deepcopy(initial)
    extra = load_weights(model, checkpoint)
    vae, vae_origin, vae_change = load_run_vae(run, config, data_report)
    frames, batch_origin, batch_is_real, captions = read_probe_batch(config)
    latents = compute_latents(vae, frames, config)
    if model.codec is not None and any(c is None for c in captions):   # wiring holds for any text: say which
        captions = [c if c is not None else PROBE_CAPTION for c in captions]
        batch_origin += f"; clips without a caption read the stand-in caption {PROBE_CAPTION!r}"
    targets = model.prepare({"captions": captions})
    evaluation, evaluation_origin = read_evaluation(run)
    return Evidence(run=run, spec=spec, config=config, metrics=metrics, summary=summary, env=env,
                    data_report=data_report, profile=profile, initial=initial, model=model,
                    checkpoint_extra=extra, vae=vae, vae_origin=vae_origin, vae_change=vae_change,
                    frames=frames, latents=latents, batch_origin=batch_origin, batch_is_real=batch_is_real,
                    targets=targets,
                    evaluation=evaluation, evaluation_origin=evaluation_origin)


# --------------------------------------------------------------------------- the run's files


def read_evaluation(run: RunDir) -> tuple[dict[str, Any] | None, str]:
    """The held-out figures of the run's newest checkpoint: ``eval.json`` when it is of that checkpoint
    and holds every mode, else ``fovea eval`` run now (it writes ``eval.json``); ``None`` and the reason
    when the run holds out no clips."""
    from fovea.core.evaluation import MODES, evaluate_run

    split = run.read_json(run.split_file)
    if split is None:
        return None, "the run recorded no held-out split (no split.json: it predates [eval])"
    if not split.get("num_val"):
        return None, "the run holds out no clips ([eval] val_fraction = 0)"
    newest = checkpoint_step(run.latest_checkpoint)
    current = run.read_json(run.eval_file())
    if current is not None and current.get("step") == newest and set(MODES) <= set(current.get("modes", {})):
        return current, f"{run.eval_file().name} (`fovea eval`, checkpoint of step {newest})"
    result = evaluate_run(run.path, progress=False)
    return result, f"`fovea eval` run by the audit on the checkpoint of step {newest} (wrote {run.eval_file().name})"


def read_metrics(run: RunDir) -> list[dict[str, Any]]:
    """``metrics.jsonl`` through ``RunDir.read_metrics``, each line checked for the losses the audit reads."""
    path = run.metrics_file
    if not path.is_file():
        raise FoveaError(f"{path}: missing; the run logged no metrics (it stopped before its first log line)")
    try:
        records = run.read_metrics()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FoveaError(f"{path}: a line is not valid JSON ({exc}); the file is corrupt: restore it") from None
    if not records:
        raise FoveaError(f"{path}: empty; the run logged no metrics")
    for number, record in enumerate(records, start=1):
        absent = [key for key in METRIC_KEYS if not isinstance(record, dict) or key not in record]
        if absent:
            raise FoveaError(f"{path}, record {number}: no {', '.join(absent)}; not a fovea metrics line")
    return records


def load_run_vae(run: RunDir, config: FoveaConfig, data_report: dict | None):
    """The VAE of the run's targets through ``load_vae``, where it came from, and its change from init.

    A pretrained VAE is loaded from ``model.vae.pretrained``. One without weights was made by
    ``save_random_vae`` as ``model.vae.init`` says (seeded by ``run.seed``, or the fixed ``pooling`` init): the
    audit makes that VAE again, with the same init (in a temporary directory) and,
    when the run's own copy is still on disk (the clip cache's ``vae/`` named in ``data_report.json``, or
    an older run's ``vae/``), loads that copy and measures how far it is from the seeded one.
    """
    from fovea.core import vae as vae_lib   # through the module: tests replace load_vae

    if config.model.vae.pretrained:
        return vae_lib.load_vae(config.model.vae.pretrained), f"`{config.model.vae.pretrained}` (model.vae.pretrained)", None
    candidates = []
    if data_report and isinstance(data_report.get("vae"), str):
        candidates.append(Path(data_report["vae"]))
    candidates.append(run.path / "vae")
    used = next((c for c in candidates if (c / "config.json").is_file()), None)
    with tempfile.TemporaryDirectory(prefix="fovea-audit-vae-") as tmp:
        seeded = vae_lib.save_random_vae(config.model.vae, Path(tmp) / "vae", config.run.seed)
        reference = vae_lib.load_vae(seeded)
        if used is None:
            origin = f"{_vae_init(config)} made again (the run's copy is not on disk here)"
            return reference, origin, 0.0
        vae = vae_lib.load_vae(used)
    reference_state = reference.state_dict()
    state = vae.state_dict()
    if state.keys() != reference_state.keys():
        change = math.inf
    else:
        change = max((float((state[k].float() - reference_state[k].float()).abs().max()) if state[k].numel() else 0.0)
                     for k in state) if state else 0.0
    return vae, f"`{used}` ({_vae_init(config)})", change


def _vae_init(config: FoveaConfig) -> str:
    """How a VAE without weights was initialised, in words."""
    vae = config.model.vae
    if vae.init == "random":
        return f"random `{vae.size}` VAE from run.seed"
    return f"`{vae.size}` VAE with the fixed `{vae.init}` init (model.vae.init)"


# --------------------------------------------------------------------------- the probe batch


def read_probe_batch(config: FoveaConfig, num_clips: int = PROBE_CLIPS) -> tuple[torch.Tensor, str, bool, list]:
    """The first readable clips of the run's data source (uint8 (B, T, 3, S, S)), a description,
    whether they are real, and their captions (None where a clip has none). When the source cannot be read here (files moved, a plugin missing), the
    probes still run on seeded noise frames and the report says so."""
    from fovea.core.data import SkipClip, build_source

    T, S = config.data.num_frames, config.data.frame_size
    clips, indices, captions, problem = [], [], [], ""
    try:
        source = build_source(config)
        for index in range(len(source)):
            if len(clips) == num_clips:
                break
            try:
                item = source[index]
            except SkipClip:
                continue
            frames = getattr(item, "frames", item)   # a Clip, or bare frames from an older loader
            if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8 or tuple(frames.shape) != (T, 3, S, S):
                problem = f"clip {index} is not uint8 frames of shape {(T, 3, S, S)}"
                break
            clips.append(frames)
            indices.append(index)
            captions.append(getattr(item, "caption", None))
    except (FoveaError, OSError, ValueError, RuntimeError, IndexError) as exc:
        problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if len(clips) == num_clips and not problem:
        listed = ", ".join(str(i) for i in indices)
        return (torch.stack(clips), f"{num_clips} clips of the `{config.data.name}` source (clips {listed})", True,
                captions)
    generator = torch.Generator().manual_seed(config.run.seed)
    noise = torch.randint(0, 256, (num_clips, T, 3, S, S), dtype=torch.uint8, generator=generator)
    reason = problem or f"the source has fewer than {num_clips} readable clips"
    return (noise, f"{num_clips} clips of seeded noise frames: the `{config.data.name}` source could not be read "
            f"({reason})", False, [None] * num_clips)


def compute_latents(vae, frames: torch.Tensor, config: FoveaConfig) -> torch.Tensor:
    """The targets of the probe clips: the VAE's latents, as the cache computes them (float32)."""
    from fovea.core.vae import encode_latents

    B, T = frames.shape[:2]
    with torch.no_grad():
        latents = encode_latents(vae, frames.flatten(0, 1), config.model.vae.batch_size)   # (B*T, C, h, w)
    return latents.view(B, T, *latents.shape[1:]).float()
