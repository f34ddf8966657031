"""Clips: what a clip source (a ``source`` plugin) returns, and how fovea builds one from the config.

A source is a map-style collection: ``len(source)`` clips, ``source[i]`` a ``Clip`` of ``num_frames``
uint8 frames ``(T, 3, S, S)`` with where it came from and, optionally, a caption (text describing it,
for the caption objective; ``None`` when the source has none). A clip that cannot be read (a corrupt or
audio-only file, a clip too short for the policy) raises ``SkipClip`` with the reason: it is listed
in the data report and left out; the run goes on. ``fovea.core.cache`` decodes every clip once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch

from fovea.core.config import FoveaConfig
from fovea.core.errors import FoveaError, PluginError


@dataclass
class Clip:
    """One clip: its frames, what they were read from and, if the source has one, its caption."""

    frames: torch.Tensor                 # (T, 3, S, S) uint8
    source: str                          # a file path, or a description such as "synthetic seed=0 clip=3"
    frame_indices: list[int] = field(default_factory=list)  # indices of the frames in the source
    caption: str | None = None           # text describing the clip; None when the source gives none


class SkipClip(Exception):
    """Raised by a source for a clip it cannot provide: the reason and the item go into the data report."""

    def __init__(self, reason: str, source: str = ""):
        super().__init__(f"{source}: {reason}" if source else reason)
        self.reason, self.source = reason, source


def build_source(config: FoveaConfig):
    """The clip source named by ``[data] name``, built with its options and the clip shape."""
    from fovea.core.plugins import get_part

    part = get_part("source", config.data.name)
    source = part.cls(config.data.options, num_frames=config.data.num_frames,
                      frame_size=config.data.frame_size, seed=config.run.seed)
    if len(source) == 0:
        raise FoveaError(f"the '{config.data.name}' source has no clips; check the [data] table")
    return source


def check_clip(clip: Clip, config: FoveaConfig) -> Clip:
    """``clip`` if it keeps the clip source contract, else a ``PluginError`` naming the source."""
    T, S = config.data.num_frames, config.data.frame_size
    frames = getattr(clip, "frames", None)
    if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8 or tuple(frames.shape) != (T, 3, S, S):
        got = f"{tuple(frames.shape)} {frames.dtype}" if isinstance(frames, torch.Tensor) else type(clip).__name__
        raise PluginError(f"clip source '{config.data.name}' returned {got}; the clip source contract is a fovea Clip "
                          f"with uint8 frames of shape {(T, 3, S, S)}")
    caption = getattr(clip, "caption", None)
    if caption is not None and not isinstance(caption, str):
        raise PluginError(f"clip source '{config.data.name}' returned a caption of type {type(caption).__name__}; "
                          f"the clip source contract is a str or None")
    return clip


def iter_clips(config: FoveaConfig, indices: Iterable[int] | None = None) -> Iterator[tuple[int, Clip]]:
    """``(index, clip)`` for the given clips of the config's source (default: all), each checked against the
    clip contract; clips the source cannot provide (``SkipClip``) are left out."""
    source = build_source(config)
    for index in range(len(source)) if indices is None else indices:
        try:
            yield index, check_clip(source[index], config)
        except SkipClip:
            continue


def read_clips(config: FoveaConfig, indices: list[int] | None = None) -> torch.Tensor:
    """Frames of the given clips (default: all) as uint8 (N, T, 3, S, S), skipping unreadable ones.

    For tests and probes that need a few real clips; training streams from the cache instead.
    """
    frames = [clip.frames for _, clip in iter_clips(config, indices)]
    if not frames:
        raise FoveaError(f"none of the requested clips of the '{config.data.name}' source could be read")
    return torch.stack(frames)
