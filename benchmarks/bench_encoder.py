"""Encoder benchmark: one cached query pass versus re-running the masked encoder with the query.

SPEC.md "Query mechanism": with the per-layer key/value cache, a ``deep`` query pass moves one token
per layer instead of K + 1, roughly 1/260 of a ViT-S/16 forward at 256 px (261 tokens). This times,
side by side in one process: ``deep``'s ``attend`` through the cache, ``masked_forward`` (the whole
encoder with the query appended and the asymmetric mask), ``posthoc``'s ``attend``, and ``encode``.
Random init, fp32, ``torch.no_grad``; prints one JSON object (times in ms, median and min over
interleaved rounds; the ratio is the median of the per-round ratios).

    python benchmarks/bench_encoder.py --frames 16 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time


def time_ms(fn, calls: int = 1) -> float:
    """Wall time of one ``fn()`` in milliseconds, averaged over ``calls`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return 1000 * (time.perf_counter() - start) / calls


def cpu_name() -> str:
    """The CPU model as Linux names it, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16,
                        help="frames N per call, one query each (16 = one SPEC micro-batch: batch 2 x T 8)")
    parser.add_argument("--backbone", default="dinov3", choices=["dinov3", "dinov2"], help="the ViT (SPEC: dinov3)")
    parser.add_argument("--size", default=None, choices=["tiny", "vits16", "vits14"],
                        help="size preset (default: the backbone's ViT-S, vits16 or vits14)")
    parser.add_argument("--pixels", type=int, default=None,
                        help="frame side (default 256 px for DINOv3: 16x16 patches + 5 = 261 tokens; 224 px for "
                             "DINOv2: 16x16 patches + 1)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (each times every path once)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from fovea.plugins.encoders.deep import DeepEncoder, masked_forward
    from fovea.plugins.encoders.posthoc import PosthocEncoder

    load_at_start = round(os.getloadavg()[0], 2)  # the machine may be shared: say how busy it was
    pixels = args.pixels or {"dinov3": 256, "dinov2": 224}[args.backbone]
    torch.manual_seed(args.seed)
    deep = DeepEncoder(DeepEncoder.Config(backbone=args.backbone, size=args.size)).eval()
    posthoc = PosthocEncoder(PosthocEncoder.Config(backbone=args.backbone, size=args.size)).eval()
    frames = torch.rand(args.frames, 3, pixels, pixels)
    queries = torch.randn(args.frames, deep.dim)

    with torch.no_grad():
        deep_cache = deep.encode(frames)
        posthoc_cache = posthoc.encode(frames)
        # The timed paths must agree, or the comparison means nothing.
        max_abs_diff = (deep.attend(queries, deep_cache) - masked_forward(deep, frames, queries)[0]).abs().max().item()
        paths = {  # name -> (function, calls per sample: the fast paths repeat to span more than a tick)
            "deep_attend_cached": (lambda: deep.attend(queries, deep_cache), 10),
            "deep_masked_forward": (lambda: masked_forward(deep, frames, queries), 1),
            "posthoc_attend": (lambda: posthoc.attend(queries, posthoc_cache), 100),
            "deep_encode": (lambda: deep.encode(frames), 1),
        }
        for _ in range(args.warmup):
            for fn, calls in paths.values():
                time_ms(fn, calls)
        # Interleaved rounds: every path is timed once per round, so load from other processes on a
        # shared machine falls on all of them alike; the ratio is taken within each round.
        samples = {name: [] for name in paths}
        for _ in range(args.repeats):
            for name, (fn, calls) in paths.items():
                samples[name].append(time_ms(fn, calls))

    times = {name: statistics.median(values) for name, values in samples.items()}
    ratios = [masked / cached for masked, cached in zip(samples["deep_masked_forward"], samples["deep_attend_cached"])]
    ratio = statistics.median(ratios)
    print(json.dumps({
        "benchmark": "encoder: cached query pass vs full masked forward",
        "backbone": args.backbone, "size": deep.config.size, "pixels": pixels, "frames": args.frames,
        "tokens": deep_cache["tokens"].shape[1], "dtype": "float32", "device": "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "cpu": cpu_name(),
        "load_average_1min_at_start": load_at_start, "warmup": args.warmup, "repeats": args.repeats,
        "ms_median": {name: round(value, 3) for name, value in times.items()},
        "ms_min": {name: round(min(values), 3) for name, values in samples.items()},
        "ratio_masked_forward_over_cached": round(ratio, 1),
        "ratio_masked_forward_over_cached_per_round": [round(r, 1) for r in ratios],
        "ratio_encode_over_cached": round(times["deep_encode"] / times["deep_attend_cached"], 1),
        "ratio_cached_over_posthoc": round(times["deep_attend_cached"] / times["posthoc_attend"], 1),
        "target_ratio": 50, "meets_target": ratio >= 50,
        "cached_vs_masked_max_abs_diff": max_abs_diff,
    }, indent=2))


if __name__ == "__main__":
    main()
