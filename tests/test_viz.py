"""Seeing what the model looks at: attention statistics in training, `fovea viz` figures, the audit's Figures."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from typer.testing import CliRunner

import fovea
from fovea.cli import app
from fovea.core.attention import STAT_KEYS, attention_entropy, attention_peak, attention_stats, patch_maps
from fovea.core.train import train
from tests.helpers import QUICKSTART, tiny_overrides

runner = CliRunner()
T = 8                                                      # the quick-start clips' frames
CLIP_FIGURES = {"attention_clip{}.png": (1300, 530), "predictions_clip{}.png": (1300, 680)}
CURVE_FIGURES = {"losses.png": (800, 450), "entropy.png": (1100, 450)}


def test_entropy_is_log_k_for_uniform_and_zero_for_one_hot():
    K = 70
    uniform = torch.full((2, T, K), 1.0 / K)                                  # (B, T, K)
    one_hot = torch.nn.functional.one_hot(torch.arange(2 * T) % K, K).float().view(2, T, K)
    assert attention_entropy(uniform) == pytest.approx(torch.full((2, T), math.log(K)), abs=1e-5)
    assert torch.equal(attention_entropy(one_hot), torch.zeros(2, T))       # 0 log 0 = 0, no NaN
    assert attention_peak(uniform) == pytest.approx(torch.full((2, T), 1.0 / K))
    assert torch.equal(attention_peak(one_hot), torch.ones(2, T))
    half = torch.tensor([0.5, 0.5, 0.0, 0.0])
    assert float(attention_entropy(half)) == pytest.approx(math.log(2))
    stats = attention_stats(uniform, one_hot.to(torch.bfloat16))             # bfloat16 under autocast
    assert dict(zip(STAT_KEYS, stats.tolist())) == pytest.approx(
        {"entropy_static": math.log(K), "entropy_dynamic": 0.0, "peak_static": 1.0 / K, "peak_dynamic": 1.0})


def test_patch_maps_drop_prefix_and_self_columns_and_keep_row_major_order():
    prefix, grid = 5, 3
    attention = torch.zeros(2, prefix + grid * grid + 1)                     # CLS + 4 registers, 9 patches, self
    attention[:, prefix + 1 * grid + 2] = 1.0                                # patch at row 1, column 2
    maps = patch_maps(attention, prefix, grid)
    assert maps.shape == (2, grid, grid) and maps[:, 1, 2].tolist() == [1.0, 1.0] and maps.sum() == 2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("viz")
    return train(fovea.load_config(QUICKSTART, tiny_overrides(tmp_path)))


def test_metrics_lines_hold_the_attention_statistics(run):
    K = 1 + 4 + 64 + 1                                # CLS, registers, 8x8 patches, the query itself (deep)
    for m in run.read_metrics():
        assert set(STAT_KEYS) <= set(m)
        for query in ("static", "dynamic"):
            assert 0.0 <= m[f"entropy_{query}"] <= math.log(K) + 1e-4
            assert 1.0 / K - 1e-6 <= m[f"peak_{query}"] <= 1.0


def test_viz_writes_the_figures_and_the_audit_shows_them(run):
    from PIL import Image

    result = runner.invoke(app, ["viz", str(run.path), "--clips", "2"])
    assert result.exit_code == 0, result.output
    expected = {name.format(i): size for name, size in CLIP_FIGURES.items() for i in range(2)} | CURVE_FIGURES
    viz = run.path / "viz"
    assert {p.name for p in viz.iterdir()} == set(expected)
    for name, size in expected.items():
        with Image.open(viz / name) as image:
            assert image.format == "PNG" and image.size == size, name

    result = runner.invoke(app, ["viz", str(run.path), "--clips", "1"])   # fewer clips: the old ones go
    assert result.exit_code == 0, result.output
    assert not (viz / "attention_clip1.png").exists() and (viz / "attention_clip0.png").exists()

    result = runner.invoke(app, ["audit", str(run.path)])
    assert result.exit_code == 0, result.output
    audit = (run.path / "audit.md").read_text(encoding="utf-8")
    assert "FIGURES" in audit
    for name in ("losses.png", "entropy.png", "attention_clip0.png", "predictions_clip0.png"):
        assert f"(viz/{name})" in audit


def test_viz_of_a_missing_run_is_a_one_line_error(tmp_path):
    result = runner.invoke(app, ["viz", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "error: no run directory" in result.output


def test_tensorboard_missing_is_an_error_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)          # import tensorboard raises ImportError
    config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{"run.tensorboard": "true"}))
    with pytest.raises(fovea.FoveaError, match="pip install 'fovea\\[tensorboard\\]'"):
        train(config)
    assert not (tmp_path / "runs").exists()


def test_tensorboard_gets_the_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{"run.tensorboard": "true"})))
    events = EventAccumulator(str(run.path / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss_fine", "train/loss_coarse", "train/entropy_static", "train/entropy_dynamic"} <= set(tags)
    assert [e.step for e in events.Scalars("train/loss_fine")] == [2, 4]
