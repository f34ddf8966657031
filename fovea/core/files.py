"""Files shared by the clip cache, checkpoints, clip sources and the run and sweep directories: durable writes
(fsync, write-then-rename), SHA-256 of a file, telling a URL from a local path, time-stamped directories and
the `latest` symlink."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, ClassVar

from fovea.core.errors import FoveaError

LATEST = "latest"   # <root>/latest: a relative symlink to the newest run (or sweep) under root


def write_synced(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Create ``path``, let ``write`` fill it, and fsync it."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's entries to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file, fsync, rename: ``path`` is complete or absent, never half-written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_synced(tmp, lambda f: f.write(data))
    os.replace(tmp, path)
    fsync_path(path.parent)


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, hex (hashlib releases the GIL: other threads run meanwhile)."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def is_url(location: str) -> bool:
    """True for ``scheme://…`` (http, https, s3, gs, …), False for a local path."""
    scheme, sep, _ = str(location).partition("://")
    return bool(sep) and scheme.isalnum() and len(scheme) > 1


def new_stamped_dir(root: Path, name: str, what: str, setting: str) -> Path:
    """A new directory ``root/<YYYYmmdd-HHMMSS>-<name>`` (``-1``, ``-2``… when taken); an OSError is a
    ``FoveaError`` naming ``what`` it is and ``setting``, the option that chose ``root``."""
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
    path, n = root / stem, 1
    while path.exists():
        path, n = root / f"{stem}-{n}", n + 1
    try:
        path.mkdir(parents=True)
    except OSError as exc:
        raise FoveaError(f"cannot create the {what} {path} ({exc.strerror}); check {setting}") from None
    return path


def check_latest(root: Path, what: str) -> None:
    """``root/latest`` is absent or a symlink, else a ``FoveaError`` (``what``: new runs, sweeps)."""
    latest = root / LATEST
    if latest.exists() and not latest.is_symlink():
        raise FoveaError(f"{latest} exists and is not a symlink; move it away so fovea can point it at {what}")


def point_latest(path: Path, what: str) -> None:
    """Point ``<parent>/latest`` at ``path`` atomically (a relative symlink: the parent can move)."""
    check_latest(path.parent, what)
    latest = path.parent / LATEST
    tmp = path.parent / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(path.name)
    os.replace(tmp, latest)


@dataclass(frozen=True)
class OwnedDir:
    """A directory whose layout one class owns (``RunDir``, ``SweepDir``): its path and its ``latest`` link."""

    path: Path
    kind: ClassVar[str]
    """What ``<parent>/latest`` points at, as messages say it (``new runs``, ``sweeps``)."""

    def mark_latest(self) -> None:
        """Point ``<parent>/latest`` at this directory (atomically: it always names a complete one)."""
        point_latest(self.path, self.kind)
