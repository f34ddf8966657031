"""Two processes through torchrun (gloo on CPU): the losses of one process with the same global batch,
one run directory, sharded checkpoints, resume after a crash, another world size, per-rank profiles."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fovea.cli import app
from fovea.core.config import load_config
from fovea.core.rundir import RunDir
from fovea.core.train import train
from tests.helpers import GOLDEN_PROFILE, QUICKSTART, ROOT, tiny_overrides

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="needs torch.distributed with gloo")

runner = CliRunner()
STEPS, SAVE_EVERY, PER_RANK = 8, 3, 2
COMPARED = ("loss", "loss_fine", "loss_coarse", "grad_norm")


def overrides(root: Path, cache: Path, **extra) -> list[str]:
    # the random VAE's small targets: the 1e-5 tolerances below are absolute, set for figures of their size
    # (the quick start's pooled targets give gradient norms ~25x larger, equal to ~1e-5 relative)
    # no held-out clips: every clip trains, so the hand-computed clip orders below hold (tests/test_eval.py
    # runs the held-out split under torchrun)
    values = {"model.vae.init": '"random"', "run.log_every": "1", "data.num_clips": "16", "eval.val_fraction": "0",
              "training.max_steps": str(STEPS), "training.save_every": str(SAVE_EVERY),
              "training.batch_size": str(PER_RANK), **extra}
    return [o for o in tiny_overrides(root, **values) if not o.startswith("data.cache_dir=")] + \
        [f'data.cache_dir="{cache}"']


def set_args(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def torchrun(*args: str, nproc: int = 2, entry: tuple[str, ...] = ("-m", "fovea")) -> subprocess.Popen:
    """``torchrun --standalone --nproc_per_node=nproc -m fovea ARGS`` in its own session (killable as a job)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc_per_node={nproc}", *entry, *args],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"torchrun failed ({process.returncode}):\n{out}\n{err[-4000:]}"
    return out, err


def per_step(run: RunDir) -> list[dict]:
    return [{key: m[key] for key in ("step", *COMPARED)} for m in run.read_metrics()]


def assert_same_curve(run: RunDir, reference: list[dict]) -> None:
    steps = per_step(run)
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1))
    for got, want in zip(steps, reference):
        for key in COMPARED:
            assert abs(got[key] - want[key]) <= 1e-5, (got["step"], key, got[key], want[key])


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shared") / "cache"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, cache) -> RunDir:
    """One process with the global batch of two (2 x PER_RANK clips per step), fp32."""
    root = tmp_path_factory.mktemp("single")
    return train(load_config(QUICKSTART, overrides(root, cache, **{"training.batch_size": str(2 * PER_RANK)})))


@pytest.fixture(scope="module")
def reference(reference_run) -> list[dict]:
    return per_step(reference_run)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, cache) -> RunDir:
    root = tmp_path_factory.mktemp("ddp")
    import importlib.util

    tracked = {"run.trackers": '["mlflow"]', "trackers.mlflow.tracking_uri": f'"sqlite:///{root / "mlflow.db"}"'} \
        if importlib.util.find_spec("mlflow") else {}
    out, _ = finish(torchrun("run", str(QUICKSTART), *set_args(overrides(root, cache, **tracked))))
    runs = [p for p in (root / "runs").iterdir() if p.name != "latest"]
    assert len(runs) == 1 and out.count("run: ") == 1   # one directory, named by rank 0, who speaks for the job
    return RunDir.open(root / "runs" / "latest")


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, cache) -> RunDir:
    root = tmp_path_factory.mktemp("fsdp")
    out, _ = finish(torchrun("run", str(QUICKSTART),
                             *set_args(overrides(root, cache, **{"distributed.strategy": '"fsdp"'}))))
    assert out.count("run: ") == 1                      # rank 0 speaks for the job
    return RunDir.open(root / "runs" / "latest")


def test_ddp_matches_one_process_with_the_same_global_batch(ddp_run, reference):
    run = ddp_run
    assert_same_curve(run, reference)
    summary = json.loads(run.summary_file.read_text())
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 2 * PER_RANK
    assert json.loads(run.env_file.read_text())["world_size"] == 2
    checkpoint = run.latest_checkpoint
    assert (checkpoint / "model.safetensors").is_file() and not (checkpoint / "sharded").exists()
    info = json.loads((checkpoint / "checkpoint.json").read_text())
    assert info["settings"]["world_size"] == 2 and not info["sharded"]
    assert [p.name for p in run.path.parent.iterdir() if p.name.startswith(".")] == []   # no temp files left


def test_only_rank_0_logs_to_the_trackers(ddp_run):
    mlflow = pytest.importorskip("mlflow")
    record = ddp_run.read_trackers()["mlflow"]
    client = mlflow.MlflowClient(record["tracking_uri"])
    assert len(client.search_runs([record["experiment_id"]])) == 1
    history = sorted((m.step, m.value) for m in client.get_metric_history(record["run_id"], "train/loss"))
    assert history == [(m["step"], m["loss"]) for m in ddp_run.read_metrics()]   # each step once: rank 0's row


def test_fsdp_matches_one_process_and_saves_sharded_checkpoints(fsdp_run, reference):
    assert_same_curve(fsdp_run, reference)
    checkpoint = fsdp_run.latest_checkpoint
    info = json.loads((checkpoint / "checkpoint.json").read_text())
    assert info["sharded"] and info["settings"]["world_size"] == 2
    assert not (checkpoint / "model.safetensors").exists()
    shards = sorted(p.name for p in (checkpoint / "sharded").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert all(f"sharded/{name}" in info["files"] for name in shards)   # size and SHA-256 checked on load


def test_audit_reads_a_sharded_run_and_checks_the_global_batch(fsdp_run):
    result = runner.invoke(app, ["audit", str(fsdp_run.path)])
    assert result.exit_code == 0, result.output
    checks = {c["id"]: c for c in json.loads((fsdp_run.path / "audit.json").read_text())["checks"]}
    batch = checks["training.effective_batch"]
    assert batch["observed"].startswith(f"{2 * PER_RANK} ({PER_RANK} × 1 × 2 processes)")
    epochs = checks["training.epochs"]
    assert epochs["measurements"]["epochs"] == pytest.approx(STEPS * 2 * PER_RANK / 16)
    assert checks["components.llm"]["status"] == "pass"      # the sharded weights moved from initialisation
    assert "2 processes under torchrun (fsdp)" in (fsdp_run.path / "audit.md").read_text()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_killed_two_process_run_resumes_on_the_same_curve(tmp_path, cache, reference, strategy):
    items = overrides(tmp_path, cache, **{"distributed.strategy": f'"{strategy}"'})
    job = torchrun("run", str(QUICKSTART), *set_args(items))
    latest, deadline = tmp_path / "runs" / "latest", time.monotonic() + 240
    while not (latest.exists() and any(m["step"] > SAVE_EVERY for m in RunDir.open(latest).read_metrics())):
        assert job.poll() is None, f"the run exited ({job.returncode}) before its first checkpoint:\n" \
                                   f"{job.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "no step after the first checkpoint in 240 s"
        time.sleep(0.005)
    import psutil

    agent = psutil.Process(job.pid)
    for process in [*agent.children(recursive=True), agent]:   # the whole job dies at once: no handler runs
        process.send_signal(signal.SIGKILL)
    job.communicate()
    run = RunDir.open(latest)
    killed_at = max(m["step"] for m in run.read_metrics())
    assert SAVE_EVERY < killed_at < STEPS and not run.summary_file.exists()

    finish(torchrun("run", "--resume", str(run.path)))
    assert_same_curve(run, reference)
    assert json.loads(run.summary_file.read_text())["world_size"] == 2


def test_resuming_on_another_number_of_processes_says_what_changes(tmp_path, fsdp_run):
    copy = RunDir(Path(shutil.copytree(fsdp_run.path, tmp_path / fsdp_run.path.name)))
    refused = runner.invoke(app, ["run", "--resume", str(copy.path), "--set", f"training.max_steps={STEPS + 2}"])
    assert refused.exit_code == 2
    message = " ".join(refused.output.split())
    assert "world_size 2 -> 1" in message
    assert f"torchrun --nproc_per_node=2 -m fovea run --resume {copy.path}" in message
    assert f"each step then holds {PER_RANK} clips instead of {2 * PER_RANK}" in message
    assert "resharded" in message and len(copy.read_metrics()) == STEPS   # nothing touched

    forced = runner.invoke(app, ["run", "--resume", str(copy.path), "--force",
                                 "--set", f"training.max_steps={STEPS + 2}"])
    assert forced.exit_code == 0, forced.output
    metrics = copy.read_metrics()
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 3))
    assert all(m["loss"] < 1 for m in metrics[STEPS:])              # the sharded weights loaded, not a fresh init
    newest = copy.latest_checkpoint
    assert (newest / "model.safetensors").is_file() and json.loads((newest / "checkpoint.json").read_text())[
        "settings"]["world_size"] == 1


def test_profile_under_torchrun_reports_every_rank_and_the_slowest(tmp_path, cache):
    out, _ = finish(torchrun("profile", str(QUICKSTART), "--steps", "3", "--warmup", "1",
                             *set_args(overrides(tmp_path, cache))))
    assert out.count("wrote ") == 1 and "per rank" in out
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.name.endswith("-profile")]
    report = json.loads((run / "profile.json").read_text())
    assert report["world_size"] == 2 and [r["rank"] for r in report["ranks"]] == [0, 1]
    slowest = max(report["ranks"], key=lambda r: r["step_s_median"])
    assert report["slowest_rank"] == slowest["rank"] and slowest["step_s_median"] > 0
    assert report["batch"]["global_batch"] == 2 * PER_RANK
    assert any(f["kind"] in ("ranks", "imbalance") for f in report["diagnosis"])
    assert "## Ranks (2 processes" in (run / "profile.md").read_text()
    assert [r.rank for r in RunDir(run).read_profile().ranks] == [0, 1]        # the typed record keeps them


def test_sigterm_to_torchrun_stops_every_rank_at_one_step_with_a_checkpoint(tmp_path, cache):
    job = torchrun("run", str(QUICKSTART), *set_args(overrides(tmp_path, cache, **{"training.max_steps": "1000",
                                                                                   "training.save_every": "1000"})))
    latest, deadline = tmp_path / "runs" / "latest", time.monotonic() + 240
    while not (latest.exists() and RunDir.open(latest).read_metrics()):
        assert job.poll() is None and time.monotonic() < deadline, "the run did not start"
        time.sleep(0.01)
    job.send_signal(signal.SIGTERM)                 # torchrun passes it on to both ranks
    _, err = job.communicate(timeout=120)
    assert job.returncode != 0                      # not finished, as a job script must see
    run = RunDir.open(latest)
    (checkpoint,) = run.checkpoints()
    step = run.read_metrics()[-1]["step"]
    assert checkpoint.name == f"step-{step:06d}" and step < 1000   # both ranks stopped after the same step
    assert err.count(f"stopped by SIGTERM after step {step}") == 1
    assert f"torchrun --nproc_per_node=2 -m fovea run --resume {run.path}" in err


def test_a_ddp_checkpoint_continues_under_fsdp_like_the_one_process_run(tmp_path, ddp_run, reference_run):
    """Whole weights and a numbered AdamW state spread over FSDP2's shards: the same next steps."""
    extend = ["--set", f"training.max_steps={STEPS + 2}"]
    single = RunDir(Path(shutil.copytree(reference_run.path, tmp_path / "single")))
    assert runner.invoke(app, ["run", "--resume", str(single.path), *extend]).exit_code == 0
    sharded = RunDir(Path(shutil.copytree(ddp_run.path, tmp_path / "sharded")))
    finish(torchrun("run", "--resume", str(sharded.path), *extend, "--set", "distributed.strategy=fsdp"))
    assert (sharded.latest_checkpoint / "sharded").is_dir()
    want, got = per_step(single)[STEPS:], per_step(sharded)[STEPS:]
    assert [s["step"] for s in got] == [STEPS + 1, STEPS + 2]
    for a, b in zip(got, want):
        for key in COMPARED:
            assert abs(a[key] - b[key]) <= 1e-5, (a["step"], key, a[key], b[key])


def test_profile_diagnosis_names_a_rank_that_holds_the_others_back():
    from fovea.core.profile_report import ProfileReport, RankFigures
    from fovea.profile import diagnose

    config = load_config(QUICKSTART)
    golden = ProfileReport.model_validate_json((GOLDEN_PROFILE / "profile.json").read_text())   # one CPU process

    def report(steps: list[float], waits: list[float]) -> ProfileReport:
        ranks = [RankFigures(rank=r, device="cpu", step_s_median=s, step_s_p90=s, data_wait_share=w,
                             phases_median_s={}, peak_memory_gb=None, gpu_util_mean=None)
                 for r, (s, w) in enumerate(zip(steps, waits))]
        return golden.model_copy(update={"data_wait_share": waits[0], "unaccounted_share": 0.0, "ranks": ranks,
                                         "world_size": len(ranks),
                                         "slowest_rank": max(ranks, key=lambda r: r.step_s_median).rank})

    def finding(found: list, kind: str):
        return next(f for f in found if f.kind == kind)

    slow_data = diagnose(config, report([0.10, 0.10, 0.15], [0.01, 0.01, 0.30]))
    assert "rank 2 is the slowest, 50% behind" in finding(slow_data, "imbalance").message
    assert "waits for data" in finding(slow_data, "imbalance").message
    assert finding(slow_data, "data-bound").severity == "warn"              # the worst rank's wait counts
    slow_device = diagnose(config, report([0.10, 0.13], [0.01, 0.01]))
    assert "not for data" in finding(slow_device, "imbalance").message
    even = diagnose(config, report([0.100, 0.105], [0.01, 0.01]))
    assert finding(even, "ranks").severity == "ok" and not any(f.kind == "imbalance" for f in even)


POISONING_FOVEA = """
import sys

from fovea.cli import app
from fovea.core.cache import ClipCache

poisoned, read = int(sys.argv.pop(1)), ClipCache.read


def read_with_nan(self, indices):
    batch = read(self, indices)
    batch["latents"][batch["index"] == poisoned] = float("nan")
    return batch


ClipCache.read = read_with_nan
app(prog_name="fovea")
"""


def test_a_nan_on_one_rank_stops_every_rank_at_that_step_with_one_diagnosis(tmp_path, cache):
    # seed 0, 16 clips, global batches of 4: step 3 reads clips 8..11 of epoch 0's order; rank 1 reads 10 and 11
    order = torch.randperm(16, generator=torch.Generator().manual_seed(0)).tolist()
    script = tmp_path / "poisoning_fovea.py"
    script.write_text(POISONING_FOVEA)
    items = overrides(tmp_path, cache, **{"training.save_every": "1", "distributed.strategy": "fsdp"})
    job = torchrun(str(order[10]), "run", str(QUICKSTART), *set_args(items), entry=(str(script),))
    _, err = job.communicate(timeout=300)
    assert job.returncode != 0
    assert err.count("error: step 3: non-finite loss") == 1                     # rank 0 speaks
    assert err.count("error: stopped because rank 0 failed; its error is above") == 1
    run = RunDir.open(tmp_path / "runs" / "latest")
    (diagnosis,) = [json.loads(line) for line in (run.path / "nonfinite.jsonl").read_text().splitlines()]
    assert diagnosis["step"] == 3 and diagnosis["micro_batches"][0]["losses"]["loss_fine"] == "nan"
    assert [c["index"] for c in diagnosis["micro_batches"][0]["clips"]] == order[8:12]   # both ranks' clips
    assert diagnosis["parameters_with_nonfinite_grad"] > 0 and diagnosis["last_checkpoint"] == "step-000002"
    assert [m["step"] for m in run.read_metrics()] == [1, 2]
    assert [p.name for p in run.checkpoints()] == ["step-000001", "step-000002"]
