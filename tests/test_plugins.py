"""Plugin registries: built-ins, throwaway plugins, entry-point plugins, and broken ones."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys

import pytest
from pydantic import BaseModel
from torch import nn

import fovea
from fovea.core import plugins
from fovea.core.errors import PluginError
from fovea.core.rundir import RunDir
from tests.helpers import QUICKSTART, ROOT, tiny_overrides


@pytest.fixture(autouse=True)
def fresh_registry():
    plugins.reset_plugins()
    yield
    plugins.reset_plugins()


def test_builtins_register_through_the_hooks():
    found = {(p.kind, p.name): p for p in plugins.all_parts()}
    for key in [("encoder", "posthoc"), ("head", "film"), ("source", "synthetic")]:
        assert found[key].source == "built-in"
        assert found[key].description
    assert plugins.get_plugin_manager() is plugins.get_plugin_manager()   # idempotent


class Throwaway:
    """A plugin object registering one encoder, added and removed at run time."""

    class Encoder(nn.Module):
        """Throwaway encoder for tests."""

        class Config(BaseModel):
            pass

        def encode(self, frames):
            return frames

        def attend(self, queries, cache, return_attention=False):
            return queries

    @fovea.hookimpl
    def fovea_register_encoders(self, register):
        register("throwaway", self.Encoder)


def test_an_encoder_without_its_contract_is_refused_naming_the_plugin():
    class Half:
        class Encoder(nn.Module):
            class Config(BaseModel):
                pass

            def encode(self, frames):
                return frames

        @fovea.hookimpl
        def fovea_register_encoders(self, register):
            register("half", self.Encoder)

    plugin = Half()
    plugins.register_plugin(plugin, name="half-plugin")
    try:
        with pytest.raises(PluginError, match="encoder 'half' from half-plugin: .* lacks attend of the encoder contract"):
            plugins.get_parts("encoder")
    finally:
        plugins.unregister_plugin(plugin)


def test_throwaway_plugin_registers_and_unregisters():
    plugin = Throwaway()
    plugins.register_plugin(plugin, name="throwaway-plugin")
    try:
        part = plugins.get_part("encoder", "throwaway")
        assert part.cls is Throwaway.Encoder and part.source == "throwaway-plugin"
        assert part.description == "Throwaway encoder for tests."
    finally:
        plugins.unregister_plugin(plugin)
    with pytest.raises(PluginError, match="unknown encoder 'throwaway'; registered encoders: .*posthoc"):
        plugins.get_part("encoder", "throwaway")


def test_duplicate_name_names_both_sources():
    class Clash:
        @fovea.hookimpl
        def fovea_register_heads(self, register):
            register("film", Throwaway.Encoder)

    plugins.register_plugin(Clash(), name="clash")
    with pytest.raises(PluginError, match="head 'film' is registered twice \\(by built-in and by clash\\)"):
        plugins.get_parts("head")


def test_part_without_config_is_rejected():
    class NoConfig:
        @fovea.hookimpl
        def fovea_register_sources(self, register):
            register("bare", object)

    plugins.register_plugin(NoConfig(), name="no-config")
    with pytest.raises(PluginError, match="clip source 'bare' from no-config: object needs a nested pydantic `Config`"):
        plugins.get_parts("source")


class OldStyle:
    """A plugin written before the kind was called ``source``: it registers through ``fovea_register_loaders``."""

    class Frames:
        """Old-style clip source for tests."""

        class Config(BaseModel):
            clips: int = 2

        def __init__(self, config, *, num_frames, frame_size, seed):
            self.config, self.shape = config, (num_frames, 3, frame_size, frame_size)

        def __len__(self):
            return self.config.clips

        def __getitem__(self, index):
            import torch

            from fovea.core.data import Clip

            return Clip(torch.full(self.shape, index, dtype=torch.uint8), f"old-style clip {index}",
                        list(range(self.shape[0])))

    @fovea.hookimpl
    def fovea_register_loaders(self, register):
        register("old_style", self.Frames)


def test_a_plugin_on_the_older_loaders_hook_still_registers_a_clip_source(tmp_path):
    from fovea.core.config import load_config
    from fovea.core.data import build_source, check_clip

    plugin = OldStyle()
    plugins.register_plugin(plugin, name="old-plugin")
    try:
        part = plugins.get_part("source", "old_style")
        assert part.cls is OldStyle.Frames and part.kind == "source" and part.source == "old-plugin"
        assert plugins.get_parts("loader") is plugins.get_parts("source")            # the older kind name
        assert ("source", "old_style") in {(p.kind, p.name) for p in plugins.all_parts()}
        config = load_config(None, ["data.name=old_style", "data.clips=3", "data.num_frames=2",
                                          "data.frame_size=16"])
        source = build_source(config)
        clip = check_clip(source[2], config)                                   # the clip source contract holds
        assert len(source) == 3 and clip.frames.shape == (2, 3, 16, 16) and int(clip.frames.max()) == 2
    finally:
        plugins.unregister_plugin(plugin)
    with pytest.raises(PluginError, match="unknown clip source 'old_style'; registered clip sources: .*synthetic"):
        plugins.get_part("loader", "old_style")


def test_an_unknown_part_kind_is_one_error_naming_the_kinds():
    with pytest.raises(PluginError, match="unknown part kind 'loaders'; the kinds are encoder, head, source"):
        plugins.get_parts("loaders")


def fake_entry_points(*points):
    def entry_points(group):
        return [ep for ep in points if ep.group == group]
    return entry_points


def test_broken_entry_point_plugin_is_reported_and_skipped(monkeypatch, capsys):
    broken = importlib.metadata.EntryPoint(name="broken", value="fovea_no_such_module_xyz", group="fovea")
    monkeypatch.setattr(plugins.importlib.metadata, "entry_points", fake_entry_points(broken))
    monkeypatch.delenv("FOVEA_PLUGINS", raising=False)
    monkeypatch.delenv("FOVEA_LOAD_PLUGINS", raising=False)
    assert "posthoc" in plugins.get_parts("encoder")                     # the rest of fovea works
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: plugin 'broken' (broken) failed to import and is skipped")
    assert "ModuleNotFoundError" in err and "FOVEA_PLUGINS=<names to load>" in err
    assert set(plugins.failed_plugins()) == {"broken"}

    # FOVEA_PLUGINS (or its older name FOVEA_LOAD_PLUGINS) leaves it out: nothing to report
    for variable in ("FOVEA_PLUGINS", "FOVEA_LOAD_PLUGINS"):
        plugins.reset_plugins()
        monkeypatch.setenv(variable, "")
        assert "posthoc" in plugins.get_parts("encoder")
        assert capsys.readouterr().err == "" and plugins.failed_plugins() == {}
        monkeypatch.delenv(variable)


def test_cli_works_with_a_broken_plugin_installed(monkeypatch):
    from typer.testing import CliRunner

    from fovea.cli import app

    broken = importlib.metadata.EntryPoint(name="broken", value="fovea_no_such_module_xyz", group="fovea")
    monkeypatch.setattr(plugins.importlib.metadata, "entry_points", fake_entry_points(broken))
    monkeypatch.delenv("FOVEA_PLUGINS", raising=False)
    monkeypatch.delenv("FOVEA_LOAD_PLUGINS", raising=False)
    result = CliRunner().invoke(app, ["config", "validate", str(QUICKSTART)])
    assert result.exit_code == 0 and "ok" in result.output
    assert "warning: plugin 'broken'" in result.output and "Traceback" not in result.output


def test_plugin_whose_hook_fails_is_reported_and_skipped(capsys):
    class Failing:
        @fovea.hookimpl
        def fovea_register_heads(self, register):
            raise RuntimeError("boom")

    plugins.register_plugin(Failing(), name="failing")
    assert "film" in plugins.get_parts("head")
    assert "warning: plugin 'failing' failed in fovea_register_heads: RuntimeError: boom" in capsys.readouterr().err


@pytest.fixture(scope="module")
def installed_example_plugin(tmp_path_factory):
    """pip-install tests/assets/fovea-example-plugin into a private directory; yield that directory."""
    target, source = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("plugin") / "src"
    shutil.copytree(ROOT / "tests" / "assets" / "fovea-example-plugin", source)   # builds leave files beside it
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True, capture_output=True)
    return target


def run_fovea(args, pythonpath, **env):
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pythonpath), str(ROOT)]), **env}
    return subprocess.run([sys.executable, "-m", "fovea", *args], capture_output=True, text=True, env=environment)


def test_entry_point_plugin_is_discovered_and_usable_by_name(installed_example_plugin, tmp_path):
    listed = run_fovea(["plugins", "--json"], installed_example_plugin)
    assert listed.returncode == 0, listed.stderr
    parts = {(p["kind"], p["name"]): p for p in json.loads(listed.stdout)}
    assert parts[("head", "additive")]["source"] == "fovea-example-plugin 0.1.0"

    # the quick-start file holds the film head's options; this head has options of its own
    config = tmp_path / "additive.toml"
    config.write_text(QUICKSTART.read_text().replace("channels = [16, 32, 64]\nfilm_hidden = 64\n", ""))
    overrides = tiny_overrides(tmp_path, **{"model.head.name": "additive", "model.head.kernel_size": "1"})
    args = ["run", str(config)] + [item for o in overrides for item in ("--set", o)]
    trained = run_fovea(args, installed_example_plugin)
    assert trained.returncode == 0, trained.stderr
    assert RunDir.open(tmp_path / "runs" / "latest").checkpoint_file.is_file()

    hidden = run_fovea(["plugins", "--json"], installed_example_plugin, FOVEA_PLUGINS="")
    assert "additive" not in {p["name"] for p in json.loads(hidden.stdout)}
