"""Loading pretrained weights through ``from_pretrained``: every failure is one clear error, never a random init.

``pretrained`` is a hub id (``org/name``) or a local ``save_pretrained`` directory. A value that looks
like a path (absolute, ``./``, ``../``, ``~``) is never sent to the hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

from fovea.core.errors import FoveaError

T = TypeVar("T")


def looks_like_path(pretrained: str) -> bool:
    return pretrained.startswith(("/", "./", "../", "~")) or Path(pretrained).expanduser().exists()


def load_pretrained(load: Callable[[str], T], pretrained: str, what: str, key: str) -> T:
    """``load(pretrained)`` (a ``from_pretrained``), with a message naming the fix when it fails.

    ``key`` is the config key that named ``pretrained`` (e.g. ``model.llm.pretrained``).
    """
    random_hint = f"or remove {key} and choose a `size` to train from random initialisation"
    if looks_like_path(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_dir():
            raise FoveaError(f"cannot load the {what}: no directory at {key} = '{pretrained}'. Point it at a "
                             f"save_pretrained() directory, {random_hint}.")
        pretrained = str(path)
    try:
        return load(pretrained)
    except (OSError, ValueError, ImportError) as exc:  # hub, network and file errors are OSError or ValueError
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
        fix = (f"check that the directory holds a save_pretrained() copy of the {what}"
               if looks_like_path(pretrained) else
               f"on a machine without the hub, download it once where there is internet "
               f"(`hf download {pretrained} --local-dir DIR`) and set {key} = \"DIR\"")
        raise FoveaError(f"cannot load the {what} from '{pretrained}' ({key}): {reason}. "
                         f"To fix: {fix}, {random_hint}.") from None
