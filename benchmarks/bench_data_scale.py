"""Data at scale (issue 20): compressed shards side by side with raw ones, and the loader's startup at 10^4-10^6 clips.

``codecs`` — the same videos (a photograph panned and zoomed, H.264, made by the script with PyAV: natural
image content, so JPEG compresses it as it would camera footage), three ways in one process:
(a) per-batch decoding of the source videos (the ``videos`` source, ``workers`` threads, every batch);
(b) the ``raw`` cache (uint8 frames, float32 latents) streamed by the loader;
(c) the ``jpeg`` cache (JPEG frames at ``--quality``, float16 latents) streamed by the loader, decoded in its
    worker threads on the CPU.
Reports bytes per clip, loader samples/s, and the float16 latents' error against the float32 ones
(targets: (c) <= 1/5 of (b)'s bytes at 256 px, (c) >= 20x (a)'s samples/s).

``index`` — a synthetic cache index (a manifest of N clips in shards of 256, each clip with a source path,
8 frame indices and a caption; sparse shard files of the right size, no data) opened the way ``fovea run``
opens it, in a fresh process per size: seconds and resident memory (RSS) after each stage.

    python benchmarks/bench_data_scale.py codecs
    python benchmarks/bench_data_scale.py index --clips 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def make_videos(directory: Path, count: int, seconds: float, width: int, height: int, fps: int) -> None:
    """H.264 clips panning and zooming over matplotlib's sample photograph (a different path per clip)."""
    import av
    import matplotlib.cbook
    import numpy as np
    from PIL import Image

    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    rng = np.random.default_rng(0)
    for i in range(count):
        x0, y0 = rng.uniform(0, 0.3, 2) * photo.size
        zoom0, zoom1 = rng.uniform(0.5, 1.0, 2)
        with av.open(str(directory / f"clip{i:03d}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            frames = int(seconds * fps)
            for t in range(frames):
                f = t / max(1, frames - 1)
                zoom = zoom0 + (zoom1 - zoom0) * f
                w, h = photo.size[0] * zoom, photo.size[0] * zoom * height / width
                x, y = min(x0 + 40 * f, photo.size[0] - w), min(y0 + 30 * f, photo.size[1] - h)
                image = photo.resize((width, height), box=(x, y, x + w, y + h))
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


def loader_rate(cache, config, batches: int) -> float:
    import torch

    from fovea.core.loader import build_loader, shutdown

    loader = build_loader(cache, config, torch.device("cpu"))
    stream = iter(loader)
    next(stream)                                                   # workers started
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    rate = batches * config.training.batch_size / (time.perf_counter() - start)
    shutdown(loader)
    return rate


def codecs(args) -> dict:
    import torch

    import fovea
    from fovea.core.cache import build_cache
    from fovea.core.data import build_source

    with tempfile.TemporaryDirectory() as tmp:
        videos = Path(tmp) / "videos"
        videos.mkdir()
        make_videos(videos, args.videos, args.seconds, args.width, args.height, args.fps)

        def config(**extra):
            values = {"data.name": '"videos"', "data.path": f'"{videos}"', "data.cache_dir": f'"{Path(tmp) / "cache"}"',
                      "data.num_frames": args.frames, "data.frame_size": args.size, "data.num_workers": args.workers,
                      "data.shard_size": 64, "training.batch_size": args.batch_size, "model.vae.size": '"tiny"',
                      "model.vae.init": '"pooling"', "run.progress": "false", **extra}
            return fovea.load_config(overrides=[f"{k}={v}" for k, v in values.items()])

        raw_config = config()
        jpeg_config = config(**{"data.codec": '"jpeg"', "data.jpeg_quality": args.quality,
                                "data.latent_dtype": '"float16"'})

        # (a) decode the sampled frames of each clip of every batch, in `workers` threads
        source = build_source(raw_config)
        order = torch.randperm(len(source), generator=torch.Generator().manual_seed(0)).tolist()
        with ThreadPoolExecutor(args.workers) as pool:
            start = time.perf_counter()
            for b in range(args.decode_batches):
                clips = [order[(b * args.batch_size + i) % len(source)] for i in range(args.batch_size)]
                torch.stack([clip.frames for clip in pool.map(source.__getitem__, clips)])
            decode_rate = args.decode_batches * args.batch_size / (time.perf_counter() - start)

        results, latents = {}, {}
        for name, cfg in (("raw", raw_config), ("jpeg", jpeg_config)):
            start = time.perf_counter()
            cache = build_cache(cfg, progress=False)
            precompute_s = time.perf_counter() - start
            shard_bytes = sum(p.stat().st_size for p in cache.root.glob("shard-*.safetensors"))
            batch = cache.read(list(range(len(cache))))
            latents[name], frames = batch["latents"], batch["frames"]
            results[name] = {"format": cache.format, "bytes_per_clip": round(shard_bytes / len(cache)),
                             "loader_samples_per_s": round(loader_rate(cache, cfg, args.cached_batches), 1),
                             "precompute_s": round(precompute_s, 1)}
            if name == "raw":
                raw_frames = frames
            else:
                error = frames.float() - raw_frames.float()
                results[name]["frame_error_vs_raw"] = {
                    "mean_abs_grey_levels": round(error.abs().mean().item(), 2),
                    "psnr_db": round(10 * torch.log10(255**2 / error.pow(2).mean()).item(), 1)}

    mse = (latents["jpeg"] - latents["raw"]).pow(2).mean().item()
    variance = latents["raw"].var().item()
    raw, jpeg = results["raw"], results["jpeg"]
    return {
        "benchmark": "data at scale: raw vs JPEG shards, per-batch video decoding",
        "videos": args.videos, "video": f"{args.width}x{args.height} H.264, {args.seconds:g} s at {args.fps} fps",
        "batch": f"{args.batch_size} clips x {args.frames} frames at {args.size} px", "workers": args.workers,
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "load_average_1min": round(os.getloadavg()[0], 2),
        "decode_every_batch_samples_per_s": round(decode_rate, 2),
        "raw": raw, "jpeg": jpeg,
        "jpeg_bytes_over_raw": round(jpeg["bytes_per_clip"] / raw["bytes_per_clip"], 3),
        "jpeg_loader_over_decode_every_batch": round(jpeg["loader_samples_per_s"] / decode_rate, 1),
        "targets": {"bytes_ratio_at_most": 0.2, "speedup_at_least": 20,
                    "met": jpeg["bytes_per_clip"] <= 0.2 * raw["bytes_per_clip"]
                    and jpeg["loader_samples_per_s"] >= 20 * decode_rate},
        "latents_float16_vs_float32": {"mse": mse, "latent_variance": variance, "relative_mse": mse / variance,
                                       "max_abs": (latents["jpeg"] - latents["raw"]).abs().max().item(),
                                       "vae": "tiny, pooling init (the SD VAE's shape: 4 x 32 x 32 at 256 px)"},
    }


# --- the index at 10^4 .. 10^6 clips --------------------------------------------------------------

def write_index(root: Path, clips: int, shard_size: int = 256) -> int:
    """A manifest of ``clips`` clips (source, 8 frame indices, a caption each) and sparse shard files: bytes."""
    import hashlib

    from fovea.core.cache import CACHE_VERSION, checked_json, shard_file

    root.mkdir(parents=True)
    shards = []
    for shard in range(-(-clips // shard_size)):
        first, n = shard * shard_size, min(shard_size, clips - shard * shard_size)
        info = [{"source": f"/data/webvid/videos/{(first + i) // 1000:06d}/{first + i:09d}.mp4",
                 "frame_indices": [0, 43, 86, 129, 171, 214, 257, 299],
                 "caption": f"clip {first + i}: aerial view of a coastline at sunset, waves rolling onto the beach"}
                for i in range(n)]
        size = 1 << 20
        with open(shard_file(root, shard), "wb") as f:
            f.truncate(size)                                         # sparse: the index test reads no data
        shards.append({"shard": shard, "clips": n, "bytes": size, "sha256": hashlib.sha256(b"").hexdigest(),
                       "clip_info": info})
    manifest = {"version": CACHE_VERSION, "num_clips": clips, "vae": "stabilityai/sd-vae-ft-mse", "vae_files": None,
                "format": {"codec": "jpeg", "jpeg_quality": 90, "latent_dtype": "float16"},
                "shards": shards, "skipped": []}
    data = checked_json(manifest)
    (root / "manifest.json").write_bytes(data)
    return len(data)


def measure_index(root: Path, mode: str) -> dict:
    """Run in a fresh process: open the cache at ``root`` as ``fovea run`` does, timing and measuring each stage."""
    import psutil
    import torch

    import fovea
    from fovea.core.cache import ClipCache
    from fovea.core.loader import build_loader
    from fovea.core.split import split_cache

    process = psutil.Process()
    stages, start = {"python_and_torch": {"s": 0.0, "rss_mb": round(process.memory_info().rss / 2**20)}}, time.perf_counter()

    def stage(name: str) -> None:
        stages[name] = {"s": round(time.perf_counter() - start, 2), "rss_mb": round(process.memory_info().rss / 2**20)}

    config = fovea.load_config(overrides=["training.batch_size=2", f'data.shuffle="{mode}"', "data.num_workers=0",
                                          "eval.val_fraction=0.01"])
    cache = ClipCache(root)
    stage("open_cache (manifest parsed, shard sizes stat'ed)")
    split = split_cache(cache, config)
    stage("held-out split (a SHA-256 per clip)")
    loader = build_loader(cache, config, torch.device("cpu"), indices=split.train.indices)
    node = loader.root
    while hasattr(node, "source"):
        node = node.source
    node.reset()
    [node.next() for _ in range(2)]
    stage(f"loader built, first indices drawn (shuffle = {mode})")
    return stages


def index(args) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for clips in args.clips:
            root = Path(tmp) / f"index-{clips}"
            manifest_bytes = write_index(root, clips)
            entry = {"manifest_mb": round(manifest_bytes / 2**20, 1), "manifest_bytes_per_clip": round(manifest_bytes / clips)}
            for mode in ("clips", "shards"):
                out = subprocess.run([sys.executable, __file__, "_measure", str(root), mode], capture_output=True,
                                     text=True, check=True)
                entry[mode] = json.loads(out.stdout)
            results[str(clips)] = entry
    return {"benchmark": "loader startup and RSS vs number of clips (synthetic index)", "cpu_count": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2), "sizes": results}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "_measure":
        print(json.dumps(measure_index(Path(sys.argv[2]), sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    c = commands.add_parser("codecs", help="raw vs JPEG shards and per-batch decoding, on the same clips")
    c.add_argument("--videos", type=int, default=16)
    c.add_argument("--seconds", type=float, default=10.0, help="length of each video")
    c.add_argument("--width", type=int, default=640)
    c.add_argument("--height", type=int, default=360)
    c.add_argument("--fps", type=int, default=30)
    c.add_argument("--batch-size", type=int, default=2, help="SPEC: 2")
    c.add_argument("--frames", type=int, default=8, help="T, SPEC: 8")
    c.add_argument("--size", type=int, default=256, help="frame side, SPEC: 256")
    c.add_argument("--quality", type=int, default=90, help="JPEG quality")
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--decode-batches", type=int, default=8, help="batches timed for per-batch decoding")
    c.add_argument("--cached-batches", type=int, default=200, help="batches timed per cache")
    i = commands.add_parser("index", help="loader startup time and RSS at several numbers of clips")
    i.add_argument("--clips", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = parser.parse_args()
    print(json.dumps(codecs(args) if args.command == "codecs" else index(args), indent=2))


if __name__ == "__main__":
    main()
