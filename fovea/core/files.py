"""Files shared by the clip cache, checkpoints and clip sources: durable writes (fsync, write-then-rename),
SHA-256 of a file, and telling a URL from a local path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO, Callable


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
