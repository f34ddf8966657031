"""`fovea eval RUN_DIR`: a run's checkpoint evaluated on its held-out clips, written to ``eval.json`` and
``eval.md``."""

from __future__ import annotations

import time
from typing import Any, Iterable

from fovea.core.errors import FoveaError
from fovea.core.evaluation.ablations import ABLATIONS, evaluate_ablations
from fovea.core.evaluation.baselines import fit_baselines
from fovea.core.evaluation.flops import flops_per_clip
from fovea.core.evaluation.losses import MODES, clip_losses
from fovea.core.evaluation.report import render_markdown
from fovea.core.evaluation.statistics import summarize_objectives
from fovea.core.evaluation.trained_run import TrainedRun


def evaluate_run(run_dir, split: str = "val", clips: int | None = None, step: int | None = None,
                 modes: Iterable[str] = MODES, device: str | None = None, progress: bool = True,
                 ablations: Iterable[str] = ()) -> dict[str, Any]:
    """Evaluate a run's checkpoint (newest, or of optimizer step ``step``) on its held-out clips (or on
    training clips, ``split="train"``); writes ``eval.json`` (``eval-train.json``) and ``eval.md`` and
    returns the figures. ``clips``: at most this many, evenly spread (``TrainedRun.clips``). ``ablations``
    (``ABLATIONS``) are evaluated on the same clips and reported under ``ablations.<name>.<objective>``.
    """
    from fovea.core.rundir import checkpoint_step

    started = time.perf_counter()
    modes = list(modes)
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise FoveaError(f"--modes {','.join(modes)}: unknown mode {unknown[0]!r}; choose from {', '.join(MODES)}"
                         if unknown else f"--modes: choose one or more of {', '.join(MODES)}")
    modes = [m for m in MODES if m in modes]
    if split not in ("val", "train"):
        raise FoveaError(f"--split {split!r}: choose val (the held-out clips) or train")
    ablations = list(ablations)
    for ablation in ablations:
        if ablation not in ABLATIONS:
            raise FoveaError(f"--ablate {ablation!r}: choose from {', '.join(ABLATIONS)}")
    if ablations and not {"coarse", "fine"} <= set(modes):
        raise FoveaError("--ablate compares with the coarse and fine modes: keep both in --modes")
    opened = TrainedRun.open(run_dir, step, device, progress)
    config, model, run = opened.config, opened.model, opened.run
    if model.single_pass:   # a query-free encoder: its coarse is its fine, no improvement to report
        modes = [m for m in modes if m != "coarse"] or ["fine"]
        if any(a in ("shuffle_queries", "static_queries") for a in ablations):
            raise FoveaError(f"--ablate: the encoder `{config.model.encoder.name}` reads no query; only `blind` "
                             f"applies to it")
    chosen = opened.clips(split, clips)
    baselines = fit_baselines(model, opened.split.train.first(config.eval.baseline_clips), config.eval.batch_size)
    losses = clip_losses(model, chosen, baselines, modes, config.eval.batch_size, opened.device, opened.dtype,
                         progress)
    result = {"split": split, "step": checkpoint_step(opened.checkpoint), "checkpoint": str(opened.checkpoint),
              **summarize_objectives(losses), "device": str(opened.device),
              "dtype": str(opened.dtype).replace("torch.", ""), "single_pass": model.single_pass,
              "flops_per_clip": flops_per_clip(model, chosen, opened.device)}
    if model.single_pass:
        for figures in [result, *result["objectives"].values()]:
            figures["single_pass"] = True
    if ablations:
        result["ablations"] = evaluate_ablations(model, chosen, losses, ablations, opened.split.train.first(
            config.eval.baseline_clips), config.eval.batch_size, opened.device, opened.dtype, progress)
    result["elapsed_s"] = time.perf_counter() - started
    run.write_json(run.eval_file(split).name, result)
    run.write_text(run.eval_file(split).with_suffix(".md").name, render_markdown(result, run.path.name))
    return result
