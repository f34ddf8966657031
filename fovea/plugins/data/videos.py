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

A manifest instead of a directory walk (``manifest = "clips.csv"`` or ``"clips.jsonl"``, the WebVid way of
naming millions of clips): one clip per row, its video by ``path`` (relative to the manifest's directory,
or absolute) or ``url`` (any URL fsspec reads: ``http(s)://``, ``s3://`` with s3fs, …; downloaded to a temp
file when the clip is decoded), an optional ``caption`` and optional ``start`` / ``end`` in seconds (the
clip is that part of the video; its source is then ``VIDEO#t=START,END``). A malformed row is a
``FoveaError`` naming the file and the line.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

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
MANIFEST_FIX = ("each row names its video by 'path' or 'url', optionally a 'caption' and 'start'/'end' in seconds "
                "(start < end)")


@dataclass(frozen=True)
class ManifestEntry:
    """One clip of a manifest: its video (a local path or a URL), caption, and time window in seconds."""

    video: str
    caption: str | None = None
    start: float | None = None
    end: float | None = None

    @property
    def source(self) -> str:
        """What the cache records as the clip's source: the video, and its window as a media fragment."""
        if self.start is None and self.end is None:
            return self.video
        return f"{self.video}#t={_seconds(self.start or 0.0)},{'' if self.end is None else _seconds(self.end)}"


def _seconds(value: float) -> str:
    return f"{value:g}"


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
        manifest: str | None = None
        """A ``.csv`` or ``.jsonl`` file listing the clips (columns ``path`` or ``url``, ``caption``, optional ``start``/``end`` seconds) instead of searching ``path``; relative paths in it are relative to its directory."""

    def __init__(self, config: Config, *, num_frames: int, frame_size: int, seed: int = 0):
        self.config, self.num_frames, self.frame_size = config, num_frames, frame_size
        self.entries: list[ManifestEntry] | None = None
        if config.manifest is not None:
            self.entries = read_manifest(Path(config.manifest).expanduser())
            return
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
        return len(self.entries) if self.entries is not None else len(self.files)

    def __getitem__(self, index: int) -> Clip:
        """File ``index`` as a clip of uint8 frames (T, 3, S, S) with its caption; ``SkipClip`` if it cannot be one."""
        if self.entries is not None:
            return read_entry(self.entries[index], self.num_frames, self.frame_size, self.config.short_clips)
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


def read_entry(entry: ManifestEntry, num_frames: int, frame_size: int,
               short_clips: Literal["repeat", "skip"] = "repeat") -> Clip:
    """The clip a manifest row names (its video downloaded first when it is a URL), with the row's caption;
    ``SkipClip`` if it cannot be one. Frame indices count from the window's first frame."""
    window = (entry.start, entry.end)
    try:
        with _local_copy(entry.video) as path:
            clip = _decode(path, num_frames, frame_size, short_clips, window, entry.source)
    except SkipClip:
        raise
    except Exception as exc:  # FFmpeg, container and network errors: the clip is bad, not the run
        raise SkipClip(f"cannot be read ({type(exc).__name__}: {exc})", entry.source) from None
    clip.caption = entry.caption
    return clip


@contextlib.contextmanager
def _local_copy(video: str) -> Iterator[Path]:
    """A local path of ``video``: itself, or a temp copy of a URL (through fsspec), removed afterwards."""
    from fovea.core.files import is_url

    if not is_url(video):
        yield Path(video)
        return
    import fsspec

    fs, remote = fsspec.core.url_to_fs(video)
    with tempfile.TemporaryDirectory(prefix="fovea-video-") as tmp:
        local = Path(tmp) / (Path(remote).name or "video")
        fs.get_file(remote, str(local))
        yield local


def _decode(path: Path, num_frames: int, frame_size: int, short_clips: str,
            window: tuple[float | None, float | None] = (None, None), source: str | None = None) -> Clip:
    source = source or str(path)
    if path.stat().st_size == 0:
        raise SkipClip("empty file (0 bytes)", source)
    available = count_frames(path, window)
    if not available:
        raise SkipClip("no video stream (audio-only or not a video)" if available is None
                       else "no decodable video frames" + (" in its start-end window" if any(
                           w is not None for w in window) else ""), source)
    indices = _indices(available, num_frames, short_clips, source)
    frames, decoded = decode_frames(path, set(indices), frame_size, window)
    if decoded < available:  # the tail is damaged: sample again over the frames that decode
        if decoded == 0:
            raise SkipClip("no decodable video frames", source)
        indices = _indices(decoded, num_frames, short_clips, source)
        frames, _ = decode_frames(path, set(indices), frame_size, window)
    clip = torch.stack([frames[i] for i in indices])                   # (T, 3, S, S) uint8
    return Clip(clip, source=source, frame_indices=indices)


def _indices(available: int, num_frames: int, short_clips: str, source: str) -> list[int]:
    if available < num_frames and short_clips == "skip":
        raise SkipClip(f"{available} frames, fewer than data.num_frames = {num_frames} "
                       f"(data.short_clips = 'skip')", source)
    return sample_indices(available, num_frames)


# --- a manifest of clips -------------------------------------------------------------------------

def read_manifest(manifest: Path) -> list[ManifestEntry]:
    """The clips a ``.csv`` / ``.jsonl`` manifest lists, in its order; a ``FoveaError`` naming the file and
    line of the first malformed row, or when it is missing or lists no clip."""
    from fovea.core.files import is_url

    if manifest.suffix not in (".csv", ".jsonl"):
        raise FoveaError(f"data.manifest = '{manifest}' is neither a .csv nor a .jsonl file; {MANIFEST_FIX}")
    if not manifest.is_file():
        raise FoveaError(f"no clip manifest at data.manifest = '{manifest}'; point it at your .csv or .jsonl file")
    rows = _manifest_jsonl_rows(manifest) if manifest.suffix == ".jsonl" else _manifest_csv_rows(manifest)
    base = manifest.resolve().parent
    entries = []
    for line, row in rows:
        where = f"{manifest}, line {line}"
        given = [key for key in ("path", "url") if row.get(key) not in (None, "")]
        if len(given) != 1:
            raise FoveaError(f"{where}: {'both path and url' if given else 'no path or url'}; {MANIFEST_FIX}")
        video = str(row[given[0]])
        if given[0] == "url" and not is_url(video):
            raise FoveaError(f"{where}: url '{video[:80]}' is not a URL (scheme://…); name local files by 'path'")
        if given[0] == "path" and not is_url(video):
            video = str(base / Path(video).expanduser())   # an absolute path replaces the base
        caption = row.get("caption")
        if caption is not None and not isinstance(caption, str):
            raise FoveaError(f"{where}: caption is {json.dumps(caption)[:40]}, not a string; {MANIFEST_FIX}")
        start, end = (_manifest_seconds(row.get(key), key, where) for key in ("start", "end"))
        if start is not None and end is not None and end <= start:
            raise FoveaError(f"{where}: end ({end:g} s) is not after start ({start:g} s); {MANIFEST_FIX}")
        entries.append(ManifestEntry(video, (caption or "").strip() or None, start, end))
    if not entries:
        raise FoveaError(f"the clip manifest {manifest} lists no clip; {MANIFEST_FIX}")
    return entries


def _manifest_seconds(value, key: str, where: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds < 0:
        raise FoveaError(f"{where}: {key} = {json.dumps(value)[:40]} is not a number of seconds >= 0; {MANIFEST_FIX}")
    return seconds


def _manifest_jsonl_rows(manifest: Path):
    yield from _jsonl_objects(manifest, MANIFEST_FIX)


def _jsonl_objects(path: Path, fix: str):
    """(line number, object) of each non-blank line of a JSON-lines file; one clear error for a bad line."""
    text = _utf8(path.read_bytes(), path, "save it as UTF-8")
    for number, line in enumerate(text.split("\n"), 1):   # not splitlines: JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FoveaError(f"{path}, line {number}: not valid JSON ({exc.msg}); {fix}") from None
        if not isinstance(row, dict):
            raise FoveaError(f"{path}, line {number}: a JSON {type(row).__name__}, not an object; {fix}")
        yield number, row


def _manifest_csv_rows(manifest: Path):
    reader = csv.DictReader(io.StringIO(_utf8(manifest.read_bytes(), manifest, "save it as UTF-8"), newline=""))
    try:
        columns = reader.fieldnames or []
        if "path" not in columns and "url" not in columns:
            raise FoveaError(f"{manifest}, line 1: no column 'path' or 'url' (the header row names "
                             f"{', '.join(repr(c) for c in columns) or 'nothing'}); {MANIFEST_FIX}")
        for row in reader:
            if None in row.values() or None in row:
                raise FoveaError(f"{manifest}, line {reader.line_num}: not as many fields as the header row; "
                                 f"{MANIFEST_FIX}")
            yield reader.line_num, row
    except csv.Error as exc:
        raise FoveaError(f"{manifest}, line {reader.line_num}: not valid CSV ({exc}); {MANIFEST_FIX}") from None


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
    for number, entry in _jsonl_objects(index, JSONL_FIX):
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


def _in_window(pts, time_base, window: tuple[float | None, float | None]) -> bool:
    start, end = window
    if start is None and end is None:
        return True
    if pts is None:
        return False
    seconds = float(pts * time_base)
    return (start is None or seconds >= start) and (end is None or seconds < end)


def count_frames(path: Path, window: tuple[float | None, float | None] = (None, None)) -> int | None:
    """Video frames in the file (within ``window``, start/end seconds), counted by demuxing (header counts
    are often missing or wrong); None when it has no video stream."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            return None
        stream = container.streams.video[0]
        count = 0
        try:
            for packet in container.demux(stream):
                # the flush packet at the end is empty
                count += packet.size > 0 and _in_window(packet.pts, stream.time_base, window)
        except av.error.FFmpegError:
            pass  # a damaged tail: what demuxed so far
        return count


def decode_frames(path: Path, wanted: set[int], size: int, window: tuple[float | None, float | None] = (None, None)
                  ) -> tuple[dict[int, torch.Tensor], int]:
    """Decode the file once; return the ``wanted`` frames (counted from the ``window``'s first) as
    (3, size, size) uint8 and the frames decoded in the window."""
    import av

    frames: dict[int, torch.Tensor] = {}
    decoded = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                if not _in_window(frame.pts, stream.time_base, window):
                    if window[1] is not None and frame.pts is not None and float(frame.pts * stream.time_base) >= window[1]:
                        break
                    continue
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
def fovea_register_sources(register):
    register("videos", VideoFolder)
