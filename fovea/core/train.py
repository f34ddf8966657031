"""The training loop and its entry point ``train(config)``: a run directory, checkpoints, resume.

The parts it runs live beside it: the optimizer and schedule (``fovea.core.optimizer``), what a step
touches (``fovea.core.state``), one optimizer step (``fovea.core.step``: ``grad_accum`` micro-batches,
autocast, clipping), NaN/inf steps (``fovea.core.nonfinite``: stop or skip, ``nonfinite.jsonl``) and
stop requests (``fovea.core.signals``). Losses are logged as means over each logging interval.
Checkpoints (``fovea.core.checkpoint``) hold everything the loop needs, so ``train(config, resume=run)``
continues a run in its own directory with exactly the per-step losses it would have had without the
interruption. SIGINT/SIGTERM finish the current step, save a checkpoint and raise ``RunInterrupted``.

Under torchrun (``fovea.core.distributed``) every process runs this loop on its slice of each global
batch; losses are averaged over ranks before they are checked and logged, every rank stops at the same
step, and rank 0 alone writes the run directory.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from fovea.core.attention import STAT_KEYS
from fovea.core.config import FoveaConfig, config_to_toml
from fovea.core.devices import resolve_device
from fovea.core.errors import FoveaError
from fovea.core.nonfinite import NonFiniteStep, nonfinite_message, report_nonfinite
from fovea.core.records import MetricsRow, ObjectiveSummary, Summary
from fovea.core.rng import seed_everything
from fovea.core.rundir import RunDir
from fovea.core.signals import RunInterrupted, StopRequest, stop_on_signals
from fovea.core.state import TrainState, prepare_training
from fovea.core.step import train_step   # looked up here at every step: tests replace it
from fovea.core.timing import PhaseTimer


@dataclass
class Progress:
    """Where the loop stands; saved with every checkpoint, so a resumed run logs what an uninterrupted one would."""

    sums: torch.Tensor                   # (K + 1,) the losses of ``loss_names`` and grad_norm summed over the open interval
    step: int = 0                        # optimizer steps done (skipped ones included)
    interval_steps: int = 0              # steps summed in ``sums``
    interval_skipped: int = 0            # steps of the open interval skipped for a NaN/inf
    skipped: int = 0                     # skipped steps of the whole run
    elapsed_s: float = 0.0               # training time of earlier processes (of the whole run once finished)

    def state(self, elapsed_s: float) -> dict[str, Any]:
        return {"sums": self.sums.cpu(), "step": self.step, "interval_steps": self.interval_steps,
                "interval_skipped": self.interval_skipped, "skipped": self.skipped, "elapsed_s": elapsed_s}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device, size: int) -> "Progress":
        sums = state["sums"].to(device)
        if len(sums) == 4 < size:   # saved before objectives were logged: loss, fine, coarse, grad_norm
            sums = torch.cat([sums[:3], sums.new_full((size - 4,), math.nan), sums[3:]])   # unknown: not logged
        return cls(**{**state, "sums": sums})


def train(config: FoveaConfig, resume: RunDir | None = None, force: bool = False) -> RunDir:
    """Train the model ``config`` describes; returns the run directory it wrote.

    Everything that can fail on bad input (model loading, the data, the batch size) happens before the
    run directory is created, so a run that cannot start writes nothing and leaves ``latest`` alone.
    ``resume``: continue that run from its newest complete checkpoint, in its directory; settings that
    must not change (``checkpoint.fixed_settings``) are refused unless ``force``. A resumed run that
    cannot continue (a damaged checkpoint, a model that does not fit) is not modified.
    """
    from fovea.core import distributed
    from fovea.core.cache import build_cache
    from fovea.core.checkpoint import check_settings, read_checkpoint, restore_training
    from fovea.core.evaluation.evaluator import Evaluator
    from fovea.core.loader import build_loader, sample_position, shutdown
    from fovea.core.model import build_model
    from fovea.core.rng import restore_rng
    from fovea.core.split import build_split
    from fovea.core.trackers import RunTrackers, require_trackers

    with contextlib.ExitStack() as stack:
        require_trackers(config)   # a tracker's missing package: before anything is built or written
        device = resolve_device(config.run.device)
        world = stack.enter_context(distributed.process_group(config.distributed.backend, device))
        checkpoint = kept_metrics = None
        if resume is not None:   # the cheap checks first, by rank 0: it holds the lock and verifies the files
            checked: list = []

            def check_resumable() -> None:
                stack.enter_context(resume.lock())
                checked.append(read_checkpoint(resume.latest_checkpoint))
                check_settings(checked[0], config, force)
                if not resume.metrics_file.is_file() and checked[0].step >= config.run.log_every and not force:
                    raise FoveaError(f"{resume.metrics_file} is missing, but the run logged steps up to its "
                                     f"checkpoint at step {checked[0].step}: restore the file, or pass --force to "
                                     f"continue without those lines")

            distributed.on_main(check_resumable)
            # The other ranks read what rank 0 verified.
            checkpoint = checked[0] if checked else read_checkpoint(resume.latest_checkpoint, verify=False)
            kept_metrics = [m for m in resume.read_metrics(split=None) if m["step"] <= checkpoint.step]
        model = distributed.main_first(lambda: build_model(config)).to(device).train()   # downloads once
        # Decoded once (by rank 0); later runs and the other ranks reuse it.
        cache = distributed.main_first(lambda: build_cache(config, device, progress=config.run.progress
                                                           and distributed.current().is_main))
        split = distributed.main_first(lambda: build_split(config, cache, device, progress=False))
        if resume is not None:
            split = held_out_on_resume(resume, split)
        position = sample_position(checkpoint.loader_state) if checkpoint else None
        loader = build_loader(cache, config, device, position, world.rank, world.world_size, split.train.indices)
        stack.callback(shutdown, loader)
        seed_everything(config.run.seed + world.rank)
        state = prepare_training(config, model, device)
        evaluator = Evaluator.build(split, config, device, state.dtype, model)   # reads the cache; draws no random numbers
        progress = Progress(torch.zeros(len(state.loss_names) + 1, device=device))
        if checkpoint is not None:
            restore_training(checkpoint, state)
            progress = Progress.from_state(checkpoint.training_state["progress"], device, len(progress.sums))
            restore_rng(checkpoint.training_state["rng"])

        if resume is None:
            run = distributed.from_main(lambda: RunDir.create(config))   # one directory, named by rank 0
            if world.is_main:
                stack.enter_context(run.lock())
        else:
            run = resume

        def open_run() -> None:
            if resume is not None:
                run.rewrite_metrics(kept_metrics)            # drop the steps logged after the checkpoint: redone now
                run.write_text(run.config_file.name, config_to_toml(config))
                run.summary_file.unlink(missing_ok=True)     # the run is not finished until it is
            run.write_json(run.data_report_file.name, {**cache.report(), "num_train": len(split.train),
                                                "num_val": len(split.val), "left_out": list(split.left_out)})
            run.write_json(run.split_file.name, split.record())
            run.mark_latest()

        # The trackers start before the run directory is touched: one that cannot start stops the run here
        # (a new run's directory is removed again), and a resumed run is left as it was.
        started: list[RunTrackers] = []
        distributed.on_main(lambda: started.append(open_trackers(config, run, checkpoint, kept_metrics)))
        trackers = started[0] if started else RunTrackers()
        distributed.on_main(open_run)
        stop = stack.enter_context(stop_on_signals())
        try:
            optimize(state, loader, run, progress, cache.clip_info, stop, trackers, evaluator)

            def finish_run() -> None:
                from fovea.core.trackers import flat_values

                summary = summarize_run(config, model, len(split.train), run.read_metrics(), progress.elapsed_s,
                                    progress.skipped, world.world_size, run.read_metrics("val"))
                run.write_json(run.summary_file.name, summary)
                trackers.log_summary(flat_values(summary, "summary/"), config.training.max_steps)

            distributed.on_main(finish_run)
        except BaseException as exc:
            trackers.finish("interrupted" if isinstance(exc, (RunInterrupted, KeyboardInterrupt)) else "failed")
            raise
        trackers.finish("finished")
    return run


def open_trackers(config: FoveaConfig, run: RunDir, checkpoint, kept_metrics: list[dict] | None):
    """The run's experiment trackers, started (rank 0). A resumed run's (``kept_metrics``: the rows
    ``metrics.jsonl`` keeps up to ``checkpoint``) continue their own tracker runs and are handed those rows
    again, so a tracker that lost what it had not flushed when the run was killed gets them back (each logs
    only steps its run does not hold). A tracker that cannot start is a ``FoveaError``, and a new run's
    directory is removed: a run that cannot start leaves nothing behind."""
    import shutil

    from fovea.core.trackers import start_trackers

    fresh = kept_metrics is None
    try:
        trackers = start_trackers(config, run, resume_step=None if fresh else checkpoint.step)
    except FoveaError:
        if fresh:
            shutil.rmtree(run.path, ignore_errors=True)
        raise
    for row in kept_metrics or []:
        trackers.log_metrics(row)
    return trackers


def held_out_on_resume(run: RunDir, split):
    """The split a resumed run continues with: the one its ``split.json`` recorded (checked against the
    data), or, for a run from before held-out splits, every clip training and none held out."""
    import sys

    from fovea.core import distributed
    from fovea.core.split import ClipSet, Split, check_recorded

    recorded = run.read_json(run.split_file)
    if recorded is None:
        if distributed.current().is_main:
            print(f"warning: {run.path} recorded no held-out split (it predates [eval]): it keeps training on "
                  f"every clip, with no held-out evaluation", file=sys.stderr)
        every = list(range(len(split.train.cache)))
        return Split(ClipSet(split.train.cache, every), ClipSet(split.train.cache, []))
    check_recorded(split, recorded, str(run.split_file))
    return split


def find_run_to_resume(target: str, config_path: Path | None, overrides: Iterable[str]) -> tuple[FoveaConfig, RunDir]:
    """The run ``--resume`` names (``RunDir.resolve``: a directory, or ``latest``) and its config: the run's
    own ``config.toml``, or ``config_path`` when given; ``--set`` overrides apply to either."""
    from fovea.core.config import load_config

    overrides = list(overrides)
    run = RunDir.resolve(target, config_path, overrides)
    return load_config(config_path if config_path is not None else run.config_file, overrides), run


def optimize(state: TrainState, loader, run: RunDir, progress: Progress,
             clip_info: Callable[[], list[dict]] | None = None, stop: StopRequest | None = None,
             trackers=None, evaluator=None) -> None:
    """The optimisation loop from ``progress.step`` to ``max_steps``; writes metrics and checkpoints into ``run``.

    Each metrics line also holds the attention statistics of its own step's batch (``STAT_KEYS``);
    ``trackers`` (``fovea.core.trackers.RunTrackers``, rank 0's) get every line too. Under torchrun
    every rank runs the loop and rank 0 writes: losses are means over ranks, ``samples_per_s`` counts the
    global batch, ``data_wait_share`` is the largest rank's, and a signal to any rank stops all at one step.
    ``evaluator`` (``fovea.core.evaluation.Evaluator``) adds a held-out row (``"split": "val"``) every
    ``eval.every`` steps and at the last step; it draws no random numbers and leaves the loader alone, so
    the training losses are the same with or without it. Every rank evaluates the same clips.
    """
    from tqdm.auto import tqdm

    from fovea.core import distributed
    from fovea.core.checkpoint import save_checkpoint

    config, t = state.config, state.config.training
    world = distributed.current()
    global_batch = config.global_batch_size(world.world_size)
    stop = stop or StopRequest()
    batches, timer = iter(loader), PhaseTimer()
    postfix: dict[str, str] = {}
    started = interval_start = time.perf_counter()
    timed_steps = 0                      # steps of the open interval run by this process (for samples/s)

    def elapsed() -> float:              # training time of the whole run, earlier processes included
        return progress.elapsed_s + time.perf_counter() - started

    record_keys = ("loss", "loss_fine", "loss_coarse")
    with tqdm(total=t.max_steps, initial=progress.step, desc=f"fovea {config.run.name}",
              disable=not (config.run.progress and world.is_main), unit="step") as bar:
        for step in range(progress.step + 1, t.max_steps + 1):
            logging = step % config.run.log_every == 0 or step == t.max_steps
            attention: list[torch.Tensor] = []
            try:
                losses, grad_norm, *attention = train_step(state, batches, timer, attention=logging)
            except NonFiniteStep as exc:   # every rank sees the same reduced losses and gradient norm
                action = "stopped" if t.on_nonfinite == "stop" else "skipped"
                distributed.on_main(functools.partial(report_nonfinite, exc, step, run, clip_info, action))
                if t.on_nonfinite == "stop":
                    raise (FoveaError(nonfinite_message(exc, step, run)) if world.is_main
                           else distributed.PeerFailed()) from None
                progress.skipped += 1
                progress.interval_skipped += 1
            else:
                progress.sums += torch.cat([losses, grad_norm[None]])
                progress.interval_steps += 1
            progress.step, timed_steps = step, timed_steps + 1
            bar.update()

            if logging:
                n = progress.interval_steps
                means = [v if math.isfinite(v) else None for v in (progress.sums / n).tolist()] if n \
                    else [None] * len(progress.sums)                          # syncs the device
                losses_logged = dict(zip(state.loss_names, means))
                loss_fine, loss_coarse, gnorm = losses_logged["loss_fine"], losses_logged["loss_coarse"], means[-1]
                wall = time.perf_counter() - interval_start
                record: MetricsRow = {
                    "step": step, **{k: losses_logged[k] for k in ("loss", "loss_fine", "loss_coarse")},
                    "ratio": loss_coarse / loss_fine if n and loss_fine > 0 else None, "grad_norm": gnorm,
                    "lr": state.scheduler.get_last_lr()[0],
                    "samples_per_s": timed_steps * global_batch / wall,
                    "data_wait_share": distributed.agree_max(timer.pop().get("data", 0.0) / wall),
                    "skipped_steps": progress.interval_skipped, "elapsed_s": elapsed(),
                    **dict(zip(STAT_KEYS, attention[0].tolist() if attention else [None] * 4)),
                    **{k: v for k, v in losses_logged.items() if k not in record_keys}}
                if world.is_main:
                    run.append_metrics(record)
                    if trackers is not None:
                        trackers.log_metrics(record)
                if n:
                    postfix.update(fine=f"{loss_fine:.4g}", coarse=f"{loss_coarse:.4g}")
                    bar.set_postfix(postfix)
                progress.sums.zero_()
                progress.interval_steps = progress.interval_skipped = timed_steps = 0
                interval_start = time.perf_counter()
            if evaluator is not None and (step % config.eval.every == 0 or step == t.max_steps):
                held_out = evaluator(state.module, step)
                if world.is_main:
                    run.append_metrics(held_out)
                    if trackers is not None:
                        trackers.log_metrics(held_out)
                postfix.update(val_fine=f"{held_out['loss_fine']:.4g}", skill=f"{held_out['skill']:.2f}"
                               if held_out["skill"] is not None else "—")
                bar.set_postfix(postfix)
                interval_start += held_out["eval_s"]   # evaluation time is not training throughput
            signal_number = int(distributed.agree_max(stop.signal_number or 0)) or None   # all ranks alike
            if step % t.save_every == 0 or step == t.max_steps or signal_number is not None:
                saved = save_checkpoint(run, step, state, loader.state_dict(), progress.state(elapsed()),
                                        t.keep_checkpoints)
                if signal_number is not None and step < t.max_steps:   # at the last step: just finish
                    raise RunInterrupted(run, step, signal_number, saved, world.world_size)
    progress.elapsed_s = elapsed()


def _objective_summary(row: MetricsRow, name: str, weight: float) -> ObjectiveSummary:
    """One objective's last logged training losses and their improvement."""
    coarse, fine = row.get(f"{name}_coarse"), row.get(f"{name}_fine")
    return {"weight": weight, "coarse": coarse, "fine": fine,
            "improvement": (coarse - fine) / coarse if coarse and fine is not None else None}


def summarize_run(config: FoveaConfig, model: torch.nn.Module, num_clips: int, metrics: list[MetricsRow],
                  wall: float, skipped: int = 0, world_size: int = 1,
                  held_out: list[MetricsRow] | None = None) -> Summary:
    """What ``summary.json`` holds: outcome, losses first and last, the spec's improvement, batch, sizes,
    and the last held-out evaluation (``val``; ``num_clips`` counts the training clips)."""
    first, last = (metrics[0], metrics[-1]) if metrics else (None, None)
    def count(module: torch.nn.Module, trainable: bool | None = None) -> int:
        return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)

    coarse, fine = (last or {}).get("loss_coarse"), (last or {}).get("loss_fine")
    improvement = (coarse - fine) / coarse if coarse and fine is not None else None
    return {
        "status": "completed",
        "steps": config.training.max_steps,
        "skipped_steps": skipped,
        "wall_time_s": wall,
        "first": first,
        "last": last,
        "improvement": improvement,   # SPEC: (loss_coarse - loss_fine) / loss_coarse, on training batches
        "objectives": {name: _objective_summary(last or {}, name, table.weight)
                       for name, table in config.objectives.items()},
        "val": held_out[-1] if held_out else None,   # the held-out evaluation at the last step
        "num_clips": num_clips,
        "world_size": world_size,
        "global_batch_size": config.global_batch_size(world_size),   # batch_size x grad_accum x world_size
        "epochs": config.training.max_steps * config.global_batch_size(world_size) / num_clips,
        "parameters": {"total": count(model), "trainable": count(model, True),
                       **{name: count(child) for name, child in model.named_children()}},
    }
