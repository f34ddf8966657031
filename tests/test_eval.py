"""Held-out evaluation: the split never leaks, the baselines, the three modes, the intervals, `fovea eval`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import fovea
from fovea.cli import app
from fovea.core.evaluation import (BASELINES, MODES, bootstrap_draws, clip_losses, mean_ci, mean_latent,
                                   summarize_objective)
from fovea.core.rundir import RunDir
from fovea.core.split import ClipSet, clip_key, split_cache
from fovea.core.train import train
from fovea.plugins.objectives.next_latent import NextLatent
from tests.helpers import QUICKSTART, ROOT, tiny_overrides

runner = CliRunner()


class HandMadeCache:
    """A stand-in clip cache: given latents, black frames, clip sources ``clip-<i>``."""

    def __init__(self, latents: torch.Tensor):
        self.latents = latents                                                   # (N, T, C, h, w)
        self.root = Path("hand-made")

    def __len__(self) -> int:
        return len(self.latents)

    def read(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices)
        N, T = len(index), self.latents.shape[1]
        return {"frames": torch.zeros(N, T, 3, 16, 16, dtype=torch.uint8), "latents": self.latents[index],
                "index": index}

    def clip_info(self) -> list[dict]:
        return [{"source": f"clip-{i}", "frame_indices": [0, 1, 2]} for i in range(len(self))]


# --------------------------------------------------------------------------- the split


def test_split_holds_out_by_clip_identity_not_by_position():
    cache = HandMadeCache(torch.zeros(40, 3, 1, 1, 1))
    config = fovea.load_config(QUICKSTART, ["eval.val_clips=8"])
    split = split_cache(cache, config)
    assert len(split.val) == 8 and len(split.train) == 32
    assert not set(split.val.indices) & set(split.train.indices)
    keys = sorted(clip_key(info) for info in cache.clip_info())
    assert {clip_key(cache.clip_info()[i]) for i in split.val.indices} == set(keys[:8])
    fraction = split_cache(cache, fovea.load_config(QUICKSTART, ["eval.val_fraction=0.1"]))
    assert len(fraction.val) == 4 and set(fraction.val.indices) <= set(split.val.indices)   # the 4 smallest keys
    with pytest.raises(fovea.FoveaError, match="leaving none to train on"):
        split_cache(cache, fovea.load_config(QUICKSTART, ["eval.val_clips=40"]))


def read_log(log: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(log.parent.glob(log.name + ".*"))
            for line in path.read_text().splitlines()]


def assert_never_trained_on_held_out(run: RunDir, log: Path, num_clips: int) -> None:
    held_out = {clip["index"] for clip in json.loads(run.split_file.read_text())["val"]}
    reads = read_log(log)
    trained = {i for r in reads if r["loader"] for i in r["indices"]}
    evaluated = {i for r in reads if not r["loader"] for i in r["indices"]}
    assert held_out and trained, "the test must see training reads and held-out clips"
    assert not trained & held_out
    assert trained == set(range(num_clips)) - held_out        # every training clip was drawn, several epochs
    assert held_out <= evaluated                               # the evaluation read them, on the main thread


LEAK_SETTINGS = {"data.num_clips": "16", "eval.val_clips": "4", "eval.every": "3", "data.num_workers": "2",
                 "training.batch_size": "4", "training.max_steps": "6", "training.save_every": "3",
                 "run.log_every": "3"}


def test_no_held_out_clip_is_ever_in_a_training_batch_one_process_and_after_a_resume(tmp_path):
    log = tmp_path / "reads.jsonl"
    args = [a for item in tiny_overrides(tmp_path, **LEAK_SETTINGS) for a in ("--set", item)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def fovea_cli(*extra: str) -> None:
        done = subprocess.run([sys.executable, "-m", "tests.record_reads", str(log), *extra], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    fovea_cli("run", str(QUICKSTART), *args)
    run = RunDir.open(tmp_path / "runs" / "latest")
    fovea_cli("run", "--resume", str(run.path), "--set", "training.max_steps=12")
    assert run.read_metrics()[-1]["step"] == 12 and [m["step"] for m in run.read_metrics("val")] == [3, 6, 9, 12]
    assert_never_trained_on_held_out(run, log, 16)


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="needs torch.distributed with gloo")
def test_no_held_out_clip_is_ever_in_a_training_batch_under_torchrun(tmp_path):
    from tests.test_distributed import finish, torchrun

    log = tmp_path / "reads.jsonl"
    # 2 x 2 processes: the same global batch; FSDP2, so the held-out evaluations run on a sharded model too
    settings = {**LEAK_SETTINGS, "training.batch_size": "2", "distributed.strategy": "fsdp"}
    args = [a for item in tiny_overrides(tmp_path, **settings) for a in ("--set", item)]
    finish(torchrun("run", str(QUICKSTART), *args, entry=("-m", "tests.record_reads", str(log))))
    run = RunDir.open(tmp_path / "runs" / "latest")
    assert len(list(tmp_path.glob("reads.jsonl.*"))) == 2     # both ranks read their slices
    assert_never_trained_on_held_out(run, log, 16)


def test_a_resume_with_another_split_is_refused(tmp_path):
    config = fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{"data.num_clips": "12", "eval.val_clips": "2"}))
    run = train(config)
    changed = fovea.load_config(run.config_file, ["eval.val_clips=3", "training.max_steps=6"])
    with pytest.raises(fovea.FoveaError, match="held out other clips"):
        train(changed, resume=run)


# --------------------------------------------------------------------------- baselines, modes, statistics


def test_baselines_equal_hand_computed_values():
    # Two clips of three frames, one latent element: [1, 2, 3] and [3, 4, 5]; their mean latent is 3.
    latents = torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]]).view(2, 3, 1, 1, 1)
    clips = ClipSet(HandMadeCache(latents), [0, 1])
    mean = mean_latent(clips, batch_size=1)
    assert mean.item() == pytest.approx(3.0)

    class Blind(torch.nn.Module):   # a model that only carries the objective: no mode is evaluated
        objectives = {"next_latent": (NextLatent(NextLatent.Config()), 1.0)}

        def prepare(self, batch):
            return {}

    baselines = {"next_latent": NextLatent(NextLatent.Config()).baselines(clips, 1, None)}
    losses = clip_losses(Blind(), clips, baselines, modes=(), batch_size=1)["next_latent"]
    # mean_latent: clip 1 (4 + 1 + 0) / 3, clip 2 (0 + 1 + 4) / 3
    assert losses["mean_latent"].mean(1).tolist() == pytest.approx([5 / 3, 5 / 3])
    # copy_previous predicts [3, 1, 2] and [3, 3, 4]: clip 1 (4 + 1 + 1) / 3, clip 2 (0 + 1 + 1) / 3
    assert losses["copy_previous"].mean(1).tolist() == pytest.approx([2.0, 2 / 3])
    assert losses["copy_previous"].mean(0).tolist() == pytest.approx([2.0, 1.0, 1.0])   # per frame position

    fine = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    result = summarize_objective({**losses, "fine": fine, "coarse": 2 * fine})
    assert result["best_baseline"] == "copy_previous"
    assert result["baselines"]["copy_previous"]["loss"] == pytest.approx(4 / 3)
    assert result["skill"] == pytest.approx(1 - 0.5 / (4 / 3))
    assert result["improvement"]["value"] == pytest.approx(0.5)
    assert result["autoregressive_gap"] is None


def autoregressive_pred(model, frames, latents):
    """The deployed mode's latent predictions (B, T, C, h, w)."""
    return model.autoregressive(frames, latents)["next_latent"].detail["pred"]


def test_autoregressive_mode_equals_fine_when_queries_ignore_what_was_read(tiny_model, tiny_batch):
    frames, latents = tiny_batch
    with torch.no_grad():
        moving = autoregressive_pred(tiny_model, frames, latents)
        assert (moving - tiny_model(frames, latents).pred_fine).abs().max() > 1e-4   # queries follow the reads
        tiny_model.query_head.weight.zero_()          # every query is the bias: nothing read steers the next one
        fine = tiny_model(frames, latents).pred_fine
        assert torch.allclose(autoregressive_pred(tiny_model, frames, latents), fine, atol=1e-6)


def test_autoregressive_prediction_never_sees_its_target_frame(tiny_model, tiny_batch):
    frames, latents = tiny_batch
    changed = frames.clone()
    changed[:, 5:] = 255 - changed[:, 5:]
    with torch.no_grad():
        before, after = (autoregressive_pred(tiny_model, f, latents) for f in (frames, changed))
    assert torch.equal(before[:, :6], after[:, :6])       # predictions of frames 1..6 read frames < 6 only
    assert not torch.equal(before[:, 6:], after[:, 6:])


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    generator = torch.Generator().manual_seed(1)
    trials, n, true_mean = 400, 40, 2.0
    draws = bootstrap_draws(n)
    covered = 0
    for _ in range(trials):
        sample = true_mean + torch.randn(n, generator=generator)
        low, high = mean_ci(sample, draws)
        covered += low <= true_mean <= high
    assert 0.91 <= covered / trials <= 0.98, covered / trials


# --------------------------------------------------------------------------- during training, `fovea eval`


def test_periodic_evals_do_not_change_the_training_losses(tmp_path):
    from tests.test_train import GOLDEN_OVERRIDES

    def losses(root: Path, every: str) -> tuple[list[dict], list[dict]]:
        run = train(fovea.load_config(QUICKSTART, tiny_overrides(root, **GOLDEN_OVERRIDES, **{"eval.every": every})))
        keys = ("step", "loss", "loss_fine", "loss_coarse", "grad_norm")
        return [{k: m[k] for k in keys} for m in run.read_metrics()], run.read_metrics("val")

    often, val_often = losses(tmp_path / "often", "3")
    never, val_end = losses(tmp_path / "end", "100000")
    assert often == never                                                 # bit for bit
    assert [m["step"] for m in val_often] == [3, 6, 9, 12, 15, 18, 20] and [m["step"] for m in val_end] == [20]
    assert val_often[-1]["loss_fine"] == val_end[-1]["loss_fine"]


def test_fovea_eval_writes_every_figure_with_its_interval(tmp_path):
    run = train(fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{"data.num_clips": "14", "eval.val_clips": "4",
                                                                         "training.save_every": "2"})))
    result = runner.invoke(app, ["eval", str(run.path)])
    assert result.exit_code == 0, result.output
    for name in (*MODES, *BASELINES, "skill", "improvement", "autoregressive gap"):
        assert name in result.output
    data = json.loads(run.eval_file().read_text())
    assert data["split"] == "val" and data["clips"] == 4 and data["step"] == 4
    for group, names in (("modes", MODES), ("baselines", BASELINES)):
        for name in names:
            entry = data[group][name]
            assert entry["ci95"][0] <= entry["loss"] <= entry["ci95"][1]
            assert len(entry["per_frame"]) == 8
            assert entry["loss"] == pytest.approx(sum(entry["per_frame"]) / 8)
    best = min(data["baselines"][name]["loss"] for name in BASELINES)
    assert data["skill"] == pytest.approx(1 - data["modes"]["fine"]["loss"] / best)
    coarse, fine = data["modes"]["coarse"]["loss"], data["modes"]["fine"]["loss"]
    assert data["improvement"]["value"] == pytest.approx((coarse - fine) / coarse)
    assert data["autoregressive_gap"]["value"] == pytest.approx((data["modes"]["autoregressive"]["loss"] - fine) / fine)
    assert (run.path / "eval.md").is_file()
    # the held-out figures of the run's last step equal the ones logged during training
    assert run.read_metrics("val")[-1]["loss_fine"] == pytest.approx(fine, rel=1e-5)

    older = runner.invoke(app, ["eval", str(run.path), "--checkpoint", "2", "--split", "train", "--modes", "fine"])
    assert older.exit_code == 0, older.output
    train_figures = json.loads(run.eval_file("train").read_text())
    assert train_figures["step"] == 2 and set(train_figures["modes"]) == {"fine"} and train_figures["clips"] == 10
    assert json.loads(run.eval_file().read_text())["step"] == 4          # eval.json is left alone

    for args, message in ((["--checkpoint", "3"], "no complete checkpoint of step 3"),
                          (["--modes", "fine,sideways"], "unknown mode 'sideways'"),
                          (["--split", "test"], "choose val")):
        bad = runner.invoke(app, ["eval", str(run.path), *args])
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output


def test_fovea_eval_of_a_run_without_held_out_clips_says_what_to_do(tmp_path):
    run = train(fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{"eval.val_fraction": "0"})))
    assert run.read_metrics("val") == [] and json.loads(run.split_file.read_text())["num_val"] == 0
    result = runner.invoke(app, ["eval", str(run.path)])
    assert result.exit_code == 2 and "holds out no clips" in result.output
    assert runner.invoke(app, ["eval", str(run.path), "--split", "train"]).exit_code == 0


def test_autoregressive_mode_feeds_the_llm_one_new_token_per_frame(tiny_model, tiny_batch):
    """The KV cache is reused: every LLM call of the one-pass loop sees one new token, never the prefix again."""
    frames, latents = tiny_batch
    lengths = []
    hook = tiny_model.llm.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True)
    try:
        with torch.no_grad():
            tiny_model.autoregressive(frames, latents)
    finally:
        hook.remove()
    assert lengths == [1] * frames.shape[1]     # the mode token, then frames 1 .. T-1


# --------------------------------------------------------------------------- ablations


def test_ablations_rewire_pass_two_only(tiny_model, tiny_batch):
    from fovea.audit import probes
    from fovea.core.evaluation import ablated

    frames, latents = tiny_batch
    with torch.no_grad(), probes.record_attend_calls(tiny_model) as plain:
        tiny_model(frames, latents)
    for ablation in ("static_queries", "shuffle_queries"):
        with torch.no_grad(), ablated(tiny_model, ablation), probes.record_attend_calls(tiny_model) as calls:
            tiny_model(frames, latents)
        assert torch.equal(calls[0], plain[0])                                   # pass 1 untouched
        pass2, before = calls[1].view(2, 8, -1), plain[1].view(2, 8, -1)
        if ablation == "static_queries":
            assert torch.allclose(pass2, tiny_model.q_static.expand_as(pass2))
        else:                                                                    # clip 0 reads clip 1's queries
            assert torch.allclose(pass2[0], before[1]) and torch.allclose(pass2[1], before[0])
    assert "shift_queries" not in tiny_model.__dict__                           # restored
    with pytest.raises(fovea.FoveaError, match="choose from"):
        with ablated(tiny_model, "sideways"):
            pass


def test_fovea_eval_ablations_are_reported_on_the_same_clips(tmp_path):
    run = train(fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{"data.num_clips": "11", "eval.val_clips": "3"})))
    result = runner.invoke(app, ["eval", str(run.path), "--modes", "coarse,fine", "--ablate", "shuffle_queries",
                                 "--ablate", "static_queries", "--ablate", "blind"])
    assert result.exit_code == 0, result.output
    data = json.loads(run.eval_file().read_text())
    for name in ("shuffle_queries", "static_queries", "blind"):
        figures = data["ablations"][name]["next_latent"]
        assert name in result.output
        if name != "blind":   # pass 1 is not ablated: its loss is the unablated one
            assert figures["modes"]["coarse"]["loss"] == pytest.approx(data["modes"]["coarse"]["loss"], rel=1e-6)
        fine = figures["modes"]["fine"]["loss"]
        assert figures["fine_change"]["value"] == pytest.approx((fine - data["modes"]["fine"]["loss"])
                                                                / data["modes"]["fine"]["loss"], rel=1e-6)
    blind = data["ablations"]["blind"]["next_latent"]["modes"]["coarse"]["loss"]
    assert blind != pytest.approx(data["modes"]["coarse"]["loss"], rel=1e-6)     # the frames were replaced
    bad = runner.invoke(app, ["eval", str(run.path), "--ablate", "sideways"])
    assert bad.exit_code == 2 and "choose from" in bad.output
