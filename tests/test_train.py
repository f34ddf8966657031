"""The training loop and the run directory it writes."""

from __future__ import annotations

import json

import pytest
import torch

import fovea
from fovea.core.errors import FoveaError
from fovea.core.train import lr_factor, train
from tests.helpers import QUICKSTART, ROOT, tiny_overrides

GOLDEN = ROOT / "tests" / "assets" / "golden_quickstart_losses.json"
GOLDEN_OVERRIDES = {"training.max_steps": "20", "run.log_every": "5", "data.num_clips": "64"}


def test_run_directory_holds_everything(tmp_path):
    config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path))
    run = train(config)
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink() and not latest.readlink().is_absolute() and latest.resolve() == run.path
    for name in ("config.toml", "env.json", "metrics.jsonl", "model.safetensors", "summary.json",
                 "data_report.json", "loader_state.json"):
        assert (run.path / name).exists(), name

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
    assert summary["epochs"] == pytest.approx(4 * 2 / 8)


def test_checkpoint_holds_the_trained_weights(tmp_path):
    from safetensors.torch import load_model

    config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path))
    run = train(config)
    fresh = fovea.build_model(config)
    before = fresh.q_static.detach().clone()
    load_model(fresh, str(run.checkpoint_file))
    assert not torch.equal(fresh.q_static, before)   # trained, not the initial values


def test_bfloat16_autocast_trains_on_cpu(tmp_path):
    run = train(fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{"precision.dtype": '"bfloat16"'})))
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in run.read_metrics())


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
    assert curve[-1]["loss_fine"] < 0.5 * curve[0]["loss_fine"]


@pytest.mark.slow
def test_quickstart_loss_falls_for_both_passes(tmp_path):
    config = fovea.load_config(QUICKSTART, [f'run.output_dir="{tmp_path}"', "run.progress=false"])
    metrics = train(config).read_metrics()
    early, late = metrics[:3], metrics[-3:]
    for key in ("loss_fine", "loss_coarse"):
        assert max(m[key] for m in late) < 0.5 * min(m[key] for m in early)


if __name__ == "__main__":
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.write_text(json.dumps(golden_run(Path(tmp)), indent=2) + "\n")
    print(f"wrote {GOLDEN}")
