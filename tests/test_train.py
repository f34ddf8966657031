"""The training loop and the run directory it writes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import fovea
from fovea.core.data import build_source
from fovea.core.errors import FoveaError
from fovea.core.rundir import RunDir
from fovea.core.optimizer import lr_factor
from fovea.core.train import train
from tests.helpers import QUICKSTART, ROOT, tiny_overrides

GOLDEN = ROOT / "tests" / "assets" / "golden_quickstart_losses.json"
GOLDEN_OVERRIDES = {"training.max_steps": "20", "run.log_every": "5", "data.num_clips": "64"}


def test_run_directory_holds_everything(tmp_path):
    config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path))
    run = train(config)
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink() and not latest.readlink().is_absolute() and latest.resolve() == run.path
    for name in ("config.toml", "env.json", "metrics.jsonl", "summary.json", "data_report.json", "split.json"):
        assert (run.path / name).exists(), name
    assert [p.name for p in run.checkpoints()] == ["step-000004"]
    assert run.checkpoint_file == run.path / "checkpoints" / "step-000004" / "model.safetensors"
    assert {p.name for p in run.latest_checkpoint.iterdir()} == {
        "model.safetensors", "training_state.pt", "loader_state.json", "checkpoint.json"}

    assert fovea.load_config(run.config_file).model_dump() == config.model_dump()
    metrics = run.read_metrics()
    assert [m["step"] for m in metrics] == [2, 4]
    for m in metrics:
        assert set(m) >= {"step", "loss", "loss_fine", "loss_coarse", "ratio", "grad_norm", "lr", "samples_per_s",
                          "data_wait_share"}
        assert 0 <= m["data_wait_share"] < 1
        assert m["ratio"] == pytest.approx(m["loss_coarse"] / m["loss_fine"])
        assert m["loss"] == pytest.approx(m["loss_fine"] + m["loss_coarse"], rel=1e-5)
    env = json.loads((run.path / "env.json").read_text())
    assert torch.__version__.startswith(env["packages"]["torch"]) and env["devices"]
    summary = json.loads(run.summary_file.read_text())
    assert summary["status"] == "completed" and summary["last"] == metrics[-1]
    assert summary["num_clips"] == 7 and summary["epochs"] == pytest.approx(4 * 2 / 7)   # 1 of the 8 clips held out
    held_out = run.read_metrics("val")
    assert [m["step"] for m in held_out] == [4] and summary["val"] == held_out[-1]


def test_checkpoint_holds_the_trained_weights(tmp_path):
    from safetensors.torch import load_model

    config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path))
    run = train(config)
    fresh = fovea.build_model(config)
    before = fresh.q_static.detach().clone()
    load_model(fresh, str(run.checkpoint_file))
    assert not torch.equal(fresh.q_static, before)   # trained, not the initial values


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_training_steps_run_under_the_configured_autocast(tmp_path, dtype):
    """precision.dtype = "bfloat16" runs every training forward's matmuls in bfloat16 (CPU autocast), float32
    in float32; probed on the real forward of the real loop, the weights staying float32."""
    matmul_dtypes = set()

    def probe(module, inputs, output):   # training forwards only: the held-out evaluation runs in eval mode
        if isinstance(module, torch.nn.Linear) and module.training and torch.is_grad_enabled():
            matmul_dtypes.add(output.dtype)

    hook = torch.nn.modules.module.register_module_forward_hook(probe)
    try:
        run = train(fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{"precision.dtype": f'"{dtype}"'})))
    finally:
        hook.remove()
    assert matmul_dtypes == {getattr(torch, dtype)}
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in run.read_metrics())
    weights = load_file(run.checkpoint_file)
    assert weights and all(w.dtype == torch.float32 for w in weights.values())


def test_latest_follows_the_newest_run_and_never_clobbers_a_directory(tmp_path):
    first = train(fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{"training.max_steps": "1"})))
    second = train(fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{"training.max_steps": "1"})))
    assert first.path != second.path and (tmp_path / "runs" / "latest").resolve() == second.path

    other = tmp_path / "other"
    (other / "latest").mkdir(parents=True)
    config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{"run.output_dir": f'"{other}"'}))
    with pytest.raises(FoveaError, match="latest exists and is not a symlink"):
        train(config)
    assert list(other.iterdir()) == [other / "latest"]   # nothing written


def test_schedule_warms_up_then_decays():
    config = fovea.load_config(None, ["training.warmup_steps=10", "training.max_steps=110", "training.min_lr_ratio=0.1"])
    factors = [lr_factor(step, config) for step in range(110)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_nonfinite_loss_or_gradient_is_caught_before_the_weights_change(tiny_config, tiny_batch):
    from fovea.core.timing import PhaseTimer
    from fovea.core.nonfinite import NonFiniteStep
    from fovea.core.state import prepare_training
    from fovea.core.step import train_step

    model = fovea.build_model(tiny_config).train()
    state = prepare_training(tiny_config, model, torch.device("cpu"))
    frames, latents = tiny_batch
    good = {"frames": frames, "latents": latents, "index": torch.tensor([5, 6])}
    train_step(state, iter([good]), PhaseTimer())                   # a real step first: the optimizer has state

    def snapshot():
        optimizer = state.optimizer.state_dict()["state"]
        return ({name: value.clone() for name, value in model.state_dict().items()},
                {(i, key): value.clone() for i, s in optimizer.items() for key, value in s.items()},
                state.scheduler.last_epoch)

    def unchanged(before):
        after = snapshot()
        return all(torch.equal(before[0][k], after[0][k]) for k in before[0]) and \
            all(torch.equal(before[1][k], after[1][k]) for k in before[1]) and before[2] == after[2]

    before = snapshot()
    poisoned = latents.clone()
    poisoned[1, 3, 0, 0, 0] = float("nan")                          # one value of one target of clip 6
    with pytest.raises(NonFiniteStep) as caught:
        train_step(state, iter([{**good, "latents": poisoned}]), PhaseTimer())
    assert caught.value.which == ["loss", "loss_fine", "loss_coarse", "next_latent_coarse", "next_latent_fine"] and caught.value.clips == [[5, 6]]
    assert unchanged(before) and all(p.grad is None for p in model.parameters())

    hook = model.q_static.register_hook(lambda grad: grad * float("inf"))   # finite loss, infinite gradient
    with pytest.raises(NonFiniteStep) as caught:
        train_step(state, iter([good]), PhaseTimer())
    hook.remove()
    assert caught.value.which == ["gradient"] and "q_static" in caught.value.parameters
    assert unchanged(before)
    train_step(state, iter([good]), PhaseTimer())                   # and training goes on
    assert not unchanged(before)


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nonfinite_step_stops_the_run_with_a_diagnosis_or_is_skipped(tmp_path, monkeypatch, policy):
    from fovea.core.cache import ClipCache
    from fovea.core.checkpoint import read_checkpoint

    # seed 0, 8 clips, batches of 2: step 3 reads clips 4 and 5 of epoch 0's permutation
    poisoned = torch.randperm(8, generator=torch.Generator().manual_seed(0))[4].item()
    read = ClipCache.read

    def read_with_nan(self, indices):
        batch = read(self, indices)
        batch["latents"][batch["index"] == poisoned] = float("nan")
        return batch

    monkeypatch.setattr(ClipCache, "read", read_with_nan)
    config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{
        "run.log_every": "1", "training.save_every": "1", "training.on_nonfinite": f'"{policy}"'}))
    if policy == "stop":
        with pytest.raises(FoveaError, match="step 3: non-finite loss.*the last checkpoint, step-000002, is intact"):
            train(config)
    else:
        train(config)
    run = RunDir.open(tmp_path / "runs" / "latest")
    (diagnosis,) = [json.loads(line) for line in (run.path / "nonfinite.jsonl").read_text().splitlines()]
    assert diagnosis["step"] == 3 and diagnosis["action"] == ("stopped" if policy == "stop" else "skipped")
    assert diagnosis["micro_batches"][0]["losses"]["loss_fine"] == "nan"
    caption = build_source(config)[poisoned].caption   # each clip's cache clip_info, caption included
    assert {"index": poisoned, "source": f"synthetic seed=0 clip={poisoned}",
            "frame_indices": list(range(8)), "caption": caption} in diagnosis["micro_batches"][0]["clips"]
    assert diagnosis["last_checkpoint"] == "step-000002"
    steps = [m["step"] for m in run.read_metrics()]
    if policy == "stop":
        assert steps == [1, 2] and not run.summary_file.exists()
        assert [p.name for p in run.checkpoints()] == ["step-000001", "step-000002"]
        assert read_checkpoint(run.latest_checkpoint).step == 2
    else:
        metrics = run.read_metrics()
        assert steps == [1, 2, 3, 4] and metrics[2]["skipped_steps"] == 1 and metrics[2]["loss"] is None
        assert json.loads(run.summary_file.read_text())["skipped_steps"] == 1
        at_2, at_3 = (load_file(run.checkpoints_dir / f"step-00000{s}" / "model.safetensors") for s in (2, 3))
        assert all(torch.equal(at_2[k], at_3[k]) for k in at_2)    # the skipped step changed no weight


def golden_run(tmp_path):
    run = train(fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **GOLDEN_OVERRIDES)))
    return [{k: m[k] for k in ("step", "loss_fine", "loss_coarse")} for m in run.read_metrics()]


def test_short_loss_curve_matches_the_golden_one(tmp_path):
    """A 20-step quick-start curve, kept in tests/assets (regenerate: python -m tests.test_train)."""
    golden = json.loads(GOLDEN.read_text())
    curve = golden_run(tmp_path)
    assert [m["step"] for m in curve] == [m["step"] for m in golden]
    for got, want in zip(curve, golden):
        assert got["loss_fine"] == pytest.approx(want["loss_fine"], rel=2e-2)
        assert got["loss_coarse"] == pytest.approx(want["loss_coarse"], rel=2e-2)
    # it falls; not by half in 20 steps as on a random VAE's near-constant targets (docs/quickstart.md)
    assert curve[-1]["loss_fine"] < curve[0]["loss_fine"] and curve[-1]["loss_coarse"] < curve[0]["loss_coarse"]


@pytest.mark.slow
def test_quickstart_loss_falls_for_both_passes(tmp_path):
    config = fovea.load_config(QUICKSTART, [f'run.output_dir="{tmp_path}"', "run.progress=false"])
    metrics = train(config).read_metrics()
    first, late = metrics[0], metrics[-3:]
    for key in ("loss_fine", "loss_coarse"):
        assert max(m[key] for m in late) < 0.5 * first[key]


if __name__ == "__main__":
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.write_text(json.dumps(golden_run(Path(tmp)), indent=2) + "\n")
    print(f"wrote {GOLDEN}")
