"""Checkpoints: everything a run needs to continue exactly where it stopped, never half-written.

``<run>/checkpoints/step-000100/`` holds ``model.safetensors`` (the weights), ``training_state.pt``
(optimizer, scheduler, the RNG states of python, numpy, torch and every CUDA device, the open logging
interval; a plain ``torch.save`` of tensors and numbers, loaded with ``weights_only=True``),
``loader_state.json`` (the torchdata loader's state) and ``checkpoint.json`` (step, the settings that
must not change on resume, the size and SHA-256 of every file, checked on load). A run sharded by FSDP2
keeps its weights and optimizer state in ``sharded/`` instead, written by every rank through
``torch.distributed.checkpoint`` (which reshards on load, so such a run also resumes on another number
of processes or in one). Under torchrun rank 0 writes everything else; the RNG states are per rank.
A checkpoint is written into ``checkpoints/.tmp-step-000100/``, every file fsynced, then the directory is renamed: a
``step-N`` directory is complete or absent, so a crash or a full disk at any moment leaves the
previous checkpoint as it was. Only the newest ``training.keep_checkpoints`` are kept.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fovea.core.config import FoveaConfig
from fovea.core.errors import FoveaError
from fovea.core.files import fsync_path, write_synced
from fovea.core.rng import capture_rng
from fovea.core.rundir import CHECKPOINT_INFO, MODEL, SHARDED, RunDir, checkpoint_name

if TYPE_CHECKING:
    from fovea.core.state import TrainState

FORMAT = 2        # 2: per-rank RNG states, sharded/ for FSDP runs; format 1 checkpoints are read as well
TRAINING_STATE = "training_state.pt"
LOADER_STATE = "loader_state.json"


def fixed_settings(config: FoveaConfig) -> dict[str, int]:
    """Settings a resumed run must keep: they define what one step is (samples, micro-batches, processes)."""
    from fovea.core import distributed

    return {"training.batch_size": config.training.batch_size, "training.grad_accum": config.training.grad_accum,
            "world_size": distributed.current().world_size}


def save_checkpoint(run: RunDir, step: int, state: "TrainState", loader_state: dict, progress: dict[str, Any],
                    keep: int) -> Path:
    """Write the checkpoint of ``step`` crash-safely, then delete all but the newest ``keep``; returns its path.

    Every rank calls it (under torchrun). ``progress`` (tensors and numbers: the open logging interval,
    time, skipped steps) goes into ``training_state.pt``. A failed write (a full disk) removes the partial
    copy and raises a ``FoveaError`` on every rank; the previous checkpoint is untouched.
    """
    from safetensors.torch import save_model

    from fovea.core import distributed

    root = run.checkpoints_dir
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{final.name}"   # one name for all ranks; the run lock keeps other trainers out
    sharded = distributed.is_sharded(state.model)

    def failed(exc: BaseException) -> FoveaError:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = run.checkpoints()
        kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        reason = getattr(exc, "strerror", None) or exc
        return FoveaError(f"could not write the checkpoint of step {step} in {root}: {reason}; {kept}. Free space "
                          f"(or fix the directory), then continue with `fovea run --resume {run.path}`")

    def prepare() -> None:
        try:
            root.mkdir(exist_ok=True)
            _remove_leftovers(root)
            tmp.mkdir()
        except OSError as exc:
            raise failed(exc) from None

    distributed.on_main(prepare)
    if sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optimizer_state = get_state_dict(state.model, state.optimizer)
        try:   # every rank writes its shards; a failure on any rank raises on all of them
            dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=tmp / SHARDED)
        except Exception as exc:  # OSError, or DCP's CheckpointException carrying the ranks' errors
            raise failed(exc) from None
    rng = distributed.gather(capture_rng())

    def write() -> None:
        try:
            if not sharded:
                save_model(distributed.unwrap(state.model), str(tmp / MODEL))
                fsync_path(tmp / MODEL)
            training_state = {"optimizer": None if sharded else state.optimizer.state_dict(),
                              "scheduler": state.scheduler.state_dict(), "rng": rng, "progress": progress}
            write_synced(tmp / TRAINING_STATE, lambda f: torch.save(training_state, f))   # streamed: no copy
            write_synced(tmp / LOADER_STATE, lambda f: f.write(json.dumps(loader_state).encode()))
            files = {file.relative_to(tmp).as_posix(): {"bytes": file.stat().st_size, "sha256": _sha256(file)}
                     for file in sorted(tmp.rglob("*")) if file.is_file()}
            info = {"format": FORMAT, "step": step, "settings": fixed_settings(state.config), "sharded": sharded,
                    "files": files}
            write_synced(tmp / CHECKPOINT_INFO, lambda f: f.write((json.dumps(info, indent=2) + "\n").encode()))
            if sharded:
                fsync_path(tmp / SHARDED)
            fsync_path(tmp)
            if run.metrics_file.is_file():
                fsync_path(run.metrics_file)   # the lines up to this step survive a power cut as well
            if final.exists():             # the same step saved again: replace it
                _discard(final)
            os.rename(tmp, final)
            fsync_path(root)
        except OSError as exc:
            raise failed(exc) from None
        for old in run.checkpoints()[:-keep]:
            _discard(old)

    distributed.on_main(write)
    return final


@dataclass
class Checkpoint:
    """A complete checkpoint read back and checked: its step, settings and training state."""

    path: Path
    step: int
    settings: dict[str, Any]
    training_state: dict[str, Any]   # optimizer (None when sharded), scheduler, rng (one per rank), progress
    loader_state: dict[str, Any]
    sharded: bool = False            # weights and optimizer state in ``sharded/`` (FSDP2 through DCP)

    @property
    def model_file(self) -> Path:
        return self.path / MODEL


def read_checkpoint(path: Path, verify: bool = True) -> Checkpoint:
    """Read and check the checkpoint directory ``path``; any damage is one ``FoveaError`` saying what to do.

    ``verify=False`` skips the SHA-256 of every file (the other ranks, once rank 0 checked them).
    """
    others = sorted(set(path.parent.glob("step-*")) - {path}, key=lambda p: (len(p.name), p.name))
    fix = (f"delete {path} to resume from the checkpoint before it ({others[-1].name})" if others
           else "no older checkpoint exists: start the run again")

    def corrupt(reason: str) -> FoveaError:
        return FoveaError(f"checkpoint {path} is corrupt: {reason}; {fix}")

    try:
        info = json.loads((path / CHECKPOINT_INFO).read_text(encoding="utf-8"))
        step, settings, files = info["step"], info["settings"], info["files"]
        if not (isinstance(step, int) and isinstance(settings, dict) and isinstance(files, dict)
                and all(isinstance(entry, dict) for entry in files.values())):
            raise TypeError("step, settings or files has the wrong type")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise corrupt(f"{CHECKPOINT_INFO} is unreadable ({exc})") from None
    if info.get("format") not in (1, FORMAT):
        raise FoveaError(f"checkpoint {path} has format {info.get('format')}; this fovea reads formats 1 to {FORMAT}")
    for name, expected in files.items():
        file = path / name
        size = file.stat().st_size if file.is_file() else None
        if size != expected.get("bytes"):
            found = "missing" if size is None else f"{size} bytes"
            raise corrupt(f"{name} is {found}, expected {expected.get('bytes')} bytes")
        if verify and _sha256(file) != expected.get("sha256"):
            raise corrupt(f"{name} does not match the SHA-256 recorded when it was written")
    try:
        training_state = torch.load(path / TRAINING_STATE, map_location="cpu", weights_only=True)
        loader_state = json.loads((path / LOADER_STATE).read_text(encoding="utf-8"))
        missing = {"optimizer", "scheduler", "rng", "progress"} - set(training_state)
        if missing:
            raise KeyError(f"{TRAINING_STATE} lacks {', '.join(sorted(missing))}")
    except Exception as exc:  # unpickling and JSON errors of every kind: the file is damaged
        raise corrupt(f"cannot read its state ({type(exc).__name__}: {exc})") from None
    if info["format"] == 1:   # one process, one RNG state
        training_state["rng"] = [training_state["rng"]]
    return Checkpoint(path, step, settings, training_state, loader_state, sharded=bool(info.get("sharded")))


def check_settings(checkpoint: Checkpoint, config: FoveaConfig, force: bool) -> None:
    """Refuse to resume with changed must-not-change settings, unless ``force`` (then warn, on rank 0)."""
    import sys

    from fovea.core import distributed

    now = fixed_settings(config)
    changed = [f"{key} {checkpoint.settings.get(key)} -> {value}" for key, value in now.items()
               if checkpoint.settings.get(key) != value]
    if not changed:
        return
    what = ", ".join(changed)
    before, after = checkpoint.settings.get("world_size", 1), now["world_size"]
    run = checkpoint.path.parent.parent
    if before == after:
        advice, consequence = "Set them back, or pass --force to resume anyway", ""
    else:
        old_batch = (checkpoint.settings.get("training.batch_size", config.training.batch_size)
                     * checkpoint.settings.get("training.grad_accum", config.training.grad_accum) * before)
        launch = (f"`torchrun --nproc_per_node={before} -m fovea run --resume {run}`" if before > 1
                  else f"`fovea run --resume {run}` without torchrun")
        advice = f"To continue it as it began, resume it on {before} process{'es' if before > 1 else ''} ({launch}"
        advice += ", over all nodes)" if before > 1 else ")"
        consequence = (f"each step then holds {config.global_batch_size(after)} clips instead of {old_batch}, "
                       f"continuing from the same clip of the data at the same step of the learning-rate "
                       f"schedule, with the weights and optimizer state as saved"
                       f"{' (resharded to the new world size)' if checkpoint.sharded else ''}")
        advice += f"; or pass --force: {consequence}"
    if not force:
        raise FoveaError(f"cannot resume {run}: {what} changed since the run started (they define what one "
                         f"step is, so the run would not continue as it began). {advice}")
    if distributed.current().is_main:
        print(f"warning: resuming with {what} (--force){'; ' + consequence if consequence else ''}",
              file=sys.stderr)


def restore_training(checkpoint: Checkpoint, state: "TrainState") -> None:
    """Load the checkpoint's weights, optimizer and scheduler into ``state`` (RNG: ``fovea.core.rng.restore_rng``).

    A ``sharded/`` checkpoint is resharded by DCP into whatever layout the model has now (FSDP2 on any
    number of processes, DDP, or one process); a ``model.safetensors`` one is spread over FSDP2's shards.
    """
    from fovea.core import distributed

    def mismatch(what: str, exc: Exception) -> FoveaError:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        reason = " ".join(lines[:2])[:300]   # torch puts the first mismatch on the second line
        return FoveaError(f"{what} does not fit the model the config builds ({type(exc).__name__}: {reason}); "
                          f"resume with the run's own model settings")

    if checkpoint.sharded:
        try:
            _load_sharded(checkpoint, state)
        except Exception as exc:  # DCP reports missing keys and shape mismatches in several ways
            raise mismatch(str(checkpoint.path / SHARDED), exc) from None
    elif distributed.is_sharded(state.model):
        try:
            _load_full_into_sharded(checkpoint, state)
        except Exception as exc:
            raise mismatch(str(checkpoint.path), exc) from None
    else:
        from safetensors.torch import load_model

        try:
            load_model(distributed.unwrap(state.model), str(checkpoint.model_file), device=str(state.device))
        except Exception as exc:  # safetensors and load_state_dict report a mismatch in several ways
            raise mismatch(str(checkpoint.model_file), exc) from None
        try:
            state.optimizer.load_state_dict(checkpoint.training_state["optimizer"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise FoveaError(f"checkpoint {checkpoint.path}: the optimizer state does not fit the trainable "
                             f"parameters ({exc}); resume with the run's own model settings") from None
    state.scheduler.load_state_dict(checkpoint.training_state["scheduler"])


def _load_sharded(checkpoint: Checkpoint, state: "TrainState") -> None:
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(state.model, state.optimizer)   # the layout to fill
    _dcp_load({"model": model_state, "optimizer": optimizer_state}, checkpoint.path / SHARDED)
    set_state_dict(state.model, state.optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)


def load_sharded_weights(model: torch.nn.Module, directory: Path) -> None:
    """The weights of a ``sharded/`` checkpoint gathered whole into ``model`` in this one process (audit, viz)."""
    state = model.state_dict()
    _dcp_load({"model": state}, directory)
    model.load_state_dict(state)


def load_weights(model: torch.nn.Module, run: RunDir, step: int | None = None) -> list[str]:
    """Load the weights of ``run``'s newest checkpoint (or of optimizer step ``step``), plain or sharded,
    into ``model``; returns the names of tensors the model does not have.

    For the readers of a run (eval, audit, viz). Tensors named ``vae.*`` are returned for the audit's VAE
    check to report; a checkpoint that misses any of the model's tensors, or holds other foreign ones,
    was not written for this config: an error.
    """
    path = run.weights_file(run.checkpoint_at(step)) if step is not None else run.checkpoint_file
    if not path.exists():
        raise FoveaError(f"{path}: missing; the run's checkpoint has no weights. Restore the file, or train "
                         f"again with `fovea run {run.config_file}`")
    return load_weights_file(model, path)


def load_weights_file(model: torch.nn.Module, path: Path) -> list[str]:
    """``load_weights`` from a weights file (``model.safetensors``) or an FSDP run's ``sharded/`` directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    if path.is_dir():
        try:
            load_sharded_weights(model, path)
        except Exception as exc:  # DCP reports a missing file, a missing key or a shape mismatch in many ways
            reason = " ".join(str(exc).split())[:300]
            raise FoveaError(f"{path}: the sharded checkpoint does not load into the model that config.toml "
                             f"builds ({type(exc).__name__}: {reason}); it is damaged or comes from another "
                             f"config") from None
        return []

    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (SafetensorError, OSError, ValueError) as exc:
        raise FoveaError(f"{path}: not a readable safetensors checkpoint ({exc}); the file is corrupt or "
                         f"truncated. Restore it, or train again") from None
    except RuntimeError as exc:   # shapes that do not fit the model the config builds
        reason = str(exc).strip().splitlines()[-1].strip()
        raise FoveaError(f"{path}: does not fit the model that config.toml builds ({reason}); the checkpoint "
                         f"comes from another config") from None
    foreign = [name for name in unexpected if not name.startswith("vae.")]
    if missing or foreign:
        what = (f"lacks {len(missing)} of the model's tensors (e.g. {missing[0]})" if missing
                else f"holds {len(foreign)} tensors the model does not have (e.g. {foreign[0]})")
        raise FoveaError(f"{path}: {what}; the checkpoint comes from another config or code version")
    return sorted(unexpected)


def _dcp_load(state: dict[str, Any], directory: Path) -> None:
    """``dcp.load`` into ``state`` in place: resharded to the layout of its tensors, in any world size."""
    import warnings

    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():   # loading in one process without torchrun is intended here
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process.*")
        dcp.load(state, checkpoint_id=directory)


def _load_full_into_sharded(checkpoint: Checkpoint, state: "TrainState") -> None:
    """Whole weights and a plain ``optimizer.state_dict()`` (parameters numbered) onto FSDP2's shards."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(state.model, load_file(checkpoint.model_file), options=options)
    saved = checkpoint.training_state["optimizer"]
    name_of = {id(p): name for name, p in state.model.named_parameters()}
    names = [name_of[id(p)] for group in state.optimizer.param_groups for p in group["params"]]   # saved order
    by_name = {"state": {names[i]: value for i, value in saved["state"].items()},
               "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                                for group in saved["param_groups"]]}
    set_optimizer_state_dict(state.model, state.optimizer, by_name, options=options)


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _discard(path: Path) -> None:
    """Remove a checkpoint directory: renamed away first, so no ``step-N`` is ever half-deleted."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_leftovers(root: Path) -> None:
    """Temp and trash directories of a process that died while writing (the run lock says none is alive)."""
    for leftover in root.glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in root.glob(".trash-*"):
        shutil.rmtree(leftover, ignore_errors=True)
