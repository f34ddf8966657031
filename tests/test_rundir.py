"""The run directory's one owner: resolving `latest`, loading a checkpoint's weights, reading a run's first clips."""

from __future__ import annotations

import shutil

import pytest
import torch

import fovea
from fovea.core.checkpoint import load_weights
from fovea.core.errors import FoveaError
from fovea.core.rundata import first_clips
from fovea.core.rundir import NoRunError, RunDir, output_dir_of
from fovea.core.train import train
from tests.helpers import QUICKSTART, tiny_overrides


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("rundir")
    config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{"training.save_every": "2"}))
    return train(config), tmp_path


def test_latest_is_resolved_under_the_output_dir_the_overrides_name(trained, tmp_path):
    run, root = trained
    overrides = [f'run.output_dir="{root / "runs"}"']
    assert output_dir_of(None, overrides) == str(root / "runs")
    assert RunDir.resolve("latest", None, overrides).path == run.path
    assert RunDir.resolve("latest", QUICKSTART, overrides).path == run.path   # a config's output_dir, overridden
    assert RunDir.resolve(str(run.path)).path == run.path                     # a directory is itself
    with pytest.raises(NoRunError, match="does not exist"):
        RunDir.resolve("latest", None, [f'run.output_dir="{tmp_path / "empty"}"'])


def test_load_weights_reads_the_checkpoint_of_the_step_asked_for(trained):
    run, _ = trained
    assert [int(p.name[5:]) for p in run.checkpoints()] == [2, 4]
    config = fovea.load_config(run.config_file)
    at_2, at_4 = fovea.build_model(config), fovea.build_model(config)
    load_weights(at_2, run, step=2)
    load_weights(at_4, run)                                                    # the newest: step 4
    assert not torch.equal(at_2.q_static, at_4.q_static)                       # trained between the two saves
    with pytest.raises(FoveaError, match=r"no complete checkpoint of step 3 \(kept: 2, 4\)"):
        load_weights(at_2, run, step=3)


def test_first_clips_come_from_the_cache_and_from_the_source_alike(trained, tmp_path):
    run, _ = trained
    cached = first_clips(run, 3)
    assert "clip cache" in cached.origin and cached.latents is not None
    assert cached.frames.shape == (3, 8, 3, 64, 64) and cached.frames.dtype == torch.uint8

    moved = RunDir(tmp_path / run.path.name)
    shutil.copytree(run.path, moved.path)
    report = moved.read_json(moved.data_report_file)
    moved.write_json(moved.data_report_file.name, {**report, "cache": str(tmp_path / "gone")})
    decoded = first_clips(moved, 3)
    assert "source" in decoded.origin and decoded.latents is None
    assert torch.equal(decoded.frames, cached.frames) and decoded.captions == cached.captions
    with pytest.raises(FoveaError, match="fewer than 100 readable clips"):
        first_clips(moved, 100)
