"""``fovea profile``: a slow part lands in its own phase, FLOPs and saved activations of a known module, a
diagnosis that tells data-bound apart, and ``profile.json`` as a typed record read and written by ``RunDir``."""

from __future__ import annotations

import json
import shutil
import time
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

import fovea
from fovea.cli import app
from fovea.core.cache import ClipCache
from fovea.core.errors import FoveaError
from fovea.core.profile_report import ProfileReport
from fovea.core.rundir import RunDir
from fovea.profile import PHASES, diagnose, measure_micro_batch, profile, render_markdown
from tests.helpers import GOLDEN_PROFILE, QUICKSTART, tiny_overrides

runner = CliRunner()


def profiled(tmp_path, steps=4, **extra) -> tuple[ProfileReport, RunDir, fovea.FoveaConfig]:
    config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **extra))
    report, run = profile(config, RunDir.create(config), steps=steps, warmup=1)
    return report, run, config


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    """A profile of the tiny config as it is."""
    return profiled(tmp_path_factory.mktemp("fast"))


def largest_phase(report: ProfileReport) -> str:
    return max(PHASES, key=lambda phase: report.phases_s[phase].median)


def test_profile_writes_the_record_it_returns_and_says_no_gpu_on_a_cpu(fast):
    report, run, _ = fast
    assert run.read_profile() == report                                    # profile.json is the report returned
    assert report.steps == 4 and len(report.per_step) == 4
    assert all(row[p] >= 0 for row in report.per_step for p in PHASES)      # the parts sit inside the forward
    assert report.flops.per_step > 0 and report.flops.mfu is None          # no GPU peak on CPU
    # no GPU here: the GPU figures say so instead of inventing numbers
    assert report.gpu_util_mean is None and report.peak_memory_gb is None and report.memory.measured is None
    assert report.resources.gpu is None and len(report.resources.cpu_percent_per_core) >= 1
    assert run.profile_markdown_file.read_text() == render_markdown(report)
    assert "- GPU: no GPU" in render_markdown(report)
    assert any(f.kind == "gpu" and "no GPU" in f.message for f in report.diagnosis)


def test_memory_model_matches_the_measured_activations(fast):
    report, _, _ = fast
    estimated, measured = report.memory.model.activations_gb, report.memory.activations_saved_gb
    assert measured > 0 and 1 / 1.5 < estimated / measured < 1.5


def test_a_slow_loader_is_diagnosed_as_data_bound_and_a_fast_one_is_not(fast, tmp_path, monkeypatch):
    report, _, _ = fast
    assert report.data_wait_share < 0.2 and largest_phase(report) != "data_wait"
    assert "data-bound" not in {f.kind for f in report.diagnosis}

    # each read takes five times the fast run's whole step: whatever the machine's load, data-bound
    delay = 5 * report.step_s.median
    read = ClipCache.read
    monkeypatch.setattr(ClipCache, "read", lambda self, indices: (time.sleep(delay), read(self, indices))[1])
    slow, _, _ = profiled(tmp_path, **{"data.num_workers": "0", "data.prefetch": "1"})
    assert slow.data_wait_share > 0.2 and largest_phase(slow) == "data_wait"
    finding = next(f for f in slow.diagnosis if f.kind == "data-bound")
    assert "data.num_workers (now 0)" in finding.message


def test_a_slow_head_lands_in_the_head_phase(fast, tmp_path, monkeypatch):
    """The parts are timed where they run: a head made slow on purpose is the largest phase, not "forward_other"."""
    import fovea.core.model

    report, _, _ = fast
    delay, build = 3 * report.step_s.median, fovea.core.model.build_model

    def build_with_a_slow_head(config):
        model = build(config)
        model.head.register_forward_hook(lambda module, args, out: time.sleep(delay))
        return model

    monkeypatch.setattr(fovea.core.model, "build_model", build_with_a_slow_head)
    slow, _, _ = profiled(tmp_path)
    assert largest_phase(slow) == "head" and slow.phase_share["head"] > 0.5
    assert slow.phase_share["forward_other"] < 0.1 * slow.phase_share["head"]
    assert "data-bound" not in {f.kind for f in slow.diagnosis}


class ToyEncoder(torch.nn.Module):
    def __init__(self, d_in: int, d: int):
        super().__init__()
        self.proj = torch.nn.Linear(d_in, d, bias=False)

    def encode(self, frames):
        return self.proj(frames)

    def attend(self, queries, cache):
        return queries


class Toy(torch.nn.Module):
    """Encoder, LLM and a frozen head, each one bias-free linear layer: its FLOPs and saved tensors are known."""

    def __init__(self, d_in: int, d: int):
        super().__init__()
        self.encoder = ToyEncoder(d_in, d)
        self.llm, self.head = torch.nn.Linear(d, d, bias=False), torch.nn.Linear(d, d, bias=False)
        self.head.requires_grad_(False)

    def prepare(self, batch):
        return {}

    def forward(self, frames, latents, targets):
        predicted = self.head(self.llm(self.encoder.encode(frames)))        # (N, D)
        return SimpleNamespace(loss=(predicted - latents).pow(2).mean())


def test_flops_and_saved_activations_of_a_known_module():
    N, D_IN, D = 6, 5, 4
    toy = Toy(D_IN, D)
    state = SimpleNamespace(module=toy, model=toy, device=torch.device("cpu"), dtype=torch.float32)
    flops, saved = measure_micro_batch(state, {"frames": torch.randn(N, D_IN), "latents": torch.randn(N, D)})
    # forward 2NKM per (N, K) x (K, M) matmul; backward twice that for the LLM (input and weight gradients),
    # the weight gradient only for the encoder (the frames need none), the input gradient only for the frozen head
    assert flops == 2 * N * D_IN * D * 2 + 2 * N * D * D * 3 + 2 * N * D * D * 2
    # fp32 bytes: each trainable layer keeps its input for its weight gradient, the loss keeps the error;
    # the frozen head keeps only its weight, which is not an activation
    assert saved == {"encoder": 4 * N * D_IN, "llm": 4 * N * D, "head": 0, "other": 4 * N * D}
    assert all(p.grad is None for p in toy.parameters())                   # measuring leaves no gradients behind


def test_cli_profiles_runs_latest_or_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = runner.invoke(app, ["profile", "--steps", "2"])
    assert missing.exit_code == 2 and "no CONFIG given and no runs/latest" in missing.output

    overrides = [item for o in tiny_overrides(tmp_path) if not o.startswith("run.output_dir")
                 for item in ("--set", o)]
    trained = runner.invoke(app, ["run", str(QUICKSTART), *overrides])   # into ./runs, as users do
    assert trained.exit_code == 0, trained.output
    result = runner.invoke(app, ["profile", "--steps", "2", "--warmup", "0"])
    assert result.exit_code == 0, result.output
    latest = RunDir.open(tmp_path / "runs" / "latest")
    assert latest.read_profile().steps == 2 and latest.profile_markdown_file.is_file()
    assert "samples/s" in result.output and f"wrote {latest.profile_file} and profile.md" in result.output


# --------------------------------------------------------------------------- profile.json, the record


def golden_run(path) -> RunDir:
    """A run directory holding the golden profile.json."""
    path.mkdir(exist_ok=True)
    run = RunDir(path)
    shutil.copy(GOLDEN_PROFILE / "profile.json", run.profile_file)
    return run


def test_the_golden_profile_reads_and_writes_back_byte_for_byte(tmp_path):
    golden = (GOLDEN_PROFILE / "profile.json").read_bytes()
    report = golden_run(tmp_path / "a").read_profile()
    assert report.device == "cpu" and report.memory.model.total_gb > 0 and report.batch.batch_size == 2
    assert report.ranks is None and report.world_size == 1 and "ranks" not in report.model_dump()   # one process
    out = RunDir(tmp_path / "b")
    out.path.mkdir()
    out.write_profile(report, render_markdown(report))
    assert out.profile_file.read_bytes() == golden
    # profile.md of the same run, written by the profiler before profile.json became a typed record
    assert out.profile_markdown_file.read_text() == (GOLDEN_PROFILE / "profile.md").read_text()
    # and the diagnosis of the same figures and config
    config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path))
    assert diagnose(config, report) == report.diagnosis


@pytest.mark.parametrize("damage, says", [
    (lambda text: text[: len(text) // 2], "not valid JSON"),
    (lambda text: "[1, 2]", "expected a JSON object, got list"),
    (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "step_s"}), "step_s: field required"),
    (lambda text: text.replace('"steps": 3', '"steps": "three"'), "steps: input should be a valid integer"),
    (lambda text: text.replace('"warmup": 1', '"warmup": 1, "colour": "red"'), "colour: extra inputs"),
], ids=["torn", "not-an-object", "missing-key", "wrong-type", "unknown-key"])
def test_a_bad_profile_json_is_one_error_saying_what_to_do(tmp_path, damage, says):
    run = golden_run(tmp_path)
    run.profile_file.write_text(damage(run.profile_file.read_text()))
    with pytest.raises(FoveaError) as error:
        run.read_profile()
    message = str(error.value)
    assert message.startswith(f"{run.profile_file}: ") and says in message and "\n" not in message
    assert "profile the run again with `fovea profile`" in message


def test_a_run_never_profiled_has_no_profile(tmp_path):
    assert RunDir(tmp_path).read_profile() is None
