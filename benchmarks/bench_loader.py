"""Loader benchmark: decoding on the main process every batch versus fovea's cached loader with workers.

Same videos, same batch shape (batch B clips x T frames at S px), side by side in one process:
(a) the original approach: every batch, decode the sampled frames of each clip on the main process
    (``num_workers=0``), with the same PyAV decoder fovea uses;
(b) fovea: the clips decoded once into the cache (``fovea precompute``; timed separately, a one-off),
    then batches streamed by the ``torchdata.nodes`` loader with worker threads.
Prints one JSON object; the target is (b) >= 20x the samples/s of (a).

    python benchmarks/bench_loader.py --videos 16 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def make_videos(directory: Path, count: int, seconds: float, width: int, height: int, fps: int) -> None:
    """H.264 clips of moving noise blocks: real decoding work, like camera footage."""
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    for i in range(count):
        with av.open(str(directory / f"clip{i:03d}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
            for t in range(int(seconds * fps)):
                image = np.roll(base, shift=4 * t, axis=1)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each video")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=2, help="SPEC: 2")
    parser.add_argument("--frames", type=int, default=8, help="T, SPEC: 8")
    parser.add_argument("--size", type=int, default=256, help="frame side, SPEC: 256")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--decode-batches", type=int, default=8, help="batches timed for (a)")
    parser.add_argument("--cached-batches", type=int, default=400, help="batches timed for (b)")
    args = parser.parse_args()

    import torch

    import fovea
    from fovea.core.cache import build_cache
    from fovea.core.loader import build_loader, shutdown

    with tempfile.TemporaryDirectory() as tmp:
        videos = Path(tmp) / "videos"
        videos.mkdir()
        made = time.perf_counter()
        make_videos(videos, args.videos, args.seconds, args.width, args.height, args.fps)
        made = time.perf_counter() - made
        config = fovea.load_config(overrides=[
            "data.name=videos", f'data.path="{videos}"', f'data.cache_dir="{Path(tmp) / "cache"}"',
            f"data.num_frames={args.frames}", f"data.frame_size={args.size}", f"data.num_workers={args.workers}",
            f"training.batch_size={args.batch_size}", "model.vae.size=tiny", "run.progress=false"])

        # (a) decode the sampled frames of each clip on the main process, every batch
        from fovea.core.data import build_source

        source = build_source(config)
        order = torch.randperm(len(source), generator=torch.Generator().manual_seed(0)).tolist()
        start = time.perf_counter()
        for b in range(args.decode_batches):
            batch = [source[order[(b * args.batch_size + i) % len(source)]].frames for i in range(args.batch_size)]
            torch.stack(batch)
        decode_rate = args.decode_batches * args.batch_size / (time.perf_counter() - start)

        # (b) decode once into the cache, then stream it
        start = time.perf_counter()
        cache = build_cache(config, progress=False)
        precompute_s = time.perf_counter() - start
        loader = build_loader(cache, config, torch.device("cpu"))
        batches = iter(loader)
        next(batches)                                                   # workers started
        start = time.perf_counter()
        for _ in range(args.cached_batches):
            next(batches)
        cached_rate = args.cached_batches * args.batch_size / (time.perf_counter() - start)
        shutdown(loader)

    print(json.dumps({
        "benchmark": "loader: main-process decode per batch vs cached loader with workers",
        "videos": args.videos, "video": f"{args.width}x{args.height} H.264, {args.seconds:g} s at {args.fps} fps",
        "batch": f"{args.batch_size} clips x {args.frames} frames at {args.size} px", "workers": args.workers,
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "samples_per_s": {"decode_every_batch": round(decode_rate, 2), "cached_loader": round(cached_rate, 1)},
        "ratio_cached_over_decode": round(cached_rate / decode_rate, 1),
        "target_ratio": 20, "meets_target": cached_rate / decode_rate >= 20,
        "precompute_s": round(precompute_s, 1), "precompute_clips_per_s": round(args.videos / precompute_s, 2),
        "making_test_videos_s": round(made, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
