"""``fovea audit``: the aligned run has no ❌, each deliberate misalignment is caught by the right check,
and a broken run directory is one clear error (exit 2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
import torch
from typer.testing import CliRunner

import fovea
from fovea.audit import audit_run
from fovea.audit.checks import (check_components, check_query, check_resources, check_results, check_training,
                                check_wiring)
from fovea.audit.spec import PACKAGED_SPECS, load_spec
from fovea.cli import app
from fovea.core import plugins
from fovea.core.config import read_toml
from fovea.core.errors import ConfigError
from fovea.core.model import FoveatedVLM
from fovea.core.profile_report import ProfileReport
from fovea.core.rundir import RunDir
from fovea.core.train import train
from fovea.plugins.encoders.deep import DeepEncoder
from tests.helpers import GOLDEN_PROFILE, QUICKSTART, ROOT, tiny_overrides

runner = CliRunner()


def train_tiny(tmp_path_factory, **extra):
    return train(fovea.load_config(QUICKSTART, tiny_overrides(tmp_path_factory.mktemp("audit"), **extra)))


def by_id(checks) -> dict:
    return {c.id: c for c in checks}


def audit(run_dir, *groups) -> dict:
    """The checks of the given groups (the misalignment tests need only the group that must catch it)."""
    return by_id(audit_run(run_dir, groups=list(groups))[1])


def copy_run(run, tmp_path, edit_config=None):
    """A copy of a run directory (without earlier audit files), its config.toml optionally edited."""
    target = tmp_path / run.path.name
    shutil.copytree(run.path, target, ignore=shutil.ignore_patterns("audit.*"))
    if edit_config is not None:
        data = read_toml(target / "config.toml")
        edit_config(data)
        (target / "config.toml").write_text(tomli_w.dumps(data), encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny quick-start run (4 steps, 8 training clips and 1 held out: exactly one epoch), trained once."""
    return train_tiny(tmp_path_factory, **{"data.num_clips": "9"})


@pytest.fixture(scope="module")
def aligned(tiny_run):
    return audit_run(tiny_run.path)[1]


# --------------------------------------------------------------------------- the aligned run


@pytest.mark.parametrize("extra", [{"training.max_steps": "1", "training.save_every": "1"},
                                   {"training.lr": "1e-12", "training.max_steps": "8", "training.save_every": "8"}],
                         ids=["one-step", "lr-near-zero"])
def test_a_run_that_has_not_learned_fails_on_held_out_clips(tmp_path_factory, extra):
    run = train_tiny(tmp_path_factory, **extra)
    checks = audit(run.path, check_results)
    learned = checks["results.learned"]
    assert learned.status == "fail" and learned.measurements["skill"] <= 0, learned.observed
    assert checks["results.trend"].status != "pass"            # a falling training loss cannot pass it
    assert json.loads(run.eval_file().read_text())["step"] == run.read_metrics()[-1]["step"]   # eval.json written


def test_aligned_run_has_no_failures(aligned):
    checks = by_id(aligned)
    # 4 steps learn nothing that a trivial predictor does not know: the one ❌ is that result, not the wiring
    assert [c.id for c in aligned if c.status == "fail"] == ["results.learned"]
    for key in ("components.encoder", "components.llm", "components.head", "components.bridges",
                "components.learned_queries", "components.vae", "wiring.pass1_static", "wiring.pass2_shift",
                "wiring.pass2_follows_pass1", "wiring.no_target_leak", "wiring.encode_once", "query.encoder",
                "query.patch_invariance", "query.cache_matches_reference", "query.sensitivity",
                "head.conditioning", "head.full_latent", "training.batch_size", "training.epochs"):
        assert checks[key].status == "pass", (key, checks[key].observed, checks[key].reason)
    # the quick start's deliberate deviations are ⚠️ with both values, never ❌
    assert checks["training.grad_accum"].status == "warn" and checks["training.grad_accum"].observed == "1 (spec 4)"
    assert checks["components.encoder.model"].status == "warn"          # random tiny DINOv3, not the spec's
    assert checks["resources.profile"].status == "info" and "fovea profile" in checks["resources.profile"].recommendation
    assert {c.section for c in aligned} == {"components", "wiring", "query", "head", "training", "results",
                                            "resources"}


def test_cli_writes_report_json_and_table(tiny_run, tmp_path):
    run_dir = copy_run(tiny_run, tmp_path)
    result = runner.invoke(app, ["audit", str(run_dir), "--strict"])
    assert result.exit_code == 1, result.output            # 4 steps: ❌ results.learned, and --strict says so
    assert "wiring.no_target_leak" in result.output and "1 ❌" in result.output
    assert runner.invoke(app, ["audit", str(run_dir)]).exit_code == 0
    report = json.loads((run_dir / "audit.json").read_text())
    assert report["counts"]["fail"] == 1 and report["run"] == str(run_dir.resolve())
    for check in report["checks"]:
        assert {"id", "status", "expected", "observed", "evidence", "section", "symbol"} <= set(check)
        assert check["status"] in ("pass", "warn", "fail", "info")
    markdown = (run_dir / "audit.md").read_text()
    for heading in ("## 1. COMPONENT TRAINING STATUS", "## 2. TWO-PASS WIRING", "## 3. QUERY MECHANISM",
                    "## 4. PREDICTION HEAD", "## 5. TRAINING CONFIGURATION", "## 6. RESULTS", "## 7. RESOURCES",
                    "ALIGNMENT SUMMARY", "RECOMMENDATIONS", "CONCLUSION"):
        assert heading in markdown
    assert "**STATUS: ✅ ALIGNED**" in markdown and "| **Two-pass wiring** | ✅ ALIGNED |" in markdown
    assert "| **Results** | ❌ NOT LEARNED |" in markdown and "**❌ Not learned:**" in markdown
    assert not list(run_dir.glob(".*.tmp"))   # atomic writes leave no temp files


# --------------------------------------------------------------------------- components


def test_frozen_encoder_is_a_failure(tmp_path_factory):
    run = train_tiny(tmp_path_factory, **{"model.encoder.trainable": "false"})
    checks = audit(run.path, check_components)
    assert checks["components.encoder"].status == "fail"
    assert "frozen" in checks["components.encoder"].reason
    assert checks["components.encoder"].measurements["frozen_but_reached"]
    assert checks["components.llm"].status == "pass"


def test_trainable_vae_is_a_failure(tiny_run, tmp_path, monkeypatch):
    from fovea.core import vae as vae_lib

    load_vae = vae_lib.load_vae
    monkeypatch.setattr(vae_lib, "load_vae", lambda *args, **kwargs: load_vae(*args, **kwargs).requires_grad_(True))
    run_dir = copy_run(tiny_run, tmp_path)
    checks = by_id(audit_run(run_dir)[1])
    assert checks["components.vae"].status == "fail" and "requires_grad" in checks["components.vae"].reason
    assert [c.id for c in checks.values() if c.status == "fail" and c.section != "results"] == ["components.vae"]
    result = runner.invoke(app, ["audit", str(run_dir), "--strict"])
    assert result.exit_code == 1 and "components.vae" in result.output


# --------------------------------------------------------------------------- query mechanism


def test_posthoc_encoder_is_simplified(tiny_run, tmp_path):
    # posthoc has deep's parameters (DINOv3 + the two query projections): the checkpoint loads into it
    checks = audit_with_encoder(tiny_run, tmp_path, "posthoc", check_query)
    assert checks["query.encoder"].status == "warn" and checks["query.encoder"].word == "SIMPLIFIED"
    assert "query.options" not in checks                                                   # deep-only
    reference = checks["query.cache_matches_reference"]                   # posthoc has no masked_forward: said so
    assert reference.status == "info" and reference.observed.startswith("not measured")
    assert not [c.id for c in checks.values() if c.status == "fail"]


class IgnoresQuery(DeepEncoder):
    """Deep encoder that reads every frame with the same (zero) query: the query is ignored."""

    def attend(self, queries, cache, *args, **kwargs):
        return super().attend(torch.zeros_like(queries), cache, *args, **kwargs)


class WritesQueryIntoCache(DeepEncoder):
    """Deep encoder whose query pass writes the query into the per-frame cache pass 2 reuses."""

    def attend(self, queries, cache, *args, **kwargs):
        cache["tokens"] = cache["tokens"] + self.query_input_proj(queries)[:, None]
        return super().attend(queries, cache, *args, **kwargs)


class UnmaskedReference(DeepEncoder):
    """Deep encoder whose reference forward has lost the asymmetric mask: patches attend to the query. The real
    ``masked_forward`` runs, its backbone adapter calling every block without the mask."""

    @property
    def vit(self):
        adapter = super().vit
        block = adapter.block
        adapter.block = lambda layer, x, mask, position: block(layer, x, None, position)
        return adapter


class EncoderPlugin:
    """Registers the broken encoders above for one test."""

    @fovea.hookimpl
    def fovea_register_encoders(self, register):
        register("ignores_query", IgnoresQuery)
        register("writes_cache", WritesQueryIntoCache)
        register("unmasked_reference", UnmaskedReference)


@pytest.fixture
def broken_encoders():
    plugin = EncoderPlugin()
    plugins.register_plugin(plugin, name="audit-broken-encoders")
    yield
    plugins.unregister_plugin(plugin)


def audit_with_encoder(run, tmp_path, name, *groups):
    """Audit a copy of the deep run whose config names another encoder with the same parameters."""
    def rename(data):
        data["model"]["encoder"]["name"] = name
        if name == "posthoc":   # deep's own options are not posthoc's
            for option in ("inject_from_layer", "query_self_attention"):
                data["model"]["encoder"].pop(option)
    return audit(copy_run(run, tmp_path, rename), *(groups or (check_query, check_wiring)))


def test_query_ignored_by_the_encoder_is_a_failure(tiny_run, tmp_path, broken_encoders):
    checks = audit_with_encoder(tiny_run, tmp_path, "ignores_query")
    assert checks["query.sensitivity"].status == "fail"
    assert checks["query.sensitivity"].measurements["correlation_mean"] == pytest.approx(1.0)
    assert checks["query.encoder"].status == "warn"                       # not the spec's encoder name
    assert checks["wiring.pass2_shift"].status == "pass"                 # the model still wires the queries


def test_query_written_into_the_cache_is_a_failure(tiny_run, tmp_path, broken_encoders):
    checks = audit_with_encoder(tiny_run, tmp_path, "writes_cache", check_query)
    assert checks["query.patch_invariance"].status == "fail"
    assert "changed the cached per-frame encoding" in checks["query.patch_invariance"].reason


def test_patches_attending_to_the_query_is_a_failure(tiny_run, tmp_path, broken_encoders):
    checks = audit_with_encoder(tiny_run, tmp_path, "unmasked_reference", check_query)
    assert checks["query.patch_invariance"].status == "fail"
    assert checks["query.patch_invariance"].measurements["tokens_query_dependence"] > 1e-3
    assert checks["query.cache_matches_reference"].status == "fail"


# --------------------------------------------------------------------------- two-pass wiring


def miswired_shift(pass2: str):
    """``FoveatedVLM.shift_queries`` miswired: ``"unshifted"`` reads frame t with q_t (made after seeing
    frame t); ``"static"`` reads every frame with q_static again."""
    if pass2 == "unshifted":
        return lambda self, queries: queries
    return lambda self, queries: self.q_static.expand_as(queries)


@pytest.mark.parametrize("pass2", ["unshifted", "static"])
def test_pass2_not_fed_by_shifted_pass1_queries_is_a_failure(tiny_run, monkeypatch, pass2):
    monkeypatch.setattr(FoveatedVLM, "shift_queries", miswired_shift(pass2))
    checks = audit(tiny_run.path, check_wiring)
    assert checks["wiring.pass2_shift"].status == "fail"
    assert checks["wiring.pass2_follows_pass1"].status == "fail"
    expected = "queries not shifted" if pass2 == "unshifted" else "not fed by pass 1"
    assert expected in checks["wiring.pass2_follows_pass1"].reason
    assert checks["wiring.pass1_static"].status == "pass" and checks["wiring.no_target_leak"].status == "pass"


def test_prediction_that_sees_its_target_is_a_failure(tiny_run, monkeypatch):
    read = FoveatedVLM._read_sequence
    # the state used for frame t has then seen z_t: the classic off-by-one
    monkeypatch.setattr(FoveatedVLM, "_read_sequence", lambda self, token, z, *rest: read(self, token, z, *rest).roll(-1, dims=1))
    checks = audit(tiny_run.path, check_wiring)
    leak = checks["wiring.no_target_leak"]
    assert leak.status == "fail" and "off by one" in leak.reason
    assert leak.measurements["pred_fine"] > 100 * leak.measurements["pred_fine_response"] * 1e-5


# --------------------------------------------------------------------------- training configuration


def test_changed_batch_and_accumulation_are_modified(tiny_run, tmp_path):
    def example_batch(data):   # the hand-written report's case: batch 6 × accumulation 2
        data["training"].update(batch_size=6, grad_accum=2)
    checks = audit(copy_run(tiny_run, tmp_path, example_batch), check_training)
    for key, observed in [("batch_size", "6 (spec 2)"), ("grad_accum", "2 (spec 4)"), ("effective_batch", "12 (spec 8)")]:
        assert checks[f"training.{key}"].status == "warn" and checks[f"training.{key}"].word == "MODIFIED"
        assert checks[f"training.{key}"].observed == observed
    assert checks["training.lr"].status == "warn" and checks["training.weight_decay"].status == "pass"


def test_several_epochs_are_flagged(tiny_run, tmp_path):
    def longer(data):
        data["training"]["max_steps"] = 40   # 40 steps x 2 clips over 8 clips
    checks = audit(copy_run(tiny_run, tmp_path, longer), check_training)
    epochs = checks["training.epochs"]
    assert epochs.status == "warn" and epochs.measurements["epochs"] == pytest.approx(10.0)
    assert "10.00 epochs" in epochs.observed and "fewer steps (≤ 4)" in epochs.recommendation


def test_skipped_intervals_are_left_out_of_the_result(tiny_run, tmp_path):
    run_dir = copy_run(tiny_run, tmp_path)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    lines[0].update(loss=None, loss_fine=None, loss_coarse=None, ratio=None)   # every step skipped (NaN/inf)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    checks = audit(run_dir, check_results)
    assert checks["results.finite"].status == "warn" and "1 of 2" in checks["results.finite"].observed
    assert checks["results.overfitting"].measurements["train_fine"] == pytest.approx(lines[1]["loss_fine"])


# --------------------------------------------------------------------------- resources


def write_profile(run_dir: Path, **changes) -> None:
    """The golden profile.json (a real CPU run) with ``changes`` ("memory.model.total_gb": 7.9 style keys),
    written through RunDir as `fovea profile` writes it."""
    data = json.loads((GOLDEN_PROFILE / "profile.json").read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        table = data
        for part in parents:
            table = table[part]
        table[key] = value
    RunDir(run_dir).write_profile(ProfileReport.model_validate(data))


def test_profile_json_is_read(tiny_run, tmp_path):
    run_dir = copy_run(tiny_run, tmp_path)
    write_profile(run_dir, **{"device": "NVIDIA RTX 4090", "gpu_util_mean": 2.0, "data_wait_share": 0.6,
                              "peak_memory_gb": 8.4, "batch.batch_size": 6, "memory.model.total_gb": 7.9})
    checks = audit(run_dir, check_resources)
    assert "resources.profile" not in checks
    assert checks["resources.gpu_util"].status == "fail" and checks["resources.gpu_util"].observed.startswith("2.0 %")
    assert checks["resources.data_wait"].status == "warn" and "60.0 %" in checks["resources.data_wait"].observed
    memory = checks["resources.peak_memory"]
    assert memory.status == "info"                       # tiny models at batch 6: the estimate does not apply
    assert "8.4 GB" in memory.observed and "7.9 GB" in memory.observed and "batch 6" in memory.observed


def test_cpu_profile_says_gpu_not_measured(tiny_run, tmp_path):
    run_dir = copy_run(tiny_run, tmp_path)
    write_profile(run_dir, data_wait_share=0.05)         # the golden profile ran on the CPU
    checks = audit(run_dir, check_resources)
    assert checks["resources.gpu_util"].status == "info" and "cpu" in checks["resources.gpu_util"].observed
    assert checks["resources.data_wait"].status == "pass" and "peak_memory" not in checks


def test_a_damaged_profile_is_one_error_naming_the_fix(tiny_run, tmp_path):
    run_dir = copy_run(tiny_run, tmp_path)
    (run_dir / "profile.json").write_text('{"device": "cpu"}')
    result = runner.invoke(app, ["audit", str(run_dir)])
    assert result.exit_code == 2 and result.output.count("error:") == 1 and "fovea profile" in result.output


# --------------------------------------------------------------------------- the spec


def test_packaged_spec_is_the_configs_spec():
    shipped = (PACKAGED_SPECS / "foveated_vlm.toml").read_text()
    assert shipped == (ROOT / "configs" / "spec" / "foveated_vlm.toml").read_text()
    spec = load_spec()
    assert spec.training.values["effective_batch"].value == 8 and spec.components["vae"].state == "frozen"
    assert spec.components["encoder"].state == "trainable" and spec.query.encoder == "deep"


def test_run_config_and_option_choose_the_spec(tiny_run, tmp_path):
    data = read_toml(ROOT / "configs" / "spec" / "foveated_vlm.toml")
    data["training"]["values"]["grad_accum"]["value"] = 1
    data["training"]["values"]["effective_batch"]["value"] = 2
    relaxed = tmp_path / "relaxed.toml"
    relaxed.write_text(tomli_w.dumps(data))

    def name_spec(config):
        config["run"]["spec"] = str(relaxed)
    run_dir = copy_run(tiny_run, tmp_path, name_spec)
    evidence, checks = audit_run(run_dir, groups=[check_training])
    assert evidence.spec.path == relaxed and by_id(checks)["training.grad_accum"].status == "pass"
    evidence, checks = audit_run(run_dir, ROOT / "configs" / "spec" / "foveated_vlm.toml", groups=[check_training])
    assert by_id(checks)["training.grad_accum"].status == "warn"        # --spec beats [run] spec


def test_a_training_value_is_read_at_the_config_key_its_spec_entry_names(tiny_run, tmp_path):
    """A new training value needs only its spec entry: the check reads the config key the entry names."""
    data = read_toml(ROOT / "configs" / "spec" / "foveated_vlm.toml")
    data["training"]["values"]["save_every"] = {"key": "training.save_every", "value": 4, "title": "Save every",
                                                "impact": "checkpoints at other steps"}
    data["training"]["values"]["lr"]["key"] = "training.weight_decay"     # the lr entry now reads weight_decay
    data["training"]["values"]["lr"]["value"] = 0.01
    spec = tmp_path / "keys.toml"
    spec.write_text(tomli_w.dumps(data))
    checks = by_id(audit_run(copy_run(tiny_run, tmp_path), spec, groups=[check_training])[1])
    assert checks["training.save_every"].status == "pass" and checks["training.save_every"].title == "Save every"
    assert checks["training.lr"].status == "pass"                          # the quick start's weight decay, 0.01
    data["training"]["values"]["save_every"]["value"] = 5
    spec.write_text(tomli_w.dumps(data))
    changed = by_id(audit_run(copy_run(tiny_run, tmp_path / "again"), spec, groups=[check_training])[1])
    assert changed["training.save_every"].status == "warn" and changed["training.save_every"].observed == "4 (spec 5)"
    assert changed["training.save_every"].reason == "checkpoints at other steps"


def test_bad_spec_is_a_config_error(tmp_path):
    data = read_toml(ROOT / "configs" / "spec" / "foveated_vlm.toml")
    data["training"]["max_epoch"] = 2
    bad = tmp_path / "bad.toml"
    bad.write_text(tomli_w.dumps(data))
    with pytest.raises(ConfigError, match="training.max_epoch: unknown key; did you mean 'max_epochs'"):
        load_spec(bad)
    del data["training"]["max_epoch"]
    del data["training"]["values"]["lr"]["key"]           # only the effective batch is computed, not read
    bad.write_text(tomli_w.dumps(data))
    with pytest.raises(ConfigError, match="values.lr: needs `key`"):
        load_spec(bad)
    with pytest.raises(ConfigError, match="spec file not found"):
        load_spec(tmp_path / "missing.toml")
    result = runner.invoke(app, ["audit", str(tmp_path), "--spec", str(bad)])
    assert result.exit_code == 2 and "no config.toml" in result.output   # the run directory is read first


# --------------------------------------------------------------------------- broken run directories


def damage(name: str, content: str | None):
    """Delete a file of a run (``content=None``) or overwrite it; ``model.safetensors`` is the newest checkpoint's."""
    def apply(run_dir):
        from fovea.core.rundir import RunDir

        path = RunDir(run_dir).checkpoint_file if name == "model.safetensors" else run_dir / name
        if content is None:
            path.unlink()
        elif name == "metrics.jsonl":   # a corrupt line in the middle (a torn last line is tolerated)
            lines = path.read_text().splitlines(keepends=True)
            path.write_text(content + "\n" + "".join(lines[1:]))
        else:
            path.write_text(content)
    return apply


@pytest.mark.parametrize(("broken", "message"), [
    (damage("config.toml", None), "is not a fovea run directory (no config.toml in it)"),
    (damage("config.toml", "[run\nname = "), "invalid TOML"),
    (damage("model.safetensors", None), "model.safetensors: missing"),
    (damage("model.safetensors", "not a checkpoint"), "not a readable safetensors checkpoint"),
    (damage("metrics.jsonl", '{"step": 2, "loss_fi'), "corrupt"),
    (damage("summary.json", None), "summary.json: missing; the run did not finish"),
    (damage("summary.json", "{"), "summary.json: not valid JSON"),
], ids=["no-config", "bad-config", "no-checkpoint", "bad-checkpoint", "bad-metrics", "no-summary", "bad-summary"])
def test_broken_run_directory_is_one_error_and_exit_2(tiny_run, tmp_path, broken, message):
    run_dir = copy_run(tiny_run, tmp_path)
    broken(run_dir)
    before = sorted(p.name for p in run_dir.iterdir())
    result = runner.invoke(app, ["audit", str(run_dir)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output
    assert "metrics.jsonl" in result.output if message == "corrupt" else True
    assert "Traceback" not in result.output
    assert sorted(p.name for p in run_dir.iterdir()) == before   # nothing written


def test_missing_run_directory_is_exit_2(tmp_path):
    result = runner.invoke(app, ["audit", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no run directory at" in result.output


# --------------------------------------------------------------------------- the quick start, for real


@pytest.mark.slow
def test_quickstart_learns_and_passes_the_audit_in_a_subprocess(tmp_path):
    """The README's quick start, then `fovea eval` and `fovea audit --strict`, as a new user runs them."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    trained = subprocess.run([sys.executable, "-m", "fovea", "run", str(QUICKSTART), "--set", "run.progress=false"],
                             cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900)
    assert trained.returncode == 0, trained.stderr
    evaluated = subprocess.run([sys.executable, "-m", "fovea", "eval", "runs/latest"], cwd=tmp_path,
                               capture_output=True, text=True, env=env, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    for name in ("coarse", "fine", "autoregressive", "mean_latent", "copy_previous", "skill", "improvement"):
        assert name in evaluated.stdout
    figures = json.loads((tmp_path / "runs" / "latest" / "eval.json").read_text())
    assert figures["skill"] >= 0.2 and figures["skill_ci95"][0] > 0, figures["skill"]   # issue 14's target
    audited = subprocess.run([sys.executable, "-m", "fovea", "audit", "runs/latest", "--strict"], cwd=tmp_path,
                             capture_output=True, text=True, env=env, timeout=300)
    assert audited.returncode == 0, audited.stdout + audited.stderr
    report = json.loads((tmp_path / "runs" / "latest" / "audit.json").read_text())
    assert report["counts"]["fail"] == 0 and report["sections"]["wiring"] == "pass"
    learned = next(c for c in report["checks"] if c["id"] == "results.learned")
    assert learned["status"] == "pass" and learned["measurements"]["skill"] == pytest.approx(figures["skill"])