"""The training loop: AdamW with warm-up and cosine decay, gradient accumulation and clipping, autocast.

One optimizer step (``train_step``, shared with ``fovea profile``) = ``grad_accum`` micro-batches of
``batch_size`` clips. A step whose loss or gradient is NaN/inf never reaches the optimizer: the run
stops with a diagnosis or skips the step (``training.on_nonfinite``). Losses are logged as means over
each logging interval. Checkpoints (``fovea.core.checkpoint``) hold everything the loop needs, so
``train(config, resume=run)`` continues a run in its own directory with exactly the per-step losses
it would have had without the interruption. SIGINT/SIGTERM finish the current step, save a
checkpoint and raise ``RunInterrupted``.

Under torchrun (``fovea.core.distributed``) every process runs this loop on its slice of each global
batch; losses are averaged over ranks before they are checked and logged, every rank stops at the same
step, and rank 0 alone writes the run directory.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

from fovea.core.attention import STAT_KEYS, attention_stats
from fovea.core.config import FoveaConfig, config_to_toml
from fovea.core.devices import DTYPES, resolve_device
from fovea.core.errors import FoveaError
from fovea.core.rundir import RunDir
from fovea.core.timing import PhaseTimer

NONFINITE_FILE = "nonfinite.jsonl"


def seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, config: FoveaConfig) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based): linear warm-up, then the schedule."""
    t = config.training
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return 1.0
    progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
    return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def build_optimizer(model: torch.nn.Module, config: FoveaConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters; matrices decay, biases and norm gains do not (nanoGPT's rule)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.training.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    from torch.distributed.tensor import DTensor

    first = next(model.parameters())
    fused = first.is_cuda and not isinstance(first, DTensor)   # FSDP2's shards take the foreach kernels
    return torch.optim.AdamW(groups, lr=config.training.lr, betas=(0.9, 0.999), fused=fused or None)


class RunInterrupted(Exception):
    """SIGINT/SIGTERM stopped the run after a step; its checkpoint is saved and the run can be resumed."""

    def __init__(self, run: RunDir, step: int, signal_number: int, checkpoint: Path, world_size: int = 1):
        self.run, self.step, self.signal_number, self.checkpoint = run, step, signal_number, checkpoint
        launch = f"torchrun --nproc_per_node={world_size} -m " if world_size > 1 else ""
        super().__init__(f"stopped by {signal.Signals(signal_number).name} after step {step}; checkpoint "
                         f"{checkpoint}. Continue with `{launch}fovea run --resume {run.path}`")


class NonFiniteStep(FoveaError):
    """A step's loss or gradient norm is NaN/inf; raised before the optimizer touches the weights."""

    def __init__(self, losses: torch.Tensor, grad_norm: torch.Tensor, clips: list[list[int]], parameters: list[str],
                 names: tuple[str, ...] = ("loss", "loss_fine", "loss_coarse")):
        self.losses = losses.tolist()              # per micro-batch: one value per name (``loss_names``)
        self.names = names
        self.grad_norm = grad_norm.item()
        self.clips = clips                         # per micro-batch: cache indices of its clips
        self.parameters = parameters               # trainable parameters whose gradient is not finite
        bad = sorted({names[i] for row in self.losses for i, value in enumerate(row) if not math.isfinite(value)},
                     key=names.index)
        self.which = bad or ["gradient"]
        super().__init__(f"non-finite {', '.join(self.which)} (grad norm {self.grad_norm}); the weights were "
                         f"not updated")


@dataclass
class TrainState:
    """Everything one optimizer step touches; made once by ``prepare_training``."""

    config: FoveaConfig
    model: torch.nn.Module               # what the step calls: the model, its DDP wrapper, or FSDP2-sharded
    module: torch.nn.Module              # the model itself (DDP's ``.module``): parts, names, summaries
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    trainable: list[torch.nn.Parameter]
    device: torch.device
    dtype: torch.dtype

    @property
    def loss_names(self) -> tuple[str, ...]:
        """The losses a step returns, in order: the total, both passes, then each objective's coarse and fine."""
        return loss_names(self.module)


def loss_names(model: torch.nn.Module) -> tuple[str, ...]:
    """``loss, loss_fine, loss_coarse`` then ``<objective>_coarse, <objective>_fine`` per objective."""
    return ("loss", "loss_fine", "loss_coarse") + tuple(
        f"{name}_{mode}" for name in model.objectives for mode in ("coarse", "fine"))


def step_losses(out, model: torch.nn.Module) -> torch.Tensor:
    """A forward's losses in ``loss_names`` order, (3 + 2 x objectives,) float32, detached."""
    terms = [out.terms[name][mode].mean for name in model.objectives for mode in ("coarse", "fine")]
    return torch.stack([out.loss, out.loss_fine, out.loss_coarse, *terms]).detach().float()


def prepare_training(config: FoveaConfig, model: torch.nn.Module, device: torch.device) -> TrainState:
    """Compile ``model``'s parts (``training.compile``), spread it over the torchrun processes
    (``distributed.strategy``), then its optimizer and schedule."""
    from fovea.core.distributed import parallelize

    if config.training.compile:
        from fovea.core.compile import compile_model

        compile_model(model, config)
    wrapped = parallelize(model, config.distributed.strategy, device)
    optimizer = build_optimizer(wrapped, config)     # FSDP2: over the shards it made
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    return TrainState(config, wrapped, model, optimizer, scheduler,
                      [p for p in wrapped.parameters() if p.requires_grad], device, DTYPES[config.precision.dtype])


def train_step(state: TrainState, batches: Iterator[dict], timer: PhaseTimer,
               attention: bool = False) -> tuple[torch.Tensor, ...]:
    """One optimizer step over ``grad_accum`` micro-batches, its phases timed by ``timer``.

    Returns the losses of ``loss_names`` averaged over the micro-batches, (K,), and the gradient norm
    before clipping: both on the device. ``attention=True`` (logging steps) also returns the attention
    statistics ``fovea.core.attention.STAT_KEYS`` (4,), means over the step's clips and frames, read from
    the forwards the step runs anyway (no extra forward, no random numbers drawn, so resume stays exact).
    If a loss or the gradient is not finite, raises ``NonFiniteStep`` before clipping and the optimizer
    (gradients cleared, weights, optimizer and schedule untouched); checking costs one device sync per step.
    Under torchrun gradients are reduced once, in the last micro-batch's backward, and the returned
    losses and statistics are means over all ranks (one all-reduce), so every rank decides alike.
    """
    from fovea.core import distributed

    t = state.config.training
    micro_losses, micro_stats, clips = [], [], []
    for micro_step in range(t.grad_accum):
        with timer("data"):
            batch = next(batches)
            frames = batch["frames"].to(state.device, non_blocking=True)    # (B, T, 3, S, S) uint8
            latents = batch["latents"].to(state.device, non_blocking=True)  # (B, T, C, h, w)
            targets = {k: v.to(state.device, non_blocking=True) for k, v in state.module.prepare(batch).items()}
        with distributed.gradient_sync(state.model, enabled=micro_step == t.grad_accum - 1):
            with timer("forward"), torch.autocast(state.device.type, dtype=state.dtype,
                                                  enabled=state.dtype != torch.float32):
                out = state.model(frames, latents, targets, return_attention=attention)
            with timer("backward"):
                (out.loss / t.grad_accum).backward()
        micro_losses.append(step_losses(out, state.module))                # (K,)
        if attention:
            micro_stats.append(attention_stats(out.attention_static.detach(), out.attention_dynamic.detach()))
        clips.append(batch["index"].tolist() if "index" in batch else [])
    K = len(micro_losses[0])
    with timer("optimizer"):
        # (grad_accum * K [+ 4],): every micro-batch's losses, the step's attention statistics; over ranks
        reduced = distributed.mean_over_ranks(torch.cat(
            [torch.stack(micro_losses).flatten()] + ([torch.stack(micro_stats).mean(0)] if attention else [])))
        micro_losses = reduced[:K * t.grad_accum].view(t.grad_accum, K)
        grads = [p.grad for p in state.trainable if p.grad is not None]
        grad_norm = distributed.full_tensor(torch.nn.utils.get_total_norm(grads))
        checked = torch.cat([micro_losses.flatten(), grad_norm[None]])              # (grad_accum * K + 1,)
        if not bool(torch.isfinite(checked).all()):                                  # the one sync
            bad = [name for name, p in state.module.named_parameters()
                   if p.grad is not None and not bool(torch.isfinite(distributed.full_tensor(p.grad)).all())]
            state.optimizer.zero_grad(set_to_none=True)
            every_rank = distributed.gather(clips)                                   # [rank][micro-batch]
            clips = [[i for rank in every_rank for i in rank[m]] for m in range(t.grad_accum)]
            raise NonFiniteStep(micro_losses.cpu(), grad_norm.float().cpu(), clips, bad, state.loss_names)
        torch.nn.utils.clip_grads_with_norm_(state.trainable, t.grad_clip if t.grad_clip > 0 else math.inf, grad_norm)
        state.optimizer.step()
        state.scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)
    losses = micro_losses.mean(0)                                                    # (K,)
    return (losses, grad_norm.detach()) + ((reduced[K * t.grad_accum:],) if attention else ())


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


@dataclass
class StopRequest:
    """Set by SIGINT/SIGTERM: the loop finishes its step, saves a checkpoint and stops."""

    signal_number: int | None = None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Turn SIGINT/SIGTERM into a ``StopRequest`` for the block; a second SIGINT stops at once."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():   # signals reach only the main thread
        yield request
        return

    def handle(signal_number: int, frame) -> None:
        if request.signal_number == signal.SIGINT and signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        request.signal_number = signal_number
        print(f"\n{signal.Signals(signal_number).name}: stopping after this step and saving a checkpoint "
              f"(Ctrl-C again stops at once, losing the steps since the last checkpoint)", file=sys.stderr)

    previous = {number: signal.signal(number, handle) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


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
    from fovea.core.checkpoint import check_settings, read_checkpoint, restore_rng, restore_training
    from fovea.core.evaluation import Evaluator
    from fovea.core.loader import build_loader, sample_position, shutdown
    from fovea.core.model import build_model
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
            run.write_json("data_report.json", {**cache.report(), "num_train": len(split.train),
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

                summary = summarize(config, model, len(split.train), run.read_metrics(), progress.elapsed_s,
                                    progress.skipped, world.world_size, run.read_metrics("val"))
                run.write_json("summary.json", summary)
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
                record = {"step": step, **{k: losses_logged[k] for k in ("loss", "loss_fine", "loss_coarse")},
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


def nonfinite_message(exc: NonFiniteStep, step: int, run: RunDir) -> str:
    checkpoints = run.checkpoints()
    kept = f"the last checkpoint, {checkpoints[-1].name}, is intact" if checkpoints else "no checkpoint was saved yet"
    return (f"step {step}: {exc}. The diagnosis (losses, the batch's source clips, parameters with NaN/inf "
            f"gradients) is in {run.path / NONFINITE_FILE}; {kept}. Lower training.lr or check those clips, "
            f"or skip such steps: `fovea run --resume {run.path} --set training.on_nonfinite=skip`")


def report_nonfinite(exc: NonFiniteStep, step: int, run: RunDir, clip_info: Callable[[], list[dict]] | None,
                     action: str) -> None:
    """Append the diagnosis of a NaN/inf step to ``nonfinite.jsonl``: the losses, the batch's source clips."""
    import json

    info = clip_info() if clip_info is not None else []
    names = exc.names
    checkpoints = run.checkpoints()
    record = {
        "step": step,
        "action": action,
        "nonfinite": exc.which,
        "grad_norm": _json_number(exc.grad_norm),
        "micro_batches": [{"losses": {name: _json_number(value) for name, value in zip(names, losses)},
                           "clips": [{"index": i, **(info[i] if 0 <= i < len(info) else {})} for i in clips]}
                          for losses, clips in zip(exc.losses, exc.clips)],
        "parameters_with_nonfinite_grad": len(exc.parameters),
        "first_parameters_with_nonfinite_grad": exc.parameters[:20],   # in model order: where it starts
        "last_checkpoint": checkpoints[-1].name if checkpoints else None,
    }
    with (run.path / NONFINITE_FILE).open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _json_number(value: float) -> float | str:
    """A float as strict JSON allows: NaN and infinities as strings."""
    return value if math.isfinite(value) else str(value)


def _objective_summary(row: dict, name: str, weight: float) -> dict[str, Any]:
    """One objective's last logged training losses and their improvement."""
    coarse, fine = row.get(f"{name}_coarse"), row.get(f"{name}_fine")
    return {"weight": weight, "coarse": coarse, "fine": fine,
            "improvement": (coarse - fine) / coarse if coarse and fine is not None else None}


def summarize(config: FoveaConfig, model: torch.nn.Module, num_clips: int, metrics: list[dict], wall: float,
              skipped: int = 0, world_size: int = 1, held_out: list[dict] | None = None) -> dict:
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
