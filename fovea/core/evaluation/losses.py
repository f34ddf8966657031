"""Per-clip losses of a model on held-out clips, in every read mode and for every fitted baseline.

Modes: ``coarse`` (pass 1 alone: the static query), ``fine`` (the two-pass model as trained) and
``autoregressive`` (one pass, frame t read with the query the model made after frame t-1 in that same
pass, as a deployed model runs: ``FoveatedVLM.autoregressive``). Losses are per clip as the training
loss: ``next_latent``'s MSE (mean over frames and latent elements), ``caption``'s cross-entropy (mean
over the caption's tokens).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterable

import torch

if TYPE_CHECKING:
    from fovea.core.evaluation.baselines import Baseline
    from fovea.core.split import ClipSet

MODES = ("coarse", "fine", "autoregressive")


def _positions(term) -> torch.Tensor:
    """A term's losses per clip and position (B, K): per frame when it has them, else (B, 1)."""
    return term.detail.get("per_frame", term.per_clip[:, None]).float()


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
