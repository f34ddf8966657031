"""A trained run opened for reading: its config, a checkpoint's weights in the model, its held-out split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fovea.core.errors import FoveaError
from fovea.core.split import ClipSet


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
