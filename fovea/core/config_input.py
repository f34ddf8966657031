"""The raw input of a config, before validation: a TOML file's tables and ``--set KEY=VALUE`` overrides.

``fovea.core.config.load_config`` reads the file here, applies the overrides on top (the precedence:
``--set`` > file > defaults) and validates the nested dicts against the schema.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from fovea.core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def read_toml(path: Path) -> dict[str, Any]:
    """The tables of a TOML file; a missing, non-UTF-8 or invalid file is a ``ConfigError`` saying which."""
    if not path.is_file():
        hint = " (it is a directory)" if path.is_dir() else ""
        raise ConfigError(f"config file not found: {path}{hint}. Pass a TOML file, e.g. configs/quickstart.toml.")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"training.batch_size=4"`` -> ``(["training", "batch_size"], 4)``; values parse as TOML, else str."""
    key, sep, raw = item.partition("=")
    keys = [k.strip() for k in key.split(".")]
    if not sep or not all(keys):
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. --set training.batch_size=4")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word such as vits16 is a string
    return keys, value


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set ``item``'s (``KEY=VALUE``) dotted key in the nested tables ``data``, making tables on the way."""
    keys, value = parse_override(item)
    table = data
    for depth, key in enumerate(keys[:-1]):
        table = table.setdefault(key, {})
        if not isinstance(table, dict):
            raise ConfigError(f"--set {item!r}: {'.'.join(keys[:depth + 1])} is a value, not a table")
    table[keys[-1]] = value
