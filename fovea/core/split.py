"""The held-out split: which cached clips train and which are only ever evaluated.

The split is chosen from the clips themselves, never from the seed or the data order: each clip's key
is the SHA-256 of its source and frame indices, and the clips with the smallest keys are held out
(``[eval] val_clips``, or ``val_fraction`` of them). Every process of a torchrun job, every resume and
every seed therefore hold out the same clips, and adding clips to a source moves few of them.
With ``[eval] path`` the held-out clips come from a separate source instead (its own cache) and every
clip of ``[data]`` trains. The run directory records the held-out clips in ``split.json``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch

from fovea.core.cache import ClipCache
from fovea.core.config import FoveaConfig
from fovea.core.errors import ConfigError, FoveaError

METHOD = "held out: the clips with the smallest SHA-256 of [source, frame_indices]"


@dataclass(frozen=True)
class ClipSet:
    """Some clips of one cache, by cache index."""

    cache: ClipCache
    indices: list[int]

    def __len__(self) -> int:
        return len(self.indices)

    def batches(self, batch_size: int):
        """``cache.read`` of consecutive chunks of the clips."""
        for start in range(0, len(self.indices), batch_size):
            yield self.cache.read(self.indices[start:start + batch_size])

    def first(self, count: int) -> "ClipSet":
        """The first ``count`` clips in cache order: neighbours, so they touch few shards (each shard a
        run reads is hashed once before use, see ``fovea.core.cache``)."""
        return ClipSet(self.cache, self.indices[:count])

    def spread(self, count: int) -> "ClipSet":
        """At most ``count`` of the clips, evenly spread over the set (deterministic)."""
        if count >= len(self.indices):
            return self
        picks = torch.linspace(0, len(self.indices) - 1, count).round().long().tolist()
        return ClipSet(self.cache, [self.indices[i] for i in picks])


@dataclass(frozen=True)
class Split:
    train: ClipSet
    val: ClipSet
    left_out: tuple[dict[str, Any], ...] = ()   # clips neither trains nor evaluates, with why (data report)

    def record(self) -> dict[str, Any]:
        """What ``split.json`` holds: how the split was made and the source and frames of each held-out clip."""
        info = self.val.cache.clip_info()
        return {"method": METHOD if self.val.cache is self.train.cache else "held out: a separate source ([eval] path)",
                "train_cache": self.train.cache.location, "val_cache": self.val.cache.location,
                "num_train": len(self.train), "num_val": len(self.val),
                "val": [{"index": i, "source": info[i]["source"], "frame_indices": info[i]["frame_indices"]}
                        for i in self.val.indices]}


def clip_key(info: dict[str, Any]) -> str:
    """A clip's identity, independent of where it sits in the cache: hash of its source and frames."""
    return hashlib.sha256(json.dumps([info["source"], info["frame_indices"]]).encode()).hexdigest()


def held_out_count(num_clips: int, config: FoveaConfig) -> int:
    """How many of ``num_clips`` clips ``[eval]`` holds out (never all of them)."""
    e = config.eval
    count = e.val_clips if e.val_clips is not None else (max(1, round(e.val_fraction * num_clips))
                                                         if e.val_fraction > 0 else 0)
    if count >= num_clips:
        raise FoveaError(f"[eval] holds out {count} of the {num_clips} clips, leaving none to train on; lower "
                         f"eval.val_clips or eval.val_fraction, or add clips")
    return count


def split_cache(cache: ClipCache, config: FoveaConfig) -> Split:
    """Hold out the clips of ``cache`` with the smallest keys; the rest train (both in cache order)."""
    info = cache.clip_info()
    count = held_out_count(len(cache), config)
    held = set(sorted(range(len(cache)), key=lambda i: clip_key(info[i]))[:count])
    return Split(ClipSet(cache, [i for i in range(len(cache)) if i not in held]), ClipSet(cache, sorted(held)))


def held_out_config(config: FoveaConfig) -> FoveaConfig:
    """The config of the separate held-out source of ``[eval] path``: ``[data]`` reading that path."""
    from fovea.core.config import validate_config

    options = type(config.data.options).model_fields
    if "path" not in options:
        raise ConfigError(f"eval.path: the '{config.data.name}' source has no path option; hold out clips with "
                          f"eval.val_fraction or eval.val_clips instead")
    data = config.model_dump(mode="json", exclude_none=True)
    data["data"]["path"] = config.eval.path
    return validate_config(data, source="eval.path")


def build_split(config: FoveaConfig, cache: ClipCache, device: torch.device | str = "cpu",
                progress: bool = False) -> Split:
    """The run's split of ``cache`` (the training cache): by key, or against ``[eval] path``'s own cache.

    When an objective needs captions, clips without one are left out of both sets (``left_out``).
    """
    from fovea.core.objectives import needs_captions

    if config.eval.path is None:
        split = split_cache(cache, config)
    else:
        from fovea.core.cache import build_cache

        val = build_cache(held_out_config(config), device, progress=progress)
        split = Split(ClipSet(cache, list(range(len(cache)))), ClipSet(val, list(range(len(val)))))
    return keep_captioned(split) if needs_captions(config) else split


NO_CAPTION = "no caption (the caption objective needs one)"


def keep_captioned(split: Split) -> Split:
    """``split`` without the clips that carry no caption, which are listed in ``left_out`` with the reason."""
    left_out: list[dict[str, Any]] = []

    def captioned(clips: ClipSet) -> ClipSet:
        captions, info = clips.cache.captions(), clips.cache.clip_info()
        for i in clips.indices:
            if not captions[i]:
                left_out.append({"index": i, "source": info[i]["source"], "reason": NO_CAPTION})
        return ClipSet(clips.cache, [i for i in clips.indices if captions[i]])

    train, val = captioned(split.train), captioned(split.val)
    if not len(train):
        raise FoveaError(f"none of the {len(split.train)} training clips has a caption, and the caption objective "
                         f"needs them: give the videos captions (NAME.txt beside NAME.mp4, or captions.jsonl / "
                         f"captions.csv at the data root), or train without [objectives.caption]")
    return Split(train, val, tuple(left_out))


def check_recorded(split: Split, recorded: dict[str, Any] | None, where: str) -> None:
    """A ``FoveaError`` unless ``split`` holds out exactly the clips ``split.json`` recorded."""
    if recorded is None:
        return
    now = split.record()
    same = [(c["source"], c["frame_indices"]) for c in now["val"]] == \
        [(c.get("source"), c.get("frame_indices")) for c in recorded.get("val", [])]
    if not same or now["num_train"] != recorded.get("num_train"):
        raise FoveaError(f"{where}: the run held out other clips ({recorded.get('num_val')} held out, "
                         f"{recorded.get('num_train')} training) than the data and [eval] give now "
                         f"({now['num_val']}, {now['num_train']}): keep [data] and [eval] as the run had them")
