"""Loading pretrained weights, or building a seeded random model of a named size: never silently one for the other."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

from fovea.core.errors import FoveaError

T = TypeVar("T")


def load_pretrained(load: Callable[[str], T], pretrained: str, what: str, key: str) -> T:
    """``load(pretrained)`` (a ``from_pretrained``), turning every way it can fail into one clear error.

    ``key`` is the config key that named ``pretrained`` (e.g. ``model.llm.pretrained``).
    """
    try:
        return load(pretrained)
    except (OSError, ValueError, ImportError) as exc:  # hub/network/missing-file errors are OSError or ValueError
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = "local directory" if Path(pretrained).expanduser().exists() else "hub id or directory"
        raise FoveaError(
            f"cannot load the {what} from {where} '{pretrained}': {reason}. "
            f"Set {key} to a local directory holding a save_pretrained() copy (download it once where "
            f"there is internet: `hf download {pretrained} --local-dir DIR`), or remove {key} and choose a "
            f"`size` to train from random initialisation."
        ) from None
