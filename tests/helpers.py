"""Paths and override sets shared by the tests."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.toml"
GOLDEN_PROFILE = ROOT / "tests" / "assets" / "profile"   # profile.json and profile.md of a real CPU run


def tiny_overrides(tmp_path: Path, **extra) -> list[str]:
    """Overrides that turn the quick-start config into a seconds-long test run writing under tmp_path."""
    values = {"run.output_dir": f'"{tmp_path / "runs"}"', "data.cache_dir": f'"{tmp_path / "cache"}"',
              "run.progress": "false", "run.log_every": "2",
              "data.num_clips": "8", "training.batch_size": "2", "training.max_steps": "4",
              "training.warmup_steps": "1", "training.save_every": "4", **extra}
    return [f"{key}={value}" for key, value in values.items()]


def write_video(path: Path, num_frames: int, width: int = 80, height: int = 64, codec: str = "mpeg4",
                pix_fmt: str = "yuv420p", rate: int = 10, rotation: int = 0, pts: list[int] | None = None) -> Path:
    """A small real video whose frame i is grey at level 8 * i (so a decoded frame tells its index), with
    its left quarter white (so orientation is visible)."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec == "mpeg4":
            stream.options = {"qscale": "1"}
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(num_frames):
            image = np.full((height, width, 3), 8 * i, dtype=np.uint8)
            image[:, : width // 4] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts is not None:
                frame.pts = pts[i]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only(path: Path) -> Path:
    """An mp4 holding one second of AAC audio and no video stream."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        samples = np.zeros((1, 8000), dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def reading_pass2(attribute: str):
    """A planted bug: ``PassStates`` whose ``attribute`` is read from the newest pass of the forward, so the
    coarse terms score pass 2's states (both passes are built before any objective scores them). Patch it in
    as ``fovea.core.model.PassStates``."""
    from fovea.core.contracts import PassStates

    made = []

    class Mixed(PassStates):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    setattr(Mixed, attribute, property(lambda self: getattr(PassStates, attribute).fget(made[-1])))
    return Mixed
