"""``fovea profile``: where the step time and the memory go, measured on the real training step.

K warm-up steps, then N measured steps of ``fovea.core.step.train_step`` (same model, loader, optimizer and
precision as ``fovea run``, made by ``fovea.core.state.prepare_training``); see ``fovea.profile.measure``.
Writes ``profile.json`` (``fovea.core.profile_report.ProfileReport``) and ``profile.md`` into the run
directory through ``RunDir.write_profile``; ``fovea audit`` reads them back with ``RunDir.read_profile``.

Under torchrun every rank profiles its own share of the distributed step; rank 0 writes its report
with every rank's headline figures (``ranks``) and the slowest rank, which sets the pace of all.
"""

from __future__ import annotations

import torch

from fovea.core.config import FoveaConfig
from fovea.core.profile_report import ProfileReport
from fovea.core.rundir import RunDir


def profile(config: FoveaConfig, run: RunDir | None, steps: int, warmup: int) -> tuple[ProfileReport, RunDir]:
    """Profile ``steps`` training steps after ``warmup``; write profile.json/.md into ``run`` (None: a new
    run directory, made by rank 0 under torchrun). Returns the report (rank 0's, with every rank's) and the run."""
    from fovea.core import distributed
    from fovea.core.devices import resolve_device
    from fovea.profile.render import render_markdown
    from fovea.profile.report import diagnose, rank_figures

    device = resolve_device(config.run.device)
    with distributed.process_group(config.distributed.backend, device) as world:
        if run is None:
            run = distributed.from_main(lambda: RunDir.create(config))
        report = _profile_steps(config, device, world, steps, warmup)
        ranks = distributed.gather(rank_figures(report, world.rank))
        if world.world_size > 1:
            report.ranks = ranks
            report.slowest_rank = max(ranks, key=lambda r: r.step_s_median).rank
        report.diagnosis = diagnose(config, report)
        distributed.on_main(lambda: run.write_profile(report, render_markdown(report)))
    return report, run


def _profile_steps(config: FoveaConfig, device: torch.device, world, steps: int, warmup: int) -> ProfileReport:
    from fovea.core import distributed
    from fovea.core.cache import build_cache
    from fovea.core.loader import build_loader, shutdown
    from fovea.core.model import build_model
    from fovea.core.rng import seed_everything
    from fovea.core.state import prepare_training
    from fovea.profile.measure import measure_micro_batch, probe_largest_batch, time_steps
    from fovea.profile.report import build_report

    seed_everything(config.run.seed + world.rank)
    model = distributed.main_first(lambda: build_model(config)).to(device).train()
    cache = distributed.main_first(lambda: build_cache(config, device, progress=config.run.progress and world.is_main))
    loader = build_loader(cache, config, device, rank=world.rank, world_size=world.world_size)
    state = prepare_training(config, model, device)
    batches = iter(loader)
    try:
        per_step, resources, measured = time_steps(state, batches, steps, warmup)
        flops, activations = measure_micro_batch(state, next(batches))
        # The OOM probe would leave ranks in different collectives; profile one process to get it.
        probe = device.type == "cuda" and world.world_size == 1
        largest = probe_largest_batch(state, cache, config) if probe else None
    finally:
        shutdown(loader)
    shards = world.world_size if distributed.is_sharded(state.model) else 1
    return build_report(config, model, device, per_step, resources, measured, flops * config.training.grad_accum,
                        activations, largest, warmup, world.world_size, shards)


def profile_target(config_path, overrides=()) -> tuple[FoveaConfig, RunDir | None]:
    """The config to profile and the run directory to write into.

    With a config: None, a new run directory of its own that ``profile`` makes (``latest`` keeps
    naming the last training run). Without: the config of the newest run (``RunDir.resolve("latest")``),
    and the profile goes into that run, beside its metrics.
    """
    from fovea.core.config import load_config
    from fovea.core.errors import FoveaError
    from fovea.core.rundir import NoRunError

    if config_path is None:
        try:
            run = RunDir.resolve("latest", None, overrides)   # under run.output_dir when --set names one
        except NoRunError as exc:
            raise FoveaError(f"no CONFIG given and no {exc.link} to take one from: pass a config, e.g. "
                             f"`fovea profile configs/quickstart.toml --steps 20`") from None
        return load_config(run.config_file, overrides), run
    config = load_config(config_path, overrides)
    config.run.name = f"{config.run.name}-profile"
    return config, None
