"""FLOPs of one clip, so that models with different encoders compare at matched compute."""

from __future__ import annotations

import torch

from fovea.core.split import ClipSet


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
