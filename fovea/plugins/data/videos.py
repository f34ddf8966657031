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

Decoding is in ``decode.py`` (PyAV), the manifest and caption files in ``listings.py``.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator, Literal

import torch
from pydantic import BaseModel, ConfigDict

from fovea.core.data import Clip, SkipClip
from fovea.core.errors import FoveaError
from fovea.core.hookspecs import hookimpl
from fovea.plugins.data.decode import count_frames, decode_frames, sample_indices
from fovea.plugins.data.listings import ManifestEntry, read_caption_index, read_manifest, read_sidecar_caption

EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")


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


@hookimpl
def fovea_register_sources(register):
    register("videos", VideoFolder)
