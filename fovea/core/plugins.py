"""The plugin manager: built-in parts and third-party ``fovea`` entry points, one registry.

Built-ins are ordinary plugins (``DEFAULT_PLUGINS``) loaded through the same hooks as entry-point
plugins (llm's ``register_models`` pattern). ``FOVEA_PLUGINS`` restricts which entry-point plugins
load: a comma-separated list of entry-point names, empty for none (like llm's ``LLM_LOAD_PLUGINS``;
``FOVEA_LOAD_PLUGINS`` is accepted as an older name). An entry-point plugin that fails to import is
reported on stderr and skipped; the rest of fovea works. Loading is idempotent; ``reset_plugins()``
forgets everything (tests).

Part kinds: ``encoder``, ``head``, ``source`` (a clip source: what ``[data] name`` names), ``objective``
and ``tracker``. Every part is checked against its kind's contract (``fovea.core.contracts``) when it
registers. Older names still work: the hook ``fovea_register_loaders`` registers clip sources, as
``fovea_register_sources`` does, and the kind ``"loader"`` is read as ``"source"`` (``get_parts``,
``get_part``). "Loader" alone now means the batch loader (``fovea.core.loader``).

This module sits above ``fovea.core.contracts`` and ``fovea.core.hookspecs`` and imports nothing else of
fovea's but its errors; the builders (``fovea.core.data``, ``objectives``, ``trackers``) sit above it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from dataclasses import dataclass
from typing import Any

import pluggy

from fovea.core import hookspecs
from fovea.core.contracts import CONTRACTS
from fovea.core.errors import PluginError

DEFAULT_PLUGINS: tuple[str, ...] = (
    "fovea.plugins.encoders.deep",
    "fovea.plugins.encoders.posthoc",
    "fovea.plugins.encoders.baselines",
    "fovea.plugins.heads.film",
    "fovea.plugins.data.synthetic",
    "fovea.plugins.data.videos",
    "fovea.plugins.objectives.next_latent",
    "fovea.plugins.objectives.caption",
    "fovea.plugins.trackers.tensorboard",
    "fovea.plugins.trackers.wandb",
    "fovea.plugins.trackers.mlflow",
)
ENTRY_POINT_GROUP = "fovea"
LOAD_PLUGINS_ENV = "FOVEA_PLUGINS"
LOAD_PLUGINS_ENV_ALIASES = ("FOVEA_LOAD_PLUGINS",)   # accepted, not documented

# kind -> the hook that registers parts of that kind
HOOKS: dict[str, str] = {
    "encoder": "fovea_register_encoders",
    "head": "fovea_register_heads",
    "source": "fovea_register_sources",
    "objective": "fovea_register_objectives",
    "tracker": "fovea_register_trackers",
}
# older hook -> the kind its parts register as (plugins written before the rename keep working)
HOOK_ALIASES: dict[str, str] = {"fovea_register_loaders": "source"}
# older kind name -> the kind (what a caller may still pass to get_parts / get_part)
KIND_ALIASES: dict[str, str] = {"loader": "source"}
# kind -> how messages name it
KIND_LABELS: dict[str, str] = {"source": "clip source"}


def kind_of(name: str) -> str:
    """The part kind ``name`` means: itself, or the kind an older name stands for (``"loader"`` -> ``"source"``)."""
    kind = KIND_ALIASES.get(name, name)
    if kind not in HOOKS:
        raise PluginError(f"unknown part kind '{name}'; the kinds are {', '.join(HOOKS)}")
    return kind


def hooks_of(kind: str) -> list[str]:
    """The hooks whose parts register as ``kind``: its own, then any older name of it."""
    return [HOOKS[kind], *(hook for hook, aliased in HOOK_ALIASES.items() if aliased == kind)]


def label(kind: str) -> str:
    """How messages name a kind: ``"clip source"`` for ``source``, else the kind itself."""
    return KIND_LABELS.get(kind, kind)


def missing_members(cls: type, protocol: type) -> list[str]:
    """The methods ``protocol`` declares that ``cls`` lacks (attributes set in ``__init__`` are checked at build)."""
    declared = [name for name, value in vars(protocol).items()
                if (callable(value) or isinstance(value, (classmethod, staticmethod)))
                and (not name.startswith("_") or name in ("__len__", "__getitem__"))]
    return sorted(name for name in declared if not callable(getattr(cls, name, None)))


@dataclass(frozen=True)
class Part:
    """One registered part: what it is, where it came from, and the class that builds it."""

    kind: str
    name: str
    cls: type
    source: str  # where it comes from (``fovea plugins``' SOURCE): "built-in", "<distribution> <version>" or the plugin's name
    description: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "source": self.source,
                "description": self.description, "class": f"{self.cls.__module__}.{self.cls.__qualname__}"}


_manager: pluggy.PluginManager | None = None
_parts: dict[str, dict[str, Part]] | None = None
_origins: dict[int, str] = {}  # id(entry-point plugin) -> "<distribution> <version>"
_failed: dict[str, str] = {}   # entry-point name -> why it could not be loaded


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager with built-ins and allowed entry points loaded."""
    global _manager
    if _manager is None:
        manager = pluggy.PluginManager(hookspecs.PROJECT)
        manager.add_hookspecs(hookspecs)
        for module_name in DEFAULT_PLUGINS:
            manager.register(importlib.import_module(module_name), name=module_name)
        _load_entry_points(manager)
        _manager = manager
    return _manager


def allowed_plugins_setting() -> str | None:
    """The value of ``FOVEA_PLUGINS`` (or its older name), ``None`` when neither is set."""
    for name in (LOAD_PLUGINS_ENV, *LOAD_PLUGINS_ENV_ALIASES):
        if name in os.environ:
            return os.environ[name]
    return None


def _load_entry_points(manager: pluggy.PluginManager) -> None:
    allowed = allowed_plugins_setting()
    allowed_names = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed_names is not None and ep.name not in allowed_names:
            continue
        if manager.get_plugin(ep.name) is not None or manager.is_blocked(ep.name):
            continue
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else ep.name
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party plugin must not break fovea, nor look like its bug
            _failed[ep.name] = f"{type(exc).__name__}: {exc}"
            print(f"warning: plugin '{ep.name}' ({dist}) failed to import and is skipped: {_failed[ep.name]}. "
                  f"Fix or uninstall it, or leave it out with {LOAD_PLUGINS_ENV}=<names to load>.", file=sys.stderr)
            continue
        manager.register(plugin, name=ep.name)
        _origins[id(plugin)] = dist



def _collect_parts(manager: pluggy.PluginManager) -> dict[str, dict[str, Part]]:
    from pydantic import BaseModel

    parts: dict[str, dict[str, Part]] = {kind: {} for kind in HOOKS}
    for kind, hook_name in [(kind, hook) for kind in HOOKS for hook in hooks_of(kind)]:
        # Call each implementation on its own so every part knows which plugin registered it.
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            origin = _origins.get(id(impl.plugin), "built-in" if impl.plugin_name in DEFAULT_PLUGINS
                                  else impl.plugin_name)

            def register(name: str, cls: type, *, _kind=kind, _origin=origin) -> None:
                what = label(_kind)
                if not isinstance(name, str) or not name:
                    raise PluginError(f"{_origin}: a {what} must be registered under a non-empty name")
                if name in parts[_kind]:
                    other = parts[_kind][name].source
                    raise PluginError(
                        f"{what} '{name}' is registered twice (by {other} and by {_origin}); "
                        f"rename one, or leave one plugin out with {LOAD_PLUGINS_ENV}."
                    )
                config_cls = getattr(cls, "Config", None)
                if not (isinstance(config_cls, type) and issubclass(config_cls, BaseModel)):
                    raise PluginError(
                        f"{what} '{name}' from {_origin}: {cls.__qualname__} needs a nested pydantic "
                        f"`Config` model holding its options (see README, 'Writing a plugin')."
                    )
                protocol = CONTRACTS.get(_kind)
                missing = missing_members(cls, protocol) if protocol is not None else []
                if missing:
                    raise PluginError(f"{what} '{name}' from {_origin}: {cls.__qualname__} lacks "
                                      f"{', '.join(missing)} of the {what} contract "
                                      f"({protocol.__module__}.{protocol.__qualname__})")
                doc = (cls.__doc__ or "").strip().splitlines()
                parts[_kind][name] = Part(_kind, name, cls, _origin, doc[0] if doc else "")

            try:
                impl.function(**{arg: register for arg in impl.argnames})
            except PluginError:
                raise
            except Exception as exc:  # a plugin's own bug: report it and go on without the rest of its parts
                print(f"warning: plugin '{origin}' failed in {hook_name}: {type(exc).__name__}: {exc}; its other "
                      f"{label(kind)}s are skipped. Fix or uninstall it, or leave it out with {LOAD_PLUGINS_ENV}.",
                      file=sys.stderr)
    return parts


def failed_plugins() -> dict[str, str]:
    """Entry-point plugins that failed to import (and were skipped), with the error."""
    get_plugin_manager()
    return dict(_failed)


def get_parts(kind: str) -> dict[str, Part]:
    """All registered parts of one kind ("encoder", "head", "source", "objective" or "tracker"), by name."""
    global _parts
    if _parts is None:
        _parts = _collect_parts(get_plugin_manager())
    return _parts[kind_of(kind)]


def get_part(kind: str, name: str) -> Part:
    """The part registered as ``name``; an unknown name is an error listing the known ones."""
    parts, what = get_parts(kind), label(kind_of(kind))
    if name not in parts:
        known = ", ".join(sorted(parts)) or "none"
        raise PluginError(f"unknown {what} '{name}'; registered {what}s: {known}. "
                          f"`fovea plugins` lists every part and where it comes from.")
    return parts[name]


def all_parts() -> list[Part]:
    """Every registered part, sorted by kind then name."""
    return [part for kind in HOOKS for _, part in sorted(get_parts(kind).items())]


def register_plugin(plugin: Any, name: str | None = None) -> None:
    """Add a plugin object (module or class instance with hook implementations) at run time."""
    global _parts
    get_plugin_manager().register(plugin, name=name)
    _parts = None


def unregister_plugin(plugin: Any) -> None:
    """Remove a plugin added with ``register_plugin``."""
    global _parts
    get_plugin_manager().unregister(plugin)
    _parts = None


def reset_plugins() -> None:
    """Forget the manager and every registration; the next lookup loads plugins afresh."""
    global _manager, _parts
    _manager, _parts = None, None
    _origins.clear()
    _failed.clear()
