"""Clips in, training batches out: read each clip once, compute its VAE targets once, batch in memory.

The clip source is a ``loader`` plugin (``[data] name = ...``): a map-style collection of uint8 clips
``(T, 3, S, S)``. Targets are the frozen VAE's latents (SPEC.md), computed in batches before training,
never per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from fovea.core.config import FoveaConfig
from fovea.core.errors import FoveaError, PluginError


@dataclass
class ClipSet:
    """Every clip of a run, decoded once, with its targets."""

    frames: torch.Tensor   # (N, T, 3, S, S) uint8
    latents: torch.Tensor  # (N, T, C, h, w) float32: latent_dist.mean * scaling_factor

    def __len__(self) -> int:
        return len(self.frames)


def build_source(config: FoveaConfig):
    """The clip source named by ``[data] name``, built with its options and the clip shape."""
    from fovea.core.plugins import get_part

    part = get_part("loader", config.data.name)
    return part.cls(config.data.options, num_frames=config.data.num_frames,
                    frame_size=config.data.frame_size, seed=config.run.seed)


def read_clips(config: FoveaConfig) -> torch.Tensor:
    """All clips of the configured source as uint8 (N, T, 3, S, S), checked against the loader contract."""
    source = build_source(config)
    if len(source) == 0:
        raise FoveaError(f"the '{config.data.name}' source has no clips; check the [data] table")
    T, S = config.data.num_frames, config.data.frame_size
    clips = [source[i] for i in range(len(source))]
    bad = next((c for c in clips if c.dtype != torch.uint8 or tuple(c.shape) != (T, 3, S, S)), None)
    if bad is not None:
        raise PluginError(f"loader '{config.data.name}' returned a clip of {tuple(bad.shape)} {bad.dtype}; "
                          f"the loader contract is uint8 frames of shape {(T, 3, S, S)}")
    return torch.stack(clips)


def prepare_clips(config: FoveaConfig, vae, dtype: torch.dtype = torch.float32) -> ClipSet:
    """Read every clip and compute its VAE latents once (batched on the VAE's device)."""
    from fovea.core.vae import encode_latents

    frames = read_clips(config)                                                  # (N, T, 3, S, S)
    N, T = frames.shape[:2]
    latents = encode_latents(vae, frames.flatten(0, 1), config.model.vae.batch_size, dtype)  # (N*T, C, h, w)
    return ClipSet(frames=frames, latents=latents.view(N, T, *latents.shape[1:]))


def iterate_batches(clips: ClipSet, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless ``(frames, latents)`` batches: a fresh seeded shuffle each epoch, incomplete batches dropped."""
    if batch_size > len(clips):
        raise FoveaError(f"training.batch_size ({batch_size}) is larger than the {len(clips)} clips in the data set")
    return _shuffled_batches(clips, batch_size, torch.Generator().manual_seed(seed))


def _shuffled_batches(clips: ClipSet, batch_size: int, generator: torch.Generator):
    while True:
        order = torch.randperm(len(clips), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            index = order[start:start + batch_size]
            yield clips.frames[index], clips.latents[index]
