"""Decoding video files with PyAV (FFmpeg): counting frames by demuxing, decoding the wanted ones once, and
showing each as a player would (rotation applied, any pixel format as 8-bit RGB), resized and centre-cropped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def sample_indices(num_available: int, num_frames: int) -> list[int]:
    """``num_frames`` indices spread uniformly over ``[0, num_available - 1]``, both ends included."""
    return torch.linspace(0, num_available - 1, num_frames).round().long().tolist()


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
