"""``benchmarks/gpu_check.sh --cpu-smoke``: the GPU check's every step at tiny sizes on CPU, one JSON file."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers import ROOT


@pytest.mark.slow
def test_the_gpu_check_runs_every_step_in_cpu_smoke_mode(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "cpu-smoke" and report["device"] == ["cpu"]
    steps = {step["name"]: step for step in report["steps"]}
    assert {"b2", "b2-ac", "b4", "b4-ac", "bench_encoder", "bench_loader", "bench_eval", "b2-compile",
            "b2-compile-ac", "b4-compile", "b4-compile-ac"} == set(steps)
    assert all(step["exit_code"] == 0 and step["result"] for step in steps.values())
    assert all("fovea" in step["command"] or "benchmarks/" in step["command"] for step in steps.values())
    profiles = {row["profile"]: row for row in report["profiles"]}
    assert profiles["b2-compile-ac"]["execution"] == {
        "compile": True, "compile_backend": "aot_eager", "activation_checkpointing": {"encoder": True, "llm": True}}
    assert profiles["b4"]["batch"] == 4 and profiles["b2"]["grad_accum"] == 4
    ac, plain = profiles["b2-ac"]["activations_saved_by_part_gb"], profiles["b2"]["activations_saved_by_part_gb"]
    assert ac["encoder"] < plain["encoder"] and ac["llm"] < plain["llm"]
    assert steps["bench_eval"]["result"]["benchmark"] == "eval"
