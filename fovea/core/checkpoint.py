"""Checkpoints: everything a run needs to continue exactly where it stopped, never half-written.

``<run>/checkpoints/step-000100/`` holds ``model.safetensors`` (the weights), ``training_state.pt``
(optimizer, scheduler, the RNG states of python, numpy, torch and every CUDA device, the open logging
interval; a plain ``torch.save`` of tensors and numbers, loaded with ``weights_only=True``),
``loader_state.json`` (the torchdata loader's state) and ``checkpoint.json`` (step, the settings that
must not change on resume, the size and SHA-256 of every file, checked on load). A checkpoint is written into
``checkpoints/.tmp-step-000100-<pid>/``, every file fsynced, then the directory is renamed: a
``step-N`` directory is complete or absent, so a crash or a full disk at any moment leaves the
previous checkpoint as it was. Only the newest ``training.keep_checkpoints`` are kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fovea.core.config import FoveaConfig
from fovea.core.errors import FoveaError
from fovea.core.files import fsync_path, write_synced
from fovea.core.rundir import CHECKPOINT_INFO, RunDir, checkpoint_name

if TYPE_CHECKING:
    from fovea.core.train import TrainState

FORMAT = 1
MODEL = "model.safetensors"
TRAINING_STATE = "training_state.pt"
LOADER_STATE = "loader_state.json"


def fixed_settings(config: FoveaConfig) -> dict[str, int]:
    """Settings a resumed run must keep: they define what one step is (samples, micro-batches, processes)."""
    import torch.distributed as dist

    world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return {"training.batch_size": config.training.batch_size, "training.grad_accum": config.training.grad_accum,
            "world_size": world_size}


def capture_rng() -> dict[str, Any]:
    """The state of every random generator training reads: python, numpy, torch CPU and each CUDA device."""
    import numpy as np

    numpy_state = np.random.get_state(legacy=False)
    return {"python": random.getstate(),
            "numpy": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                      "pos": int(numpy_state["state"]["pos"]), "has_gauss": int(numpy_state["has_gauss"]),
                      "gauss": float(numpy_state["gauss"])},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: dict[str, Any]) -> None:
    """Put every generator back where ``capture_rng`` found it (CUDA devices that exist now)."""
    import numpy as np

    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
                         "has_gauss": numpy_state["has_gauss"], "gauss": numpy_state["gauss"]})
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


def save_checkpoint(run: RunDir, step: int, state: "TrainState", loader_state: dict, progress: dict[str, Any],
                    keep: int) -> Path:
    """Write the checkpoint of ``step`` crash-safely, then delete all but the newest ``keep``; returns its path.

    ``progress`` (tensors and numbers: the open logging interval, time, skipped steps) goes into
    ``training_state.pt``. A failed write (a full disk) removes the partial copy and raises a
    ``FoveaError``; the previous checkpoint is untouched.
    """
    from safetensors.torch import save_model

    root = run.checkpoints_dir
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    try:
        root.mkdir(exist_ok=True)
        _remove_leftovers(root)
        tmp.mkdir()
        save_model(state.model, str(tmp / MODEL))
        fsync_path(tmp / MODEL)
        training_state = {"optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
                          "rng": capture_rng(), "progress": progress}
        write_synced(tmp / TRAINING_STATE, lambda f: torch.save(training_state, f))   # streamed: no copy in memory
        write_synced(tmp / LOADER_STATE, lambda f: f.write(json.dumps(loader_state).encode()))
        files = {path.name: {"bytes": path.stat().st_size, "sha256": _sha256(path)} for path in sorted(tmp.iterdir())}
        info = {"format": FORMAT, "step": step, "settings": fixed_settings(state.config), "files": files}
        write_synced(tmp / CHECKPOINT_INFO, lambda f: f.write((json.dumps(info, indent=2) + "\n").encode()))
        fsync_path(tmp)
        if run.metrics_file.is_file():
            fsync_path(run.metrics_file)   # the lines up to this step survive a power cut as well
        if final.exists():             # the same step saved again: replace it
            _discard(final)
        os.rename(tmp, final)
        fsync_path(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = run.checkpoints()
        kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        raise FoveaError(f"could not write the checkpoint of step {step} in {root}: {exc.strerror or exc}; "
                         f"{kept}. Free space (or fix the directory), then continue with "
                         f"`fovea run --resume {run.path}`") from None
    for old in run.checkpoints()[:-keep]:
        _discard(old)
    return final


@dataclass
class Checkpoint:
    """A complete checkpoint read back and checked: its step, settings and training state."""

    path: Path
    step: int
    settings: dict[str, Any]
    training_state: dict[str, Any]
    loader_state: dict[str, Any]

    @property
    def model_file(self) -> Path:
        return self.path / MODEL


def read_checkpoint(path: Path) -> Checkpoint:
    """Read and check the checkpoint directory ``path``; any damage is one ``FoveaError`` saying what to do."""
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
    if info.get("format") != FORMAT:
        raise FoveaError(f"checkpoint {path} has format {info.get('format')}; this fovea reads format {FORMAT}")
    for name, expected in files.items():
        file = path / name
        size = file.stat().st_size if file.is_file() else None
        if size != expected.get("bytes"):
            found = "missing" if size is None else f"{size} bytes"
            raise corrupt(f"{name} is {found}, expected {expected.get('bytes')} bytes")
        if _sha256(file) != expected.get("sha256"):
            raise corrupt(f"{name} does not match the SHA-256 recorded when it was written")
    try:
        training_state = torch.load(path / TRAINING_STATE, map_location="cpu", weights_only=True)
        loader_state = json.loads((path / LOADER_STATE).read_text(encoding="utf-8"))
        missing = {"optimizer", "scheduler", "rng", "progress"} - set(training_state)
        if missing:
            raise KeyError(f"{TRAINING_STATE} lacks {', '.join(sorted(missing))}")
    except Exception as exc:  # unpickling and JSON errors of every kind: the file is damaged
        raise corrupt(f"cannot read its state ({type(exc).__name__}: {exc})") from None
    return Checkpoint(path, step, settings, training_state, loader_state)


def check_settings(checkpoint: Checkpoint, config: FoveaConfig, force: bool) -> None:
    """Refuse to resume with changed must-not-change settings, unless ``force`` (then warn)."""
    import sys

    now = fixed_settings(config)
    changed = [f"{key} {checkpoint.settings.get(key)} -> {value}" for key, value in now.items()
               if checkpoint.settings.get(key) != value]
    if not changed:
        return
    what = ", ".join(changed)
    if not force:
        raise FoveaError(f"cannot resume {checkpoint.path.parent.parent}: {what} changed since the run started "
                         f"(they define what one step is, so the run would not continue as it began). Set them "
                         f"back, or pass --force to resume anyway")
    print(f"warning: resuming with {what} (--force)", file=sys.stderr)


def restore_training(checkpoint: Checkpoint, state: "TrainState") -> None:
    """Load the checkpoint's weights, optimizer and scheduler into ``state`` (RNG: ``restore_rng``)."""
    from safetensors.torch import load_model

    try:
        load_model(state.model, str(checkpoint.model_file), device=str(state.device))
    except Exception as exc:  # safetensors and load_state_dict report a mismatch in several ways
        raise FoveaError(f"{checkpoint.model_file} does not fit the model the config builds "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); resume with the run's own "
                         f"model settings") from None
    try:
        state.optimizer.load_state_dict(checkpoint.training_state["optimizer"])
        state.scheduler.load_state_dict(checkpoint.training_state["scheduler"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise FoveaError(f"checkpoint {checkpoint.path}: the optimizer state does not fit the trainable "
                         f"parameters ({exc}); resume with the run's own model settings") from None


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
