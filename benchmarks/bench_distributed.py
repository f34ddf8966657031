"""torchrun benchmark: one process against N processes (DDP and FSDP2) on the same global batch.

Side by side in one invocation: ``fovea profile`` in one process with a micro-batch of N x B clips,
then ``torchrun --nproc_per_node=N -m fovea profile`` with B clips per process, once per strategy.
Prints one JSON object: the median step time and samples/s of each, the slowest rank, and the speed-up
over one process (on N GPUs the scaling; on a CPU machine the processes share its cores, so only the
overhead shows). ``--nproc 1`` runs the single-GPU torchrun path.

    python benchmarks/bench_distributed.py --nproc 2 --steps 10
    python benchmarks/bench_distributed.py --config configs/phase1_synthetic.toml --nproc 8 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def profile(config: str, overrides: list[str], steps: int, nproc: int | None, output: Path) -> dict:
    """``fovea profile`` (through torchrun when ``nproc``) writing under ``output``; its profile.json."""
    launcher = [sys.executable, "-m", "fovea"] if nproc is None else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "fovea"]
    sets = [arg for item in [*overrides, f'run.output_dir="{output}"', "run.progress=false"] for arg in ("--set", item)]
    subprocess.run([*launcher, "profile", config, "--steps", str(steps), "--warmup", "2", *sets],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    (run,) = output.glob("*-profile")
    return json.loads((run / "profile.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.toml")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4, help="clips per process and micro-batch")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base = [f'data.cache_dir="{Path(tmp) / "cache"}"', "training.grad_accum=1"]
        single = profile(args.config, [*base, f"training.batch_size={args.batch * args.nproc}"], args.steps, None,
                         Path(tmp) / "single")
        results = {"one_process": single}
        for strategy in ("ddp", "fsdp"):
            results[strategy] = profile(args.config, [*base, f"training.batch_size={args.batch}",
                                                      f"distributed.strategy={strategy}"],
                                        args.steps, args.nproc, Path(tmp) / strategy)

    def figures(report: dict) -> dict:
        return {"step_ms_median": round(1000 * report["step_s"]["median"], 2),
                "samples_per_s": round(report["samples_per_s"], 2),
                "slowest_rank": report.get("slowest_rank"), "peak_memory_gb": report["peak_memory_gb"]}

    out = {name: figures(report) for name, report in results.items()}
    for strategy in ("ddp", "fsdp"):
        out[f"speedup_{strategy}"] = round(out[strategy]["samples_per_s"] / out["one_process"]["samples_per_s"], 3)
    import torch

    out.update(config=args.config, nproc=args.nproc, global_batch=args.batch * args.nproc, steps=args.steps,
               device=single["device"], cpu_count=os.cpu_count(), torch=torch.__version__)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
