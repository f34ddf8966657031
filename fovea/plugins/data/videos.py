"""``videos``: clips from a directory tree of video files, decoded with PyAV (FFmpeg).

Each file is one clip: T frames sampled uniformly over its frame range (SPEC.md: linspace over the
frames), resized so the short side is ``frame_size`` and centre-cropped to a square, shown as a player
would (rotation metadata applied, any pixel format — grayscale, 10-bit — converted to 8-bit RGB).
Frames are counted by demuxing, not from the header, so variable frame rate and missing or wrong
frame counts do not shift the sampling; a file whose tail fails to decode is sampled over the frames
that did decode. Files that cannot give a clip raise ``SkipClip`` with the reason.

Captions (optional): a clip's caption is the text of a sidecar ``NAME.txt`` beside ``NAME.mp4``, else
its entry in an index at the data root, ``captions.jsonl`` (one ``{"path": ..., "caption": ...}`` per
line) or ``captions.csv`` (a header row naming ``path`` and ``caption``; WebVid-style metadata), whose
paths are relative to the root (or absolute). The sidecar wins over the index; an empty caption is no
caption. A malformed captions file is a ``FoveaError`` naming the file and the line.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from fovea.core.data import Clip, SkipClip
from fovea.core.errors import FoveaError
from fovea.core.hookspecs import hookimpl

EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")
CAPTION_INDEXES = ("captions.jsonl", "captions.csv")   # at the data root; one of them
JSONL_FIX = 'each line must be a JSON object like {"path": "clip.mp4", "caption": "a dog runs"}'
CSV_FIX = "the first row must name the columns path and caption, and every row give both"


def sample_indices(num_available: int, num_frames: int) -> list[int]:
    """``num_frames`` indices spread uniformly over ``[0, num_available - 1]``, both ends included."""
    return torch.linspace(0, num_available - 1, num_frames).round().long().tolist()


class VideoFolder:
    """Video files under a directory (mp4, mkv, webm, avi, mov), T frames sampled uniformly from each;
    captions from sidecar ``.txt`` files or a ``captions.jsonl`` / ``captions.csv`` index at the root."""

    class Config(BaseModel):
        """Options of the ``videos`` source."""

        model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

        path: str = "data/videos"
        """Directory searched (with subdirectories) for video files; each file is one clip."""
        extensions: tuple[str, ...] = EXTENSIONS
        """File endings taken as videos (case-insensitive)."""
        short_clips: Literal["repeat", "skip"] = "repeat"
        """A file with fewer than T frames: ``repeat`` samples its frames with repeats (it plays slowed down),
        ``skip`` leaves it out (listed in the data report)."""

    def __init__(self, config: Config, *, num_frames: int, frame_size: int, seed: int = 0):
        self.config, self.num_frames, self.frame_size = config, num_frames, frame_size
        root = Path(config.path).expanduser()
        what = "files ending in " + ", ".join(config.extensions)
        if root.is_file():
            raise FoveaError(f"data.path = '{config.path}' is a file; point it at the directory that holds your "
                             f"training videos ({what}), e.g. --set data.path={root.parent}")
        if not root.is_dir():
            raise FoveaError(f"no video directory at data.path = '{config.path}': put your training videos there "
                             f"({what}; any size, subdirectories are searched), or point at yours with "
                             f"--set data.path=DIR")
        endings = tuple(e.lower() for e in config.extensions)
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in endings and p.is_file())
        if not self.files:
            raise FoveaError(f"no videos under '{config.path}' (data.path): expected {what}")
        self.captions = read_caption_index(root, self.files)   # {file: caption}, read once

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Clip:
        """File ``index`` as a clip of uint8 frames (T, 3, S, S) with its caption; ``SkipClip`` if it cannot be one."""
        path = self.files[index]
        clip = read_video(path, self.num_frames, self.frame_size, self.config.short_clips)
        if clip.caption is None:   # the sidecar wins over the index
            clip.caption = self.captions.get(path)
        return clip


def read_video(path: str | Path, num_frames: int, frame_size: int,
               short_clips: Literal["repeat", "skip"] = "repeat") -> Clip:
    """One video file as a clip of ``num_frames`` uint8 frames (T, 3, S, S) sampled uniformly, with the
    caption of its sidecar ``NAME.txt`` if there is one; ``SkipClip`` (with the reason) if it cannot be a clip."""
    path = Path(path)
    try:
        clip = _decode(path, num_frames, frame_size, short_clips)
    except SkipClip:
        raise
    except Exception as exc:  # FFmpeg and container errors of every kind: the file is bad, not the run
        raise SkipClip(f"cannot be decoded ({type(exc).__name__}: {exc})", str(path)) from None
    clip.caption = read_sidecar_caption(path)
    return clip


def _decode(path: Path, num_frames: int, frame_size: int, short_clips: str) -> Clip:
    if path.stat().st_size == 0:
        raise SkipClip("empty file (0 bytes)", str(path))
    available = count_frames(path)
    if not available:
        raise SkipClip("no video stream (audio-only or not a video)" if available is None
                       else "no decodable video frames", str(path))
    indices = _indices(available, num_frames, short_clips, path)
    frames, decoded = decode_frames(path, set(indices), frame_size)
    if decoded < available:  # the tail is damaged: sample again over the frames that decode
        if decoded == 0:
            raise SkipClip("no decodable video frames", str(path))
        indices = _indices(decoded, num_frames, short_clips, path)
        frames, _ = decode_frames(path, set(indices), frame_size)
    clip = torch.stack([frames[i] for i in indices])                   # (T, 3, S, S) uint8
    return Clip(clip, source=str(path), frame_indices=indices)


def _indices(available: int, num_frames: int, short_clips: str, path: Path) -> list[int]:
    if available < num_frames and short_clips == "skip":
        raise SkipClip(f"{available} frames, fewer than data.num_frames = {num_frames} "
                       f"(data.short_clips = 'skip')", str(path))
    return sample_indices(available, num_frames)


# --- captions ------------------------------------------------------------------------------------

def read_sidecar_caption(video: Path) -> str | None:
    """The caption in ``NAME.txt`` beside ``video`` (UTF-8, stripped), or None when there is none or it is empty."""
    sidecar = video.with_suffix(".txt")
    try:
        data = sidecar.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return _utf8(data, sidecar, "save it as UTF-8 text").strip() or None


def read_caption_index(root: Path, files: list[Path]) -> dict[Path, str]:
    """Captions of ``files`` from the index at ``root`` (``captions.jsonl`` or ``captions.csv``; {} without one).

    Entries naming no file of ``files`` are left out with one warning on stderr; a malformed index, or
    two captions for one file, is a ``FoveaError`` naming the file and the line.
    """
    found = [root / name for name in CAPTION_INDEXES if (root / name).is_file()]
    if not found:
        return {}
    if len(found) > 1:
        raise FoveaError(f"both {found[0]} and {found[1]} give captions; keep one of them")
    index = found[0]
    entries = _jsonl_entries(index) if index.suffix == ".jsonl" else _csv_entries(index)
    by_name = {os.path.abspath(file): file for file in files}
    seen: dict[Path, tuple[int, str]] = {}   # file -> (line, caption) of its first entry
    unknown: list[str] = []
    for line, name, caption in entries:
        file = by_name.get(os.path.abspath(root / name))   # an absolute name replaces the root
        if file is None:
            unknown.append(name)
            continue
        first = seen.setdefault(file, (line, caption.strip()))
        if first[1] != caption.strip():
            raise FoveaError(f"{index}, line {line}: a second caption for '{name}' (the first is on line "
                             f"{first[0]}); keep one")
    if unknown:
        print(f"warning: {index} gives captions for {len(unknown)} file(s) that are not among the videos under "
              f"{root} (the first: '{unknown[0]}'); their captions are not used", file=sys.stderr)
    return {file: caption for file, (_, caption) in seen.items() if caption}


def _jsonl_entries(index: Path):
    """(line number, path, caption) of each non-blank line of a ``captions.jsonl``."""
    text = _utf8(index.read_bytes(), index, "save it as UTF-8")
    for number, line in enumerate(text.split("\n"), 1):   # not splitlines: JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FoveaError(f"{index}, line {number}: not valid JSON ({exc.msg}); {JSONL_FIX}") from None
        if not isinstance(entry, dict):
            raise FoveaError(f"{index}, line {number}: a JSON {type(entry).__name__}, not an object; {JSONL_FIX}")
        for key in ("path", "caption"):
            if key not in entry:
                raise FoveaError(f"{index}, line {number}: no '{key}' key; {JSONL_FIX}")
            if not isinstance(entry[key], str):
                raise FoveaError(f"{index}, line {number}: '{key}' is {json.dumps(entry[key])[:40]}, not a "
                                 f"string; {JSONL_FIX}")
        yield number, entry["path"], entry["caption"]


def _csv_entries(index: Path):
    """(line number, path, caption) of each row of a ``captions.csv`` (quoted fields may span lines)."""
    reader = csv.DictReader(io.StringIO(_utf8(index.read_bytes(), index, "save it as UTF-8"), newline=""))
    try:
        columns = reader.fieldnames or []
        missing = [column for column in ("path", "caption") if column not in columns]
        if missing:
            raise FoveaError(f"{index}, line 1: no column {' or '.join(repr(m) for m in missing)} (the header row "
                             f"names {', '.join(repr(c) for c in columns) or 'nothing'}); {CSV_FIX}")
        for row in reader:
            if row["path"] is None or row["caption"] is None:
                raise FoveaError(f"{index}, line {reader.line_num}: fewer fields than the header row; {CSV_FIX}")
            yield reader.line_num, row["path"], row["caption"]
    except csv.Error as exc:
        raise FoveaError(f"{index}, line {reader.line_num}: not valid CSV ({exc}); {CSV_FIX}") from None


def _utf8(data: bytes, path: Path, fix: str) -> str:
    """``data`` decoded as UTF-8 (a leading byte-order mark dropped); a ``FoveaError`` naming the line otherwise."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise FoveaError(f"{path}, line {line}: not UTF-8 text (byte {exc.start}); {fix}") from None


def count_frames(path: Path) -> int | None:
    """Video frames in the file, counted by demuxing (header counts are often missing or wrong);
    None when it has no video stream."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            return None
        stream = container.streams.video[0]
        count = 0
        try:
            for packet in container.demux(stream):
                count += packet.size > 0  # the flush packet at the end is empty
        except av.error.FFmpegError:
            pass  # a damaged tail: what demuxed so far
        return count


def decode_frames(path: Path, wanted: set[int], size: int) -> tuple[dict[int, torch.Tensor], int]:
    """Decode the file once; return the ``wanted`` frames as (3, size, size) uint8 and the frames decoded."""
    import av

    frames: dict[int, torch.Tensor] = {}
    decoded = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                if decoded in wanted:
                    frames[decoded] = to_square(frame, size)
                decoded += 1
        except av.error.FFmpegError:
            pass  # a damaged tail: keep the frames before it
    return frames, decoded


def to_square(frame, size: int) -> torch.Tensor:
    """A decoded frame as displayed (rotation applied), short side resized to ``size``, centre crop,
    8-bit RGB (3, size, size); FFmpeg's swscale converts any pixel format and resizes in one pass."""
    scale = size / min(frame.width, frame.height)
    width, height = max(size, round(frame.width * scale)), max(size, round(frame.height * scale))
    image = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")  # (h, w, 3)
    if frame.rotation:
        image = np.rot90(image, k=round(frame.rotation / 90))   # counter-clockwise, as the player shows it
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    image = image[top:top + size, left:left + size]                                           # (S, S, 3)
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()


@hookimpl
def fovea_register_loaders(register):
    register("videos", VideoFolder)
