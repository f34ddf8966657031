"""Cache verification benchmark: loader samples/s with and without the per-shard SHA-256 check.

One cache (synthetic clips, written by ``build_cache``), read by fovea's loader through two
``ClipCache`` objects: ``verify=True`` (the default: each shard hashed once, by the first read that
needs it, in the worker threads) and ``verify=False``. Side by side in one process, interleaved rounds
(the order alternates), so load on the machine falls on both alike:
- first epoch: a fresh cache object and loader per round, one whole epoch: every shard is hashed here;
- steady state: the same two loaders, ``--batches`` batches each per round, after their first epoch;
- time to the first batch of a fresh loader (a run's start: its first shard is hashed before it).
The cache's files are in the page cache for both (read once before timing): this measures the hashing
and the check, not a cold disk. Prints one JSON object; the goal is <= 5 % slower in steady state
(the median over rounds of the paired slowdown).

    python benchmarks/bench_cache_verify.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=128)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--frames", type=int, default=8, help="T, SPEC: 8")
    parser.add_argument("--size", type=int, default=256, help="frame side, SPEC: 256")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batches", type=int, default=300, help="batches per loader per steady-state round")
    args = parser.parse_args()

    import torch

    import fovea
    from fovea.core.cache import ClipCache, build_cache, shard_file
    from fovea.core.files import sha256_file
    from fovea.core.loader import build_loader, shutdown

    with tempfile.TemporaryDirectory() as tmp:
        config = fovea.load_config(overrides=[
            f'data.cache_dir="{Path(tmp) / "cache"}"', f"data.num_clips={args.clips}",
            f"data.shard_size={args.shard_size}", f"data.num_frames={args.frames}", f"data.frame_size={args.size}",
            f"data.num_workers={args.workers}", f"training.batch_size={args.batch_size}", "model.vae.size=tiny",
            "run.progress=false"])
        start = time.perf_counter()
        root = build_cache(config, progress=False).root
        precompute_s = time.perf_counter() - start
        shards = sorted(root.glob("shard-*.safetensors"))
        cache_bytes = sum(p.stat().st_size for p in shards)
        start = time.perf_counter()
        for path in shards:                                   # also brings every shard into the page cache
            sha256_file(path)
        hash_mb_per_s = cache_bytes / 1e6 / (time.perf_counter() - start)

        def loader(verify: bool):
            return build_loader(ClipCache(root, verify=verify), config, torch.device("cpu"))

        def rate(batches, count: int) -> float:
            start = time.perf_counter()
            batches = iter(batches)                               # a fresh loader starts its threads here
            for _ in range(count):
                next(batches)
            return count * args.batch_size / (time.perf_counter() - start)

        epoch = args.clips // args.batch_size
        first: dict[bool, list[float]] = {True: [], False: []}
        first_batch: dict[bool, list[float]] = {True: [], False: []}
        for r in range(args.rounds):                          # every shard hashed within the timed epoch
            for verify in ((True, False) if r % 2 == 0 else (False, True)):
                fresh = loader(verify)
                first_batch[verify].append(args.batch_size / rate(fresh, 1))   # seconds to the first batch
                shutdown(fresh)
                fresh = loader(verify)
                first[verify].append(rate(fresh, epoch))
                shutdown(fresh)

        loaders = {verify: loader(verify) for verify in (True, False)}
        streams = {verify: iter(item) for verify, item in loaders.items()}
        for stream in streams.values():
            rate(stream, epoch)                               # past the first epoch: every shard checked
        steady: dict[bool, list[float]] = {True: [], False: []}
        for r in range(args.rounds):
            for verify in ((True, False) if r % 2 == 0 else (False, True)):
                steady[verify].append(rate(streams[verify], args.batches))
        for item in loaders.values():
            shutdown(item)
        assert all(shard_file(root, s).exists() for s in range(len(shards)))

    def slowdown(rates: dict[bool, list[float]]) -> float:
        """Median over rounds of the paired slowdown, in percent (negative: verified was faster)."""
        return round(statistics.median(100 * (1 - v / u) for v, u in zip(rates[True], rates[False])), 1)

    def spread(rates: dict[bool, list[float]]) -> list[float]:
        paired = [100 * (1 - v / u) for v, u in zip(rates[True], rates[False])]
        return [round(min(paired), 1), round(max(paired), 1)]

    print(json.dumps({
        "benchmark": "cache verification: loader samples/s with vs without the per-shard SHA-256 check",
        "cache": f"{args.clips} synthetic clips x {args.frames} frames at {args.size} px in {len(shards)} shards, "
                 f"{cache_bytes / 1e6:.0f} MB",
        "batch": args.batch_size, "workers": args.workers, "rounds": args.rounds,
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "load_average_1min": round(os.getloadavg()[0], 2),
        "steady_samples_per_s": {"verified": round(statistics.median(steady[True]), 1),
                                 "unverified": round(statistics.median(steady[False]), 1)},
        "steady_slowdown_percent": slowdown(steady),
        "steady_slowdown_percent_min_max_over_rounds": spread(steady),
        "first_epoch_samples_per_s": {"verified": round(statistics.median(first[True]), 1),
                                      "unverified": round(statistics.median(first[False]), 1)},
        "first_epoch_slowdown_percent": slowdown(first),
        "first_batch_s": {"verified": round(statistics.median(first_batch[True]), 3),
                          "unverified": round(statistics.median(first_batch[False]), 3)},
        "sha256_MB_per_s": round(hash_mb_per_s, 1),
        "target_steady_slowdown_percent": 5, "meets_target": slowdown(steady) <= 5,
        "precompute_s": round(precompute_s, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
