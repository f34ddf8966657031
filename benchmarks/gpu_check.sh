#!/usr/bin/env bash
# One GPU check of fovea at the spec's scale, in about 8 minutes on one H100/H200, written to one JSON file.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--budget SECONDS]   # on a GPU machine, as it is
#   bash benchmarks/gpu_check.sh --cpu-smoke [--out DIR]          # the same steps at tiny sizes, on CPU, to test it
#
# Steps (each a command whose output is kept in DIR, each with its own time limit):
#   1. `fovea profile configs/phase1_synthetic.toml` (bf16, the spec's batch 2 x accumulation 4) with activation
#      checkpointing off and on; each profile's memory probe says the largest micro-batch that fits;
#   2. the same at that largest batch (accumulation 1), off and on;
#   3. benchmarks/bench_encoder.py, bench_loader.py and bench_eval.py (`fovea eval` throughput);
#   4. the four profiles again with `[training] compile = true` (inductor), last: compiling takes the longest.
# A step that would start after the budget (default 450 s of the 480) is recorded as skipped.
# DIR/gpu_check.json holds every command, its exit code and seconds, its figures (profile.json, the benchmark's
# JSON) and a table of the headline figures against the goals: GPU busy >= 90 % of the step, data wait < 2 %,
# MFU >= 25 % of the GPU's dense bf16 peak (fovea.profile.resources.BF16_PEAK_FLOPS, from the vendor's datasheet).
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=gpu
OUT=""
BUDGET=450
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) MODE=cpu-smoke; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --budget) BUDGET="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-gpu_check-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python}"
STEPS="$OUT/steps.jsonl"
: > "$STEPS"
START=$(date +%s)

if [ "$MODE" = gpu ]; then
  CONFIG="$ROOT/configs/phase1_synthetic.toml"
  SIZE=()                                        # the spec's sizes, bf16 (the config's)
  PROFILE_ARGS=(--steps 10 --warmup 3)
  COMPILE_BACKEND=inductor
  LIMIT=240                                      # seconds, one step
  ENCODER_ARGS=(--frames 16 --repeats 5)
  LOADER_ARGS=(--videos 16 --seconds 10)
  EVAL_ARGS=(--clips 16 --batch 8 --rounds 3)
else
  CONFIG="$ROOT/configs/quickstart.toml"
  SIZE=(--set data.num_clips=16 --set data.num_workers=1)
  PROFILE_ARGS=(--steps 1 --warmup 0)
  COMPILE_BACKEND=aot_eager                      # graphs without code generation: seconds on CPU
  LIMIT=120
  ENCODER_ARGS=(--size tiny --pixels 64 --frames 2 --warmup 0 --repeats 1)
  LOADER_ARGS=(--videos 2 --seconds 0.5 --width 64 --height 48 --fps 10 --size 64 --frames 4 --workers 1
               --decode-batches 1 --cached-batches 2)
  EVAL_ARGS=(--clips 2 --batch 2 --rounds 1 --set model.encoder.size=tiny --set model.llm.size=tiny
             --set model.vae.size=tiny --set data.frame_size=64 --set model.head.channels=[16,32,64]
             --set model.head.film_hidden=64)
fi
COMMON=(--set "run.output_dir=\"$OUT/runs\"" --set "data.cache_dir=\"$OUT/cache\"" --set run.progress=false)
CHECKPOINTING=(--set model.encoder.activation_checkpointing=true --set model.llm.activation_checkpointing=true)
COMPILED=(--set training.compile=true --set "training.compile_backend=\"$COMPILE_BACKEND\"")

# run_step NAME KIND COMMAND...: run it with a time limit, keep its output, record one line of steps.jsonl
run_step() {
  local name="$1" kind="$2"; shift 2
  local now; now=$(date +%s)
  if [ $((now - START)) -ge "$BUDGET" ]; then
    "$PYTHON" - "$STEPS" "$name" "$kind" "$@" <<'EOF'
import json, shlex, sys
path, name, kind, *command = sys.argv[1:]
with open(path, "a") as f:
    f.write(json.dumps({"name": name, "kind": kind, "command": shlex.join(command), "skipped": "over the budget"}) + "\n")
EOF
    echo "skipped $name (over the ${BUDGET} s budget)"
    return
  fi
  echo "running $name"
  local began; began=$(date +%s.%N)
  (cd "$OUT" && timeout "$LIMIT" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err")
  local rc=$?
  "$PYTHON" - "$STEPS" "$name" "$kind" "$rc" "$began" "$(date +%s.%N)" "$@" <<'EOF'
import json, shlex, sys
path, name, kind, rc, began, ended, *command = sys.argv[1:]
with open(path, "a") as f:
    f.write(json.dumps({"name": name, "kind": kind, "command": shlex.join(command), "exit_code": int(rc),
                        "seconds": round(float(ended) - float(began), 1)}) + "\n")
EOF
  [ "$rc" -eq 0 ] || echo "  $name exited with $rc (see $OUT/$name.err)"
}

# largest NAME: the micro-batch the memory probe of profile NAME found to fit (a CPU has no probe: 4)
largest() {
  "$PYTHON" - "$OUT/runs" "$1" <<'EOF'
import json, pathlib, sys
found = sorted(pathlib.Path(sys.argv[1]).glob(f"*-{sys.argv[2]}-profile/profile.json"))
probe = json.loads(found[-1].read_text())["memory"].get("largest_batch_that_fits") if found else None
print(probe or 4)
EOF
}

profile() {   # profile NAME OVERRIDES...: a profile whose run directory is named after the step
  local name="$1"; shift
  run_step "$name" profile "$PYTHON" -m fovea profile "$CONFIG" "${PROFILE_ARGS[@]}" "${COMMON[@]}" "${SIZE[@]}" \
    --set "run.name=\"$name\"" "$@"
}

profile b2 --set training.batch_size=2 --set training.grad_accum=4
profile b2-ac --set training.batch_size=2 --set training.grad_accum=4 "${CHECKPOINTING[@]}"
MAX=$(largest b2)
MAX_AC=$(largest b2-ac)
profile "b${MAX}" --set "training.batch_size=$MAX" --set training.grad_accum=1
profile "b${MAX_AC}-ac" --set "training.batch_size=$MAX_AC" --set training.grad_accum=1 "${CHECKPOINTING[@]}"
run_step bench_encoder benchmark "$PYTHON" "$ROOT/benchmarks/bench_encoder.py" "${ENCODER_ARGS[@]}"
run_step bench_loader benchmark "$PYTHON" "$ROOT/benchmarks/bench_loader.py" "${LOADER_ARGS[@]}"
run_step bench_eval benchmark "$PYTHON" "$ROOT/benchmarks/bench_eval.py" "${EVAL_ARGS[@]}"
profile b2-compile --set training.batch_size=2 --set training.grad_accum=4 "${COMPILED[@]}"
profile b2-compile-ac --set training.batch_size=2 --set training.grad_accum=4 "${COMPILED[@]}" "${CHECKPOINTING[@]}"
profile "b${MAX}-compile" --set "training.batch_size=$MAX" --set training.grad_accum=1 "${COMPILED[@]}"
profile "b${MAX_AC}-compile-ac" --set "training.batch_size=$MAX_AC" --set training.grad_accum=1 "${COMPILED[@]}" \
  "${CHECKPOINTING[@]}"

"$PYTHON" - "$OUT" "$MODE" "$START" "$ROOT" <<'EOF'
import json, pathlib, platform, subprocess, sys, time

out, mode, start, root = pathlib.Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line.strip()]
for step in steps:
    if step.get("exit_code") != 0:
        continue
    if step["kind"] == "profile":
        found = sorted((out / "runs").glob(f"*-{step['name']}-profile/profile.json"))
        step["result"] = json.loads(found[-1].read_text()) if found else None
        if step["result"]:
            step["result"].pop("per_step", None)           # the medians are kept; every step is in the run dir
    else:
        text = (out / f"{step['name']}.out").read_text()
        step["result"] = json.loads(text[text.index("{"):]) if "{" in text else None

def headline(step):
    r = step.get("result") or {}
    memory = r.get("memory", {})
    return {"profile": step["name"], "batch": r.get("batch", {}).get("batch_size"),
            "grad_accum": r.get("batch", {}).get("grad_accum"), "execution": r.get("execution"),
            "step_ms_median": 1000 * r["step_s"]["median"] if r.get("step_s") else None,
            "samples_per_s": r.get("samples_per_s"), "gpu_busy_percent": r.get("gpu_util_mean"),
            "data_wait_share": r.get("data_wait_share"), "mfu": (r.get("flops") or {}).get("mfu"),
            "bf16_peak_flops": (r.get("flops") or {}).get("bf16_peak_per_second"),
            "peak_allocated_gb": r.get("peak_memory_gb"),
            "activations_saved_gb": memory.get("activations_saved_gb"),
            "activations_saved_by_part_gb": memory.get("activations_saved_by_part_gb"),
            "largest_batch_that_fits": memory.get("largest_batch_that_fits")}

profiles = [headline(s) for s in steps if s["kind"] == "profile" and s.get("result")]
goals = {"gpu_busy_percent": (">=", 90), "data_wait_share": ("<", 0.02), "mfu": (">=", 0.25)}
for row in profiles:
    row["meets"] = {key: (None if row[key] is None else (row[key] >= bound if op == ">=" else row[key] < bound))
                    for key, (op, bound) in goals.items()}
try:
    device = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                            text=True, timeout=20).stdout.strip().splitlines()
except (OSError, subprocess.TimeoutExpired):
    device = []
commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
import torch
report = {"check": "fovea gpu_check", "mode": mode, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
          "device": device or ["cpu"], "host": platform.node(), "git_commit": commit or None,
          "torch": torch.__version__, "cuda": torch.version.cuda, "seconds": round(time.time() - start, 1),
          "goals": {"gpu_busy_percent": ">= 90", "data_wait_share": "< 0.02",
                    "mfu": ">= 0.25 of the dense bf16 peak (fovea.profile.resources.BF16_PEAK_FLOPS)"},
          "profiles": profiles, "steps": steps}
(out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
failed = [s["name"] for s in steps if s.get("exit_code") not in (0, None)]
skipped = [s["name"] for s in steps if "skipped" in s]
print(f"wrote {out / 'gpu_check.json'} ({report['seconds']} s; failed: {', '.join(failed) or 'none'}; "
      f"skipped: {', '.join(skipped) or 'none'})")
sys.exit(1 if failed else 0)
EOF
