"""The clip cache on disk: its file names, its key, the self-checked records, the one-writer lock.

Everything the other cache modules agree on: where a shard and its record live (``shard_file``,
``record_file``), what decides a cache's directory (``cache_key``, ``cache_name``), how the manifest and
each shard's record carry a SHA-256 of their own content (``checked_json``), how a shard and the saved VAE
are checked against them (``check_shard``, ``check_vae``), and ``writer_lock``. Above it: ``reader``,
``stream``, ``verify``, ``build`` (the package's docstring has the whole format).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

from fovea.core.config import FoveaConfig
from fovea.core.errors import FoveaError
from fovea.core.files import is_url, sha256_file

# 2: checksums of every shard and of the saved VAE; 3: captions in clip_info. An older cache is rebuilt beside it
# (the version is part of the cache key).
CACHE_VERSION = 3
MANIFEST = "manifest.json"
LOCK = ".lock"
VAE_CHECKSUMS = "checksums.json"
REPAIR_FIX = "run `fovea precompute --repair CONFIG` to decode its clips again"



def cache_key(config: FoveaConfig) -> dict[str, Any]:
    """Everything that decides the cache's content; a change of any of it makes a new cache.

    The storage format (``data.codec``, ``jpeg_quality``, ``latent_dtype``) is in the key only when it is not
    the default ``raw`` / ``float32``, so the caches written before those options existed keep their key.
    """
    vae, data = config.model.vae, config.data
    key = {
        "version": CACHE_VERSION,
        "source": config.data.name,
        "options": config.data.options.model_dump(mode="json"),
        "num_frames": config.data.num_frames,
        "frame_size": config.data.frame_size,
        "seed": config.run.seed,
        "vae": {"pretrained": vae.pretrained} if vae.pretrained else {"size": vae.size, "init": vae.init, "seed": config.run.seed},
    }
    if data.codec != "raw":
        key["codec"] = {"name": data.codec, "quality": data.jpeg_quality}
    if data.latent_dtype != "float32":
        key["latent_dtype"] = data.latent_dtype
    return key


def storage_format(config: FoveaConfig) -> dict[str, Any]:
    """How the shards store frames and latents; the manifest records it (absent in older manifests: raw, float32)."""
    data = config.data
    return {"codec": data.codec, "jpeg_quality": data.jpeg_quality if data.codec == "jpeg" else None,
            "latent_dtype": data.latent_dtype}


def cache_name(config: FoveaConfig) -> str:
    """``<source>-<12 hex digits of the key>``: the cache's directory name, locally and under a URL."""
    digest = hashlib.sha256(json.dumps(cache_key(config), sort_keys=True).encode()).hexdigest()[:12]
    return f"{config.data.name}-{digest}"


def cache_path(config: FoveaConfig) -> Path:
    """The local directory of the cache (``data.cache_dir`` must be a local directory for writing)."""
    if is_url(config.data.cache_dir):
        raise FoveaError(f"data.cache_dir = '{config.data.cache_dir}' is a URL: fovea reads a cache from a URL "
                         f"but writes, verifies and repairs only a local one; run `fovea precompute` with a local "
                         f"data.cache_dir, then upload the directory {cache_name(config)}/ under the URL")
    return Path(config.data.cache_dir) / cache_name(config)


def shard_file(root: Path, shard: int) -> Path:
    return root / f"shard-{shard:05d}.safetensors"


def record_file(root: Path, shard: int) -> Path:
    """The shard's record: its size, SHA-256, clips and skipped items, written right after it."""
    return root / f"shard-{shard:05d}.json"


class DamagedCache(FoveaError):
    """A file of the cache is missing, cut short, unreadable or does not match its checksum."""

    def __init__(self, root: Path, problems: list[str], fix: str = REPAIR_FIX):
        self.problems = problems
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"the clip cache at {root} is damaged: {problems[0]}{more}; {fix}")


# --- self-checked JSON: the manifest and the shard records --------------------------------------

def checked_json(body: dict[str, Any]) -> bytes:
    """``body`` as JSON with a ``checksum`` of its canonical form, so a flipped byte is seen on reading."""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return (json.dumps({**body, "checksum": digest}, indent=1) + "\n").encode()


def read_checked_json(path: Path) -> dict[str, Any]:
    """The body :func:`checked_json` wrote; ``ValueError`` (or ``OSError``) when it is missing or damaged."""
    body = json.loads(path.read_bytes())
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    checksum = body.pop("checksum", None)
    if checksum != hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest():
        raise ValueError("its content does not match its checksum")
    return body


def _describe(exc: Exception) -> str:
    """How a file failed to read, for a problem's line: missing, unreadable, or damaged."""
    if isinstance(exc, FileNotFoundError):
        return "is missing"
    if isinstance(exc, OSError):
        return f"is unreadable ({exc.strerror or exc})"
    return f"is damaged ({exc})"


def read_manifest(root: Path) -> dict[str, Any]:
    """The cache's manifest, checked (content checksum, format, fields); ``DamagedCache`` otherwise."""
    try:
        manifest = read_checked_json(root / MANIFEST)
        if manifest.get("version") != CACHE_VERSION:
            raise ValueError(f"format {manifest.get('version')}, this fovea reads {CACHE_VERSION}")
        for shard in manifest["shards"]:
            if not (isinstance(shard["bytes"], int) and isinstance(shard["sha256"], str) and shard["clips"] >= 0):
                raise ValueError(f"the entry of shard {shard.get('shard')} is incomplete")
        if manifest["num_clips"] != sum(s["clips"] for s in manifest["shards"]):
            raise ValueError("its clip count does not add up")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DamagedCache(root, [f"{MANIFEST} {_describe(exc)}"]) from None
    return manifest


def read_record(root: Path, shard: int) -> dict[str, Any] | None:
    """The record written with ``shard``, or None when it is missing or damaged."""
    try:
        record = read_checked_json(record_file(root, shard))
        return record if record.get("shard") == shard else None
    except (OSError, ValueError):
        return None


def check_shard(root: Path, record: dict[str, Any], full: bool = True) -> str | None:
    """What is wrong with the shard ``record`` describes, or None: its size (stat) and, if ``full``, its SHA-256."""
    path = shard_file(root, record["shard"])
    try:
        size = path.stat().st_size
        if size != record["bytes"]:
            return f"{path.name} is {size} bytes, expected {record['bytes']} (cut short or overwritten)"
        if full and sha256_file(path) != record["sha256"]:
            return f"{path.name} does not match the SHA-256 recorded when it was written (its bytes changed)"
    except OSError as exc:
        return f"{path.name} {_describe(exc)}"
    return None


def check_vae(directory: Path, recorded: dict[str, Any] | None = None) -> str | None:
    """What is wrong with a VAE saved into the cache, or None: each file's size and SHA-256 against
    ``vae/checksums.json`` (and ``recorded``, the manifest's copy, when given)."""
    try:
        sums = read_checked_json(directory / VAE_CHECKSUMS)
    except (OSError, ValueError) as exc:
        return f"vae/{VAE_CHECKSUMS} {_describe(exc)}"
    if recorded is not None and sums != recorded:
        return f"vae/{VAE_CHECKSUMS} differs from the manifest's copy"
    for name, entry in sums.items():
        path = directory / name
        try:
            if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
                return f"vae/{name} does not match the size and SHA-256 recorded when it was saved"
        except OSError as exc:
            return f"vae/{name} {_describe(exc)}"
    return None


def manifest_entry(record: dict[str, Any]) -> dict[str, Any]:
    """The part of a shard's record the manifest holds."""
    return {key: record[key] for key in ("shard", "clips", "bytes", "sha256", "clip_info")}


# --- one writer per cache ----------------------------------------------------------------------

@contextlib.contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """Hold the cache for writing: a second writer waits for the first (saying so on stderr), then goes on.

    An advisory ``flock`` on ``.lock`` (released by the kernel when the holder dies, even by SIGKILL);
    the file holds the holder's pid. Temp files a killed writer left are removed once the lock is held.
    """
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            print(f"another precompute (pid {holder}) is writing the clip cache at {root}; waiting for it to "
                  f"finish, then using what it wrote", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.truncate(0)
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            for leftover in root.glob(".*.tmp"):         # half-written files of a killed writer
                leftover.unlink(missing_ok=True)
            for leftover in root.glob(".vae-*"):
                shutil.rmtree(leftover, ignore_errors=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
