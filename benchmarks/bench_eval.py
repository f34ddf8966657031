"""`fovea eval` benchmark: clips/s of each mode at the spec's model sizes, and the autoregressive mode's cost.

``coarse`` and ``fine`` come from one two-pass forward (both passes, each frame encoded once); the
``autoregressive`` mode runs one pass frame by frame, the LLM stepping on its KV cache
(``FoveatedVLM.autoregressive``). For comparison it also times the same one-pass loop with the LLM
re-run over the whole prefix at every frame (no KV cache), and the LLM steps alone at 8 and 64 frames
(at 8 frames of 256 px the encoder dominates, so the KV cache shows in the LLM's own time).
Random weights at the spec's sizes (``configs/phase1_synthetic.toml``: DINOv3 ViT-S/16, SmolLM2-135M,
the FiLM head, 8 frames at 256 px), random target latents (the VAE is not timed), ``torch.no_grad``,
float32 on CPU (the run's autocast dtype on CUDA). Rounds are interleaved; figures are medians.
Prints one JSON object.

    python benchmarks/bench_eval.py --clips 4 --batch 2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_encoder import cpu_name  # noqa: E402


class InMemoryClips:
    """Clips held in memory in the clip cache's ``read`` format (what ``ClipSet`` reads from)."""

    def __init__(self, frames: torch.Tensor, latents: torch.Tensor):
        self.frames, self.latents, self.root = frames, latents, Path("memory")

    def read(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices)
        return {"frames": self.frames[index], "latents": self.latents[index], "index": index}


def autoregressive_without_kv_cache(model, frames: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """The one-pass loop of ``FoveatedVLM.autoregressive`` with the LLM re-run over the whole prefix per frame."""
    B, T = frames.shape[:2]
    tokens = model.fine_token.expand(B, -1, -1)                              # (B, 1, H)
    hidden = model.llm(inputs_embeds=tokens).last_hidden_state[:, -1]        # (B, H)
    query, states = model.q_init.expand(B, -1), [hidden]
    for t in range(T - 1):
        z = model.encoder.attend(query, model.encoder.encode(frames[:, t].float().div(255.0)))   # (B, D)
        tokens = torch.cat([tokens, model.dino_to_llm(z)[:, None]], dim=1)                      # (B, t + 2, H)
        hidden = model.llm(inputs_embeds=tokens).last_hidden_state[:, -1]
        query = model.query_head(hidden)
        states.append(hidden)
    prev = torch.cat([model.z_vae_init.expand(B, 1, -1, -1, -1), latents[:, :-1]], dim=1)
    return model.predict_latents(torch.stack(states, dim=1), prev)


def llm_steps(model, steps: int, batch: int, cached: bool) -> None:
    """The LLM part of the one-pass loop alone: ``steps`` frame tokens fed one at a time."""
    from transformers import DynamicCache

    hidden_size = model.llm.config.hidden_size
    tokens = torch.randn(batch, steps + 1, hidden_size)
    if cached:
        past = DynamicCache()
        name = "cache" if "cache" in __import__("inspect").signature(model.llm.forward).parameters else \
            "past_key_values"
        for t in range(steps + 1):
            model.llm(inputs_embeds=tokens[:, t:t + 1], use_cache=True, **{name: past})
    else:
        for t in range(steps + 1):
            model.llm(inputs_embeds=tokens[:, :t + 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "phase1_synthetic.toml"))
    parser.add_argument("--clips", type=int, default=4, help="clips evaluated per round")
    parser.add_argument("--batch", type=int, default=2, help="clips per forward (eval.batch_size)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    import fovea
    from fovea.core.data import read_clips
    from fovea.core.devices import DTYPES, resolve_device
    from fovea.core.evaluation import clip_losses
    from fovea.core.split import ClipSet
    from fovea.core.vae import latent_shape

    config = fovea.load_config(args.config, [f"data.num_clips={args.clips}", *args.overrides])
    device = resolve_device(config.run.device)
    dtype = DTYPES[config.precision.dtype] if device.type == "cuda" else torch.float32
    model = fovea.build_model(config).to(device).eval()
    frames = read_clips(config)                                              # (N, T, 3, S, S) uint8
    shape = latent_shape(config.model.vae, config.data.frame_size)
    latents = torch.randn(len(frames), config.data.num_frames, *shape)       # stand-in targets (N, T, C, h, w)
    clips = ClipSet(InMemoryClips(frames, latents), list(range(len(frames))))
    mean = latents.mean((0, 1))
    baselines = {"next_latent": {"mean_latent": lambda latents, targets: (latents - mean).square().mean((2, 3, 4))}}

    def two_pass() -> None:
        clip_losses(model, clips, baselines, ("coarse", "fine"), args.batch, device, dtype)

    def autoregressive() -> None:
        clip_losses(model, clips, baselines, ("autoregressive",), args.batch, device, dtype)

    def no_kv_cache() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            for batch in clips.batches(args.batch):
                autoregressive_without_kv_cache(model, batch["frames"].to(device), batch["latents"].to(device))

    def seconds(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    variants = {"two_pass": two_pass, "autoregressive": autoregressive, "autoregressive_no_kv_cache": no_kv_cache}
    for fn in variants.values():   # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            times[name].append(seconds(fn))
    median = {name: statistics.median(values) for name, values in times.items()}
    llm_only = {}
    with torch.no_grad():
        for steps in (8, 64):
            pair = [seconds(lambda: llm_steps(model, steps, args.batch, cached)) for cached in (True, False)]
            llm_only[f"{steps}_frames"] = {"kv_cache_s": pair[0], "no_kv_cache_s": pair[1],
                                           "no_kv_cache_over_kv_cache": pair[1] / pair[0]}
    ratio = [a / f for a, f in zip(times["autoregressive"], times["two_pass"])]
    no_cache_ratio = [n / a for n, a in zip(times["autoregressive_no_kv_cache"], times["autoregressive"])]
    print(json.dumps({
        "benchmark": "eval",
        "config": os.path.relpath(args.config, ROOT) if args.config.startswith(str(ROOT)) else args.config,
        "device": str(device), "cpu": cpu_name(), "threads": torch.get_num_threads(), "dtype": str(dtype),
        "clips": len(frames), "batch": args.batch, "rounds": args.rounds,
        "frames_per_clip": config.data.num_frames, "frame_size": config.data.frame_size,
        "clips_per_s": {"coarse": len(frames) / median["two_pass"], "fine": len(frames) / median["two_pass"],
                        "coarse_and_fine": len(frames) / median["two_pass"],
                        "autoregressive": len(frames) / median["autoregressive"],
                        "autoregressive_no_kv_cache": len(frames) / median["autoregressive_no_kv_cache"]},
        "seconds_median": median,
        "autoregressive_over_two_pass": statistics.median(ratio),
        "no_kv_cache_over_kv_cache": statistics.median(no_cache_ratio),
        "llm_only": llm_only,
        "note": "coarse and fine are one two-pass forward: they cost the same clips/s",
    }, indent=2))


if __name__ == "__main__":
    main()
