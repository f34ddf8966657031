"""``fovea caption``: captions written by a trained model, next to the reference ones.

The model reads each clip as it would deployed (``FoveatedVLM.generate_text``): one pass, frame t read
with the query it made after frame t-1, the LLM stepping on its KV cache, then greedy decoding of the
caption token by token until the end-of-text token or ``max_tokens``. Clips come from the run's held-out
split (or its training clips), or from video files decoded with the run's frame settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from fovea.core.errors import FoveaError

CAPTIONS_FILE = "captions.jsonl"


def caption_run(run_dir, videos: Iterable[str] = (), split: str = "val", clips: int | None = 16,
                max_tokens: int | None = None, step: int | None = None, device: str | None = None,
                progress: bool = False) -> tuple[Path, list[dict[str, Any]]]:
    """Caption ``videos`` (files) or ``clips`` clips of the run's ``split``; writes ``captions.jsonl`` into the
    run and returns (its path, the rows: source, reference caption or None, generated caption, step).
    ``max_tokens``: default, the caption objective's ``max_tokens``."""
    from fovea.core.evaluation import TrainedRun
    from fovea.core.rundir import checkpoint_step

    opened = TrainedRun.open(run_dir, step, device, progress)
    model = opened.model
    if model.codec is None or not any(getattr(o, "needs_captions", False) for o, _ in model.objectives.values()):
        raise FoveaError(f"{opened.run.path} trains no text objective ({', '.join(opened.config.objectives)}): it "
                         f"cannot write captions. Train one with [objectives.caption] (configs/caption_synthetic.toml)")
    if max_tokens is None:   # as long as the captions it was trained on may be
        max_tokens = max(getattr(getattr(o, "config", None), "max_tokens", 0) for o, _ in model.objectives.values()) or 64
    videos = list(videos)
    batches = (_video_batches(videos, opened.config) if videos
               else _cache_batches(opened.clips(split, clips), opened.config.eval.batch_size))
    rows = []
    with torch.no_grad(), _autocast(opened.device, opened.dtype):
        for frames, sources, references in batches:
            generated = model.generate_text(frames.to(opened.device), max_tokens)
            rows += [{"source": source, "reference": reference, "generated": model.codec.decode(ids),
                      "step": checkpoint_step(opened.checkpoint)}
                     for source, reference, ids in zip(sources, references, generated)]
    text = "".join(json.dumps(row) + "\n" for row in rows)
    opened.run.write_text(CAPTIONS_FILE, text)
    return opened.run.path / CAPTIONS_FILE, rows


def _autocast(device: torch.device, dtype: torch.dtype):
    import contextlib

    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()


def _cache_batches(clips, batch_size: int) -> Iterator[tuple[torch.Tensor, list[str], list[str | None]]]:
    info = clips.cache.clip_info()
    for start in range(0, len(clips), batch_size):
        indices = clips.indices[start:start + batch_size]
        batch = clips.cache.read(indices)
        yield batch["frames"], [info[i]["source"] for i in indices], list(batch["captions"])


def _video_batches(videos: list[str], config) -> Iterator[tuple[torch.Tensor, list[str], list[str | None]]]:
    """Each file decoded with the run's ``num_frames`` and ``frame_size``, one at a time."""
    from fovea.core.data import SkipClip
    from fovea.plugins.data.videos import read_video

    for video in videos:
        path = Path(video)
        if not path.is_file():
            raise FoveaError(f"no video file at {video}")
        try:
            clip = read_video(path, config.data.num_frames, config.data.frame_size)
        except SkipClip as exc:
            raise FoveaError(f"{video}: {exc.reason}") from None
        yield clip.frames[None], [str(path)], [clip.caption]
