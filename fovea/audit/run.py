"""Auditing a run: read what the run wrote, rebuild its model (the ``Evidence``), run the checks.

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
from pathlib import Path
from typing import Any

import torch

from fovea.audit.checks import run_checks
from fovea.audit.evidence import Evidence
from fovea.audit.spec import load_spec
from fovea.core.checkpoint import load_weights
from fovea.core.config import FoveaConfig
from fovea.core.errors import FoveaError
from fovea.core.records import MetricsRow
from fovea.core.rundata import clip_latents, load_run_vae
from fovea.core.rundir import RunDir, checkpoint_step

PROBE_CLIPS = 2
PROBE_CAPTION = "a stand-in caption for the wiring probes"
METRIC_KEYS = ("step", "loss_fine", "loss_coarse")


def audit_run(run_dir: str | Path, spec_path: str | Path | None = None, groups: list | None = None):
    """Read ``run_dir``, check it against the spec; returns ``(evidence, checks)``.

    The spec: ``spec_path``, else the run config's ``[run] spec``, else the default spec. ``groups``:
    the check functions to run (``fovea.audit.checks.check_wiring``, …); default all of them.
    """
    evidence = load_evidence(run_dir, spec_path)
    with torch.random.fork_rng(devices=[]):   # probes draw noise and queries: reproducible, and no side effects
        torch.manual_seed(evidence.config.run.seed)
        checks = run_checks(evidence, groups)
    return evidence, checks


def load_evidence(run_dir: str | Path, spec_path: str | Path | None = None) -> Evidence:
    """The run's files, parsed and checked for completeness, its models rebuilt and a probe batch read."""
    import fovea

    run = RunDir.resolve(run_dir)
    config = fovea.load_config(run.config_file)
    spec = load_spec(spec_path if spec_path is not None else config.run.spec)
    metrics = read_metrics(run)
    summary = run.read_json(run.summary_file, required=True,
                            missing="the run did not finish (or crashed before writing it); audit a finished run")
    env = run.read_json(run.env_file)
    data_report = run.read_json(run.data_report_file)
    profile = run.read_profile()

    with torch.random.fork_rng(devices=[]):
        initial = fovea.build_model(config).eval()   # seeded by run.seed: the run's initialisation
    model = copy.deepcopy(initial)
    extra = load_weights(model, run)   # the newest complete checkpoint; a FoveaError if none
    vae, vae_origin, vae_change = load_run_vae(run, config, data_report)
    frames, batch_origin, batch_is_real, captions = read_probe_batch(run, config)
    latents = clip_latents(vae, frames, config)
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
    current = run.current_eval(MODES)
    if current is not None:
        return current, f"{run.eval_file().name} (`fovea eval`, checkpoint of step {newest})"
    result = evaluate_run(run.path, progress=False)
    return result, f"`fovea eval` run by the audit on the checkpoint of step {newest} (wrote {run.eval_file().name})"


def read_metrics(run: RunDir) -> list[MetricsRow]:
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


# --------------------------------------------------------------------------- the probe batch


def read_probe_batch(run: RunDir, config: FoveaConfig, num_clips: int = PROBE_CLIPS) -> tuple[torch.Tensor, str, bool, list]:
    """The run's first clips (``first_clips``: uint8 (B, T, 3, S, S)), where they came from, whether they are
    real, and their captions (None where a clip has none). When neither the run's cache nor its source can be
    read here (files moved, a plugin missing), the probes still run on seeded noise frames and the report
    says so."""
    from fovea.core.rundata import first_clips

    try:
        clips = first_clips(run, num_clips, config)
        return clips.frames, clips.origin, True, clips.captions
    except (FoveaError, OSError, ValueError, RuntimeError, IndexError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    T, S = config.data.num_frames, config.data.frame_size
    generator = torch.Generator().manual_seed(config.run.seed)
    noise = torch.randint(0, 256, (num_clips, T, 3, S, S), dtype=torch.uint8, generator=generator)
    return (noise, f"{num_clips} clips of seeded noise frames: the `{config.data.name}` source could not be read "
            f"({reason})", False, [None] * num_clips)
