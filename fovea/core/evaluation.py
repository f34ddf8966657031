"""Held-out evaluation: did the model learn, and did foveation help?

Every figure comes from clips the run never trained on (``fovea.core.split``), per clip, so that it has
a 95 % bootstrap interval over clips, and stands next to the trivial baselines it must beat. Each
objective the run trains is evaluated on its own:

- modes: ``coarse`` (pass 1 alone: the static query), ``fine`` (the two-pass model as trained) and
  ``autoregressive`` (one pass, frame t read with the query the model made after frame t-1 in that same
  pass, as a deployed model runs: ``FoveatedVLM.autoregressive``);
- baselines, from the objective (its optional ``baselines``), fitted on the first ``eval.baseline_clips``
  training clips: ``next_latent``'s ``mean_latent`` (the mean latent for every frame) and
  ``copy_previous`` (frame t-1's latent; the mean for frame 1); ``caption``'s ``unigram`` and ``bigram``
  (token models of the training captions: they never see the frames);
- ``skill = 1 - loss_fine / best baseline``; ``improvement = (coarse - fine) / coarse`` (SPEC.md's
  metric); ``autoregressive_gap = (autoregressive - fine) / fine`` (the train/inference gap).

Losses are per clip as the training loss: ``next_latent``'s MSE (mean over frames and latent elements),
``caption``'s cross-entropy (mean over the caption's tokens). ``fovea eval`` (``evaluate_run``) writes
``eval.json`` (every objective under ``objectives``; the primary one, ``next_latent`` when trained, also
at the top level); training logs ``Evaluator`` rows with ``"split": "val"`` in ``metrics.jsonl`` every
``eval.every`` steps."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from fovea.core.errors import FoveaError
from fovea.core.split import ClipSet

MODES = ("coarse", "fine", "autoregressive")
ABLATIONS = ("shuffle_queries", "static_queries", "blind")
BASELINES = ("mean_latent", "copy_previous")   # next_latent's; caption's are unigram and bigram
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0

Baseline = Callable[[torch.Tensor, dict], torch.Tensor]   # (latents (B, T, C, h, w), targets) -> losses (B, K)


# --------------------------------------------------------------------------- losses per clip


@torch.no_grad()
def mean_latent(clips: ClipSet, batch_size: int) -> torch.Tensor:
    """The mean latent (C, h, w) over every frame of ``clips`` (the ``mean_latent`` baseline's prediction)."""
    total, count = None, 0
    for batch in clips.batches(batch_size):
        latents = batch["latents"].double()                                    # (B, T, C, h, w)
        total = latents.sum((0, 1)) if total is None else total + latents.sum((0, 1))
        count += latents.shape[0] * latents.shape[1]
    if total is None:
        raise FoveaError("no training clips to average for the mean_latent baseline")
    return (total / count).float()


def per_frame_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, T, C, h, w) twice -> (B, T) squared error averaged over each frame's latent."""
    return (pred.float() - target.float()).square().mean(dim=(2, 3, 4))


def baseline_predictions(latents: torch.Tensor, mean: torch.Tensor) -> dict[str, torch.Tensor]:
    """The trivial predictions of latents (B, T, C, h, w): the mean latent, and the previous frame's latent."""
    mean = mean.to(latents.device, latents.dtype).expand_as(latents)           # (B, T, C, h, w)
    return {"mean_latent": mean,
            "copy_previous": torch.cat([mean[:, :1], latents[:, :-1]], dim=1)}


def fit_baselines(model: torch.nn.Module, train: ClipSet, batch_size: int) -> dict[str, dict[str, Baseline]]:
    """Each objective's trivial baselines fitted on ``train`` (the first training clips), by objective:
    the objective's optional ``baselines(train, batch_size, codec)``; none for an objective without it."""
    return {name: (objective.baselines(train, batch_size, model.codec) if hasattr(objective, "baselines") else {})
            for name, (objective, _) in model.objectives.items()}


def _positions(term) -> torch.Tensor:
    """A term's losses per clip and position (B, K): per frame when it has them, else (B, 1)."""
    return term.detail.get("per_frame", term.per_clip[:, None]).float()


@contextlib.contextmanager
def ablated(model: torch.nn.Module, ablation: str | None):
    """The model with pass 2's reads ablated (``shuffle_queries``: each clip read with the queries of the next
    clip in its batch; ``static_queries``: with ``q_static``, as pass 1), or unchanged (None, ``blind``:
    that one replaces the frames, see ``clip_losses``)."""
    if ablation is not None and ablation not in ABLATIONS:
        raise FoveaError(f"--ablate {ablation!r}: choose from {', '.join(ABLATIONS)}")
    shift = model.shift_queries
    if ablation == "shuffle_queries":
        model.shift_queries = lambda queries: shift(queries).roll(1, dims=0)              # (B, T, D)
    elif ablation == "static_queries":
        model.shift_queries = lambda queries: model.q_static.expand_as(queries).to(queries.dtype)
    try:
        yield model
    finally:
        model.__dict__.pop("shift_queries", None)


@torch.no_grad()
def mean_frame(clips: ClipSet, batch_size: int) -> torch.Tensor:
    """The mean frame (T, 3, S, S) uint8 of ``clips`` at each frame position (the ``blind`` ablation's input)."""
    total, count = None, 0
    for batch in clips.batches(batch_size):
        frames = batch["frames"].double()                                     # (B, T, 3, S, S)
        total = frames.sum(0) if total is None else total + frames.sum(0)
        count += len(frames)
    return (total / count).round().to(torch.uint8)


@torch.no_grad()
def clip_losses(model: torch.nn.Module, clips: ClipSet, baselines: dict[str, dict[str, Baseline]],
                modes: Iterable[str] = MODES, batch_size: int = 16, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32, progress: bool = False,
                blind_frame: torch.Tensor | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Per objective, the losses (N, K) of every mode and baseline on ``clips`` (K: frames for ``next_latent``,
    1 for a per-clip loss); ``model`` is left in eval mode. ``blind_frame`` (T, 3, S, S): every clip's frames
    replaced by it (the ``blind`` ablation; the targets stay the clip's own).

    No gradients, no random numbers drawn from the global generators (they are forked), so an
    evaluation in the middle of training changes nothing the training does next.
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    modes = list(modes)
    losses: dict[str, dict[str, list[torch.Tensor]]] = {
        name: {key: [] for key in modes + list(baselines.get(name, {}))} for name in model.objectives}
    model.eval()
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), autocast, \
            tqdm(total=len(clips), desc="eval", unit="clip", disable=not progress, leave=False) as bar:
        for batch in clips.batches(batch_size):
            frames = batch["frames"].to(device)                                 # (B, T, 3, S, S) uint8
            if blind_frame is not None:
                frames = blind_frame.to(device).expand_as(frames)
            latents = batch["latents"].to(device).float()                       # (B, T, C, h, w)
            targets = {k: v.to(device) for k, v in model.prepare(batch).items()}
            if "coarse" in modes or "fine" in modes:
                out = model(frames, latents, targets)
                for name, terms in out.terms.items():
                    for mode in ("coarse", "fine"):
                        if mode in modes:
                            losses[name][mode].append(_positions(terms[mode]).cpu())
            if "autoregressive" in modes:
                for name, term in model.autoregressive(frames, latents, targets).items():
                    losses[name]["autoregressive"].append(_positions(term).cpu())
            for name, fitted in baselines.items():
                for key, baseline in fitted.items():
                    losses[name][key].append(baseline(latents, targets).float().cpu())
            bar.update(len(frames))
    return {name: {key: torch.cat(values) for key, values in table.items()} for name, table in losses.items()}


# --------------------------------------------------------------------------- statistics


def bootstrap_draws(num_clips: int, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> torch.Tensor:
    """Clip indices resampled with replacement, (samples, num_clips), from a private seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_clips, (samples, num_clips), generator=generator)


def interval(values: torch.Tensor) -> list[float]:
    """The central 95 % of bootstrap replicates (samples,) -> [low, high]."""
    low, high = torch.quantile(values.double(), torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return [low, high]


def mean_ci(per_clip: torch.Tensor, draws: torch.Tensor) -> list[float]:
    """95 % percentile-bootstrap interval of the mean of ``per_clip`` (N,) over the resampled clips."""
    return interval(per_clip.double()[draws].mean(dim=1))


def relative_change(reference: torch.Tensor, other: torch.Tensor, draws: torch.Tensor) -> dict[str, Any]:
    """``(mean(reference) - mean(other)) / mean(reference)`` with a paired bootstrap interval (same clips)."""
    ref, oth = reference.double(), other.double()
    value = float((ref.mean() - oth.mean()) / ref.mean())
    replicates = (ref[draws].mean(1) - oth[draws].mean(1)) / ref[draws].mean(1)
    return {"value": value, "ci95": interval(replicates)}


def summarize(losses: dict[str, torch.Tensor]) -> dict[str, Any]:
    """One objective's figures from its losses (N, K): means, intervals, skill, improvement, gap.

    Keys that are neither a mode nor ``per_frame`` detail are baselines; ``skill`` is measured against the
    best of them (None without baselines).
    """
    per_clip = {name: values.mean(dim=1) for name, values in losses.items()}  # (N,) each
    num_clips = len(next(iter(per_clip.values())))
    draws = bootstrap_draws(num_clips)
    baselines = [name for name in losses if name not in MODES]

    def entry(name: str) -> dict[str, Any]:
        return {"loss": float(per_clip[name].double().mean()), "ci95": mean_ci(per_clip[name], draws),
                "per_frame": losses[name].double().mean(dim=0).tolist()}

    result: dict[str, Any] = {
        "clips": num_clips,
        "modes": {name: entry(name) for name in MODES if name in losses},
        "baselines": {name: entry(name) for name in baselines},
        "bootstrap": {"samples": BOOTSTRAP_SAMPLES, "seed": BOOTSTRAP_SEED, "unit": "clip"},
    }
    best = min(baselines, key=lambda name: result["baselines"][name]["loss"]) if baselines else None
    result["best_baseline"] = best
    if "fine" in losses and best is not None:   # skill of the fine pass against the best baseline, paired over clips
        change = relative_change(per_clip[best], per_clip["fine"], draws)
        result["skill"], result["skill_ci95"] = change["value"], change["ci95"]
    else:
        result["skill"] = result["skill_ci95"] = None
    result["improvement"] = (relative_change(per_clip["coarse"], per_clip["fine"], draws)
                             if "coarse" in losses and "fine" in losses else None)
    if "autoregressive" in losses and "fine" in losses:   # (autoregressive - fine) / fine: minus the change
        gap = relative_change(per_clip["fine"], per_clip["autoregressive"], draws)
        result["autoregressive_gap"] = {"value": -gap["value"], "ci95": [-gap["ci95"][1], -gap["ci95"][0]],
                                        "absolute": result["modes"]["autoregressive"]["loss"]
                                        - result["modes"]["fine"]["loss"]}
    else:
        result["autoregressive_gap"] = None
    return result


def primary_objective(objectives: Iterable[str]) -> str:
    """The objective whose figures ``eval.json`` also holds at its top level: ``next_latent`` if trained, else the first."""
    names = list(objectives)
    return "next_latent" if "next_latent" in names else names[0]


def summarize_objectives(losses: dict[str, dict[str, torch.Tensor]]) -> dict[str, Any]:
    """``eval.json``'s figures: every objective under ``objectives``, the primary one's also at the top level."""
    per_objective = {name: summarize(table) for name, table in losses.items()}
    primary = primary_objective(per_objective)
    return {**per_objective[primary], "primary": primary, "objectives": per_objective}


# --------------------------------------------------------------------------- during training


@dataclass
class Evaluator:
    """The held-out evaluation run every ``eval.every`` steps: coarse and fine losses, baselines, skill.

    Built once per run (the baselines are fitted once on the first training clips); reads the cache
    directly, so the training loader's position never moves.
    """

    clips: ClipSet                  # the held-out clips evaluated (at most eval.max_clips)
    baselines: dict[str, dict[str, Baseline]]   # per objective, fitted on training clips
    weights: dict[str, float]       # per objective: its weight in the trained loss
    lambda_coarse: float
    batch_size: int
    device: torch.device
    dtype: torch.dtype

    @classmethod
    def build(cls, split, config, device: torch.device, dtype: torch.dtype, model) -> "Evaluator | None":
        """``None`` when the run holds out no clips."""
        if not len(split.val):
            return None
        e = config.eval
        baselines = fit_baselines(model, split.train.first(e.baseline_clips), e.batch_size)
        return cls(split.val.spread(e.max_clips), baselines, {n: t.weight for n, t in config.objectives.items()},
                   config.model.lambda_coarse, e.batch_size, device, dtype)

    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, Any]:
        """One ``metrics.jsonl`` row (``"split": "val"``); ``model`` is put back in training mode.

        ``loss_fine``/``loss_coarse`` are weighted over the objectives as the training rows' are;
        ``<objective>_coarse``/``_fine``/``_best_baseline``/``_skill`` and ``baseline_<name>`` per objective; ``skill`` and
        ``improvement`` of the primary objective (``next_latent`` when trained).
        """
        started = time.perf_counter()
        try:
            losses = clip_losses(model, self.clips, self.baselines, ("coarse", "fine"), self.batch_size,
                                 self.device, self.dtype)
        finally:
            model.train()
        row: dict[str, Any] = {"step": step, "split": "val", "clips": len(self.clips)}
        per_objective: dict[str, dict[str, Any]] = {}
        for name, table in losses.items():
            means = {key: float(values.mean(dim=1).double().mean()) for key, values in table.items()}
            best = min((means[k] for k in self.baselines[name]), default=None)
            per_objective[name] = {"coarse": means["coarse"], "fine": means["fine"], "best_baseline": best,
                                   "skill": 1 - means["fine"] / best if best else None}
            row.update({f"baseline_{k}": means[k] for k in self.baselines[name]})
        fine = sum(self.weights[n] * v["fine"] for n, v in per_objective.items())
        coarse = sum(self.weights[n] * v["coarse"] for n, v in per_objective.items())
        primary = per_objective[primary_objective(per_objective)]
        row.update({"loss_fine": fine, "loss_coarse": coarse, "ratio": coarse / fine if fine > 0 else None,
                    "improvement": (primary["coarse"] - primary["fine"]) / primary["coarse"]
                    if primary["coarse"] > 0 and not getattr(model, "single_pass", False) else None,
                    "skill": primary["skill"]})
        for name, values in per_objective.items():
            row.update({f"{name}_{key}": value for key, value in values.items()})
        row["eval_s"] = time.perf_counter() - started
        return row


def format_number(value: float | None, digits: int = 5) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}g}"


# --------------------------------------------------------------------------- `fovea eval RUN_DIR`


@dataclass
class TrainedRun:
    """A finished (or checkpointed) run opened for reading: its config, a checkpoint's model, its split."""

    run: Any                        # fovea.core.rundir.RunDir
    config: Any                     # FoveaConfig
    checkpoint: Any                 # Path of the checkpoint directory
    split: Any                      # fovea.core.split.Split, checked against split.json
    model: torch.nn.Module          # on ``device``, in eval mode
    device: torch.device
    dtype: torch.dtype              # autocast dtype for inference (float32 on CPU)

    @classmethod
    def open(cls, run_dir, step: int | None = None, device: str | None = None, progress: bool = True) -> "TrainedRun":
        """The run at ``run_dir`` with the weights of its newest checkpoint (or of optimizer step ``step``)."""
        import fovea
        from fovea.core.cache import build_cache
        from fovea.core.checkpoint import load_weights
        from fovea.core.devices import DTYPES, resolve_device
        from fovea.core.rundir import RunDir, checkpoint_step
        from fovea.core.split import build_split, check_recorded

        run = RunDir.resolve(run_dir)
        config = fovea.load_config(run.config_file)
        checkpoint = run.checkpoint_at(step) if step is not None else run.latest_checkpoint
        recorded = run.read_json(run.split_file)
        if recorded is None:
            raise FoveaError(f"{run.path} recorded no held-out split (no split.json: the run predates [eval]); its "
                             f"clips were all trained on. Train a new run to evaluate on held-out clips")
        target = resolve_device(device or config.run.device)
        cache = build_cache(config, target, progress=progress)       # opened; rebuilt only if it was deleted
        data = build_split(config, cache, target, progress=progress)
        check_recorded(data, recorded, str(run.split_file))
        model = fovea.build_model(config)
        load_weights(model, run, checkpoint_step(checkpoint))
        dtype = DTYPES[config.precision.dtype] if target.type == "cuda" else torch.float32
        return cls(run, config, checkpoint, data, model.to(target).eval(), target, dtype)

    def clips(self, split: str, count: int | None) -> ClipSet:
        """At most ``count`` clips of the ``val`` or ``train`` split, evenly spread (default: every held-out
        clip; for the training split, as many as are held out, at least 64)."""
        if split not in ("val", "train"):
            raise FoveaError(f"--split {split!r}: choose val (the held-out clips) or train")
        chosen = self.split.val if split == "val" else self.split.train
        if not len(chosen):
            raise FoveaError(f"{self.run.path} holds out no clips ([eval] val_fraction = 0); use --split train, "
                             f"or train a run with held-out clips")
        return chosen.spread(count or (len(chosen) if split == "val" else max(64, len(self.split.val))))


def summarize_ablation(original: dict[str, torch.Tensor], ablated: dict[str, torch.Tensor]) -> dict[str, Any]:
    """One objective under an ablation, against the same clips unablated (losses (N, K) per mode): the
    ablated losses, the improvement left ``(coarse - ablated fine) / coarse`` and its share of the original
    improvement (None when the original's interval reaches 0), and the change of the fine loss
    ``(ablated - fine) / fine``, with paired intervals."""
    per_clip = {k: v.mean(dim=1) for k, v in original.items()}
    after = {k: v.mean(dim=1) for k, v in ablated.items()}
    draws = bootstrap_draws(len(per_clip["fine"]))
    left = relative_change(per_clip["coarse"], after["fine"], draws)
    before = relative_change(per_clip["coarse"], per_clip["fine"], draws)
    raised = relative_change(per_clip["fine"], after["fine"], draws)
    return {"modes": {k: {"loss": float(v.double().mean()), "ci95": mean_ci(v, draws)} for k, v in after.items()},
            # a share of an improvement that is not there (its interval reaches 0) would be noise
            "improvement_left": left["value"] / before["value"] if before["ci95"][0] > 0 else None,
            "improvement": left,
            "fine_change": {"value": -raised["value"], "ci95": [-raised["ci95"][1], -raised["ci95"][0]]}}


def evaluate_ablations(model: torch.nn.Module, clips: ClipSet, original: dict[str, dict[str, torch.Tensor]],
                       ablations: Iterable[str], train: ClipSet, batch_size: int, device, dtype,
                       progress: bool = False) -> dict[str, dict[str, Any]]:
    """``eval.json``'s ``ablations``: per ablation and objective, ``summarize_ablation`` against ``original``."""
    out: dict[str, dict[str, Any]] = {}
    for ablation in ablations:                   # an unknown name is refused by ``ablated``
        size = batch_size
        if ablation == "shuffle_queries":   # a batch of one clip would read its own queries
            size = max(2, size)
            while len(clips) % size == 1:
                size += 1
        blind = mean_frame(train, batch_size) if ablation == "blind" else None
        with ablated(model, ablation):
            losses = clip_losses(model, clips, {}, ("coarse", "fine"), size, device, dtype, progress, blind)
        out[ablation] = {name: summarize_ablation(original[name], table) for name, table in losses.items()}
    return out


def flops_per_clip(model: torch.nn.Module, clips: ClipSet, device) -> dict[str, float]:
    """FLOPs of one clip (torch's ``FlopCounterMode``): a ``forward`` in eval mode, and a ``train_step``'s
    forward and backward (on a copy, so nothing of ``model`` changes). Matmuls and convolutions; the same
    count for every encoder, so a foveated and a many-token model compare at matched compute."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    batch = clips.cache.read(clips.indices[:1])
    frames, latents = batch["frames"].to(device), batch["latents"].to(device).float()
    targets = {k: v.to(device) for k, v in model.prepare(batch).items()}
    trainee = copy.deepcopy(model).train()
    with torch.enable_grad(), torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as train:
        trainee(frames, latents, targets).loss.backward()
    # in grad mode too: torch's module tracker cannot follow a forward whose inputs were made under no_grad
    with torch.enable_grad(), torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as forward:
        trainee.eval()(frames, latents, targets)
    return {"forward": float(forward.get_total_flops()), "train_step": float(train.get_total_flops())}


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


NOTES = {"coarse": "pass 1 alone (static query)", "fine": "two passes, as trained",
         "autoregressive": "one pass, its own queries (deployed)",
         "mean_latent": "baseline: training mean latent", "copy_previous": "baseline: previous frame's latent",
         "unigram": "baseline: token frequencies of training captions",
         "bigram": "baseline: next token given the previous one (training captions)"}


def rows(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """``(name, loss, 95 % interval, what it is)`` for every mode and baseline of one objective's result."""
    out = []
    for group in ("modes", "baselines"):
        for name, entry in result[group].items():
            low, high = entry["ci95"]
            out.append((name, format_number(entry["loss"]), f"[{format_number(low)}, {format_number(high)}]",
                        NOTES.get(name, "")))
    return out


def headline(result: dict[str, Any]) -> list[str]:
    """Skill, improvement and the autoregressive gap of one objective, one line each, with their intervals."""
    def pct(entry: dict[str, Any] | None, key: str = "value") -> str:
        if entry is None:
            return "—"
        low, high = entry["ci95"]
        return f"{100 * entry[key]:+.2f} % (95 % CI {100 * low:+.2f} … {100 * high:+.2f} %)"

    lines = []
    if result.get("single_pass"):
        lines.append("one pass: a query-free encoder has no coarse and fine reads, so no improvement to report")
    if result.get("skill") is not None:
        lines.append(f"skill        {pct({'value': result['skill'], 'ci95': result['skill_ci95']})}  "
                     f"= 1 − fine / {result['best_baseline']}")
    if not result.get("single_pass"):
        lines.append(f"improvement  {pct(result.get('improvement'))}  = (coarse − fine) / coarse")
    if result.get("autoregressive_gap") is not None:
        lines.append(f"autoregressive gap {pct(result['autoregressive_gap'])}  = (autoregressive − fine) / fine")
    return lines


ABLATION_NOTES = {"shuffle_queries": "pass 2 reads each clip with another clip's queries",
                  "static_queries": "pass 2 reads with q_static, as pass 1",
                  "blind": "every frame replaced by the training clips' mean frame"}


def ablation_lines(result: dict[str, Any]) -> list[str]:
    """One line per ablation and objective: the improvement left (and its share), the change of the fine loss."""
    lines = []
    for ablation, per_objective in (result.get("ablations") or {}).items():
        for name, figures in per_objective.items():
            left, change = figures["improvement"], figures["fine_change"]
            share = figures["improvement_left"]
            lines.append(f"{ablation} ({ABLATION_NOTES[ablation]}), {name}: improvement left "
                         f"{100 * left['value']:+.2f} % (95 % CI {100 * left['ci95'][0]:+.2f} … "
                         f"{100 * left['ci95'][1]:+.2f} %)" + ("" if share is None else f", {share:.2f} of it")
                         + f"; fine loss {100 * change['value']:+.2f} % (95 % CI {100 * change['ci95'][0]:+.2f} … "
                         f"{100 * change['ci95'][1]:+.2f} %)")
    return lines


UNITS = {"next_latent": "MSE per clip", "caption": "cross-entropy per caption token (nats), mean per clip"}


def objective_results(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each objective's figures of an eval result (a result from before objectives: its top level, ``next_latent``)."""
    return result.get("objectives") or {"next_latent": result}


def render_markdown(result: dict[str, Any], title: str) -> str:
    """``eval.md``: per objective, the table, the headline figures and (per frame) the losses by position."""
    lines = [f"# Held-out evaluation of {title}" if result["split"] == "val" else f"# Evaluation of {title} "
             f"on training clips", "",
             f"Checkpoint of step {result['step']}, {result['clips']} clips of the `{result['split']}` split; "
             f"mean over clips with a 95 % bootstrap interval over clips "
             f"({result['bootstrap']['samples']} resamples)."]
    for name, figures in objective_results(result).items():
        lines += ["", f"## Objective `{name}` ({UNITS.get(name, 'loss per clip')})", "",
                  "| | loss | 95 % interval | |", "|---|---|---|---|"]
        lines += [f"| {row} | {loss} | {ci} | {note} |" for row, loss, ci, note in rows(figures)]
        lines += ["", *[f"- {line}" for line in headline(figures)]]
        T = len(next(iter(figures["modes"].values()))["per_frame"])
        if T > 1:
            lines += ["", "### Per frame position", "",
                      "| | " + " | ".join(f"t={t + 1}" for t in range(T)) + " |", "|---|" + "---|" * T]
            for group in ("modes", "baselines"):
                for key, entry in figures[group].items():
                    lines.append(f"| {key} | " + " | ".join(format_number(v, 4) for v in entry["per_frame"]) + " |")
    if result.get("ablations"):
        lines += ["", "## Ablations (the same clips)", "", *[f"- {line}" for line in ablation_lines(result)]]
    if result.get("flops_per_clip"):
        flops = result["flops_per_clip"]
        lines += ["", f"FLOPs per clip (torch's FlopCounterMode): {flops['forward'] / 1e9:.4g} G forward, "
                      f"{flops['train_step'] / 1e9:.4g} G training step (forward and backward)."]
    return "\n".join(lines) + "\n"
