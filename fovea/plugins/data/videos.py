"""``videos``: clips from a directory tree of video files, decoded with PyAV (FFmpeg).

Each file is one clip: T frames sampled uniformly over its frame range (SPEC.md: linspace over the
frames), resized so the short side is ``frame_size`` and centre-cropped to a square, shown as a player
would (rotation metadata applied, any pixel format — grayscale, 10-bit — converted to 8-bit RGB).
Frames are counted by demuxing, not from the header, so variable frame rate and missing or wrong
frame counts do not shift the sampling; a file whose tail fails to decode is sampled over the frames
that did decode. Files that cannot give a clip raise ``SkipClip`` with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from fovea.core.data import Clip, SkipClip
from fovea.core.errors import FoveaError
from fovea.core.hookspecs import hookimpl

EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")


def sample_indices(num_available: int, num_frames: int) -> list[int]:
    """``num_frames`` indices spread uniformly over ``[0, num_available - 1]``, both ends included."""
    return torch.linspace(0, num_available - 1, num_frames).round().long().tolist()


class VideoFolder:
    """Video files under a directory (mp4, mkv, webm, avi, mov), T frames sampled uniformly from each."""

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

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Clip:
        """File ``index`` as a clip of uint8 frames (T, 3, S, S); ``SkipClip`` if it cannot be one."""
        path = self.files[index]
        try:
            return self._decode(path)
        except SkipClip:
            raise
        except Exception as exc:  # FFmpeg and container errors of every kind: the file is bad, not the run
            raise SkipClip(f"cannot be decoded ({type(exc).__name__}: {exc})", str(path)) from None

    def _decode(self, path: Path) -> Clip:
        if path.stat().st_size == 0:
            raise SkipClip("empty file (0 bytes)", str(path))
        available = count_frames(path)
        if not available:
            raise SkipClip("no video stream (audio-only or not a video)" if available is None
                           else "no decodable video frames", str(path))
        indices = self._indices(available, path)
        frames, decoded = decode_frames(path, set(indices), self.frame_size)
        if decoded < available:  # the tail is damaged: sample again over the frames that decode
            if decoded == 0:
                raise SkipClip("no decodable video frames", str(path))
            indices = self._indices(decoded, path)
            frames, _ = decode_frames(path, set(indices), self.frame_size)
        clip = torch.stack([frames[i] for i in indices])                   # (T, 3, S, S) uint8
        return Clip(clip, source=str(path), frame_indices=indices)

    def _indices(self, available: int, path: Path) -> list[int]:
        if available < self.num_frames and self.config.short_clips == "skip":
            raise SkipClip(f"{available} frames, fewer than data.num_frames = {self.num_frames} "
                           f"(data.short_clips = 'skip')", str(path))
        return sample_indices(available, self.num_frames)


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
