"""Streaming the clip cache from a URL: fovea's own shards, downloaded on demand into a bounded local cache.

``data.cache_dir = "https://host/caches"`` (or ``http://``; ``s3://``, ``gs://`` … through fsspec with
``s3fs`` / ``gcsfs`` installed) names a directory that holds what ``fovea precompute`` wrote locally:
``<source>-<key>/manifest.json`` and its ``shard-NNNNN.safetensors``. A process downloads the manifest
when it opens the cache, then each shard the first time a read needs it, into
``<data.stream_cache_dir>/<source>-<key>/rank-<r>/`` — a temp file, hashed (SHA-256 against the
manifest) and renamed into place, so a shard is read only once it verified. The directory holds at
most ``data.stream_cache_gb``: the least recently read shards are deleted first (a reader that still
has one memory-mapped keeps its pages; the cache reopens the new copy next time). Shards already there
from an earlier process (a resumed run) are hashed once instead of downloaded again.

Why fovea's own shards and not WebDataset, MosaicML ``streaming`` or ``litdata`` (docs/benchmarks.md):
the same files serve a local disk and a URL, with the checksums, ``--verify``/``--repair`` and the
memory-mapped random access the local cache has; exact mid-epoch resume is the loader's clip position
(``fovea.core.loader``), which works unchanged because the order never depends on download timing;
and nothing new is installed (fsspec comes with torch; ``http(s)://`` needs ``aiohttp``).

A network error (refused connection, reset, timeout, a short or corrupted transfer) is tried again
``data.stream_retries`` times with back-off (0.5 s, doubling, at most 30 s); then ``StreamError`` — a
``FoveaError``: raised in the loader's worker, carried to the training step that needed the batch,
which stops the run with one ``error:`` line before its optimizer step; the last checkpoint is intact.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from fovea.core.cache.layout import MANIFEST, DamagedCache, cache_name, shard_file
from fovea.core.cache.reader import ClipCache
from fovea.core.errors import FoveaError
from fovea.core.files import sha256_file

MAX_BACKOFF_S = 30.0


class StreamError(FoveaError):
    """A file of a cache under a URL could not be downloaded (after retries) or never matched its SHA-256."""


class ShardStore:
    """The shards of the cache at ``url``, downloaded on demand into ``directory`` (at most ``budget`` bytes).

    Thread-safe: the loader's worker threads call ``open`` concurrently; one download per shard at a
    time, others asking for it wait for that one.
    """

    def __init__(self, url: str, directory: Path, budget: int, retries: int, backoff_s: float = 0.5):
        self.url, self.budget = url.rstrip("/"), budget
        self.retries, self.backoff_s = retries, backoff_s
        self.directory, self._claim = _claim(directory)
        directory = self.directory
        for leftover in directory.glob(".*.tmp"):                        # a killed process's half downloads
            leftover.unlink(missing_ok=True)
        self._lock = threading.Lock()                                     # guards the three below
        self._locks: dict[int, threading.Lock] = {}                       # one per shard: one download at a time
        self._present: OrderedDict[int, int] = OrderedDict()              # shard -> bytes on disk, oldest read first
        self._verified: set[int] = set()                                  # shards hashed by this process
        self._generations: dict[int, int] = {}                            # bumped when a shard is deleted
        for path in sorted(directory.glob("shard-?????.safetensors"), key=lambda p: p.stat().st_mtime):
            self._present[int(path.name[6:11])] = path.stat().st_size     # from an earlier process: hashed on use
        self.downloads = 0                                                # shards downloaded by this process

    # --- the manifest ----------------------------------------------------------------------------

    def fetch_manifest(self, name: str) -> Path:
        """Download ``name`` (the manifest) into the directory, replacing an older copy; its path."""
        path = self.directory / name
        self._download(name, path, None)
        return path

    # --- shards ----------------------------------------------------------------------------------

    def generation(self, shard: int) -> int:
        """Changes each time ``shard`` is deleted from the local directory (a handle of an older one is stale)."""
        return self._generations.get(shard, 0)

    def open(self, shard: int, record: dict[str, Any], opener: Callable[[Path], Any]) -> tuple[int, Any]:
        """``opener(path)`` of the shard ``record`` describes, downloaded and verified first if needed:
        (its generation, what ``opener`` returned). Over budget, the least recently read other shards go."""
        with self._lock:
            lock = self._locks.setdefault(shard, threading.Lock())
        with lock:
            path = shard_file(self.directory, shard)
            if shard not in self._verified:
                here = shard in self._present and path.is_file() and path.stat().st_size == record["bytes"]
                if not (here and sha256_file(path) == record["sha256"]):
                    self._download(path.name, path, record)
                    self.downloads += 1
            handle = opener(path)   # mapped before any eviction can delete it
            with self._lock:
                self._verified.add(shard)
                self._present[shard] = record["bytes"]
                self._present.move_to_end(shard)
                generation = self._generations.get(shard, 0)
                self._evict(keep=shard)
        return generation, handle

    def _evict(self, keep: int) -> None:
        """Delete the least recently read shards (not ``keep``, not one being downloaded) until under budget."""
        total = sum(self._present.values())
        for victim in list(self._present):
            if total <= self.budget:
                break
            lock = self._locks.get(victim)
            if victim == keep or (lock is not None and not lock.acquire(blocking=False)):
                continue
            try:
                shard_file(self.directory, victim).unlink(missing_ok=True)
                total -= self._present.pop(victim)
                self._verified.discard(victim)
                self._generations[victim] = self._generations.get(victim, 0) + 1
            finally:
                if lock is not None:
                    lock.release()

    # --- downloading -----------------------------------------------------------------------------

    def _download(self, name: str, dest: Path, record: dict[str, Any] | None) -> None:
        """``<url>/<name>`` -> ``dest`` through a temp file (checked against ``record``'s size and SHA-256
        when given), retried with back-off; ``StreamError`` when every try failed."""
        import fsspec

        url = f"{self.url}/{name}"
        tmp = dest.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        delay, started, problem = self.backoff_s, time.monotonic(), ""
        for attempt in range(self.retries + 1):
            try:
                fs, path = fsspec.core.url_to_fs(url)
                fs.get_file(path, str(tmp))
                if record is not None:
                    size = tmp.stat().st_size
                    if size != record["bytes"] or sha256_file(tmp) != record["sha256"]:
                        raise _Mismatch(f"the {size} bytes received do not match the size and SHA-256 in the "
                                        f"manifest")
                os.replace(tmp, dest)
                return
            except FileNotFoundError:
                raise StreamError(f"{url} does not exist (the server answered 'not found'); check data.cache_dir "
                                  f"and that the whole cache directory was uploaded") from None
            except ImportError as exc:
                raise StreamError(f"reading {url} needs a package that is not installed ({exc}); "
                                  f"pip install it (http/https: aiohttp; s3: s3fs; gs: gcsfs)") from None
            except Exception as exc:   # connection refused or reset, timeouts, HTTP 5xx, short transfers
                problem = f"{type(exc).__name__}: {exc}".strip()
            finally:
                tmp.unlink(missing_ok=True)
            if attempt < self.retries:
                time.sleep(delay)
                delay = min(2 * delay, MAX_BACKOFF_S)
        raise StreamError(f"cannot download {url} ({problem[:300]}) after {self.retries + 1} tries over "
                          f"{time.monotonic() - started:.0f} s; the run stops before its next step, its last "
                          f"checkpoint intact: once the server answers, continue with `fovea run --resume RUN_DIR`")


def _claim(directory: Path):
    """``directory`` held by this process (an advisory lock the kernel drops when it dies), or, when another
    process (a ``fovea eval`` beside the training run) holds it, a directory of this process's own beside
    it, removed at exit: two processes never delete each other's shards. (the directory, the lock's file)"""
    import atexit
    import fcntl
    import shutil
    import tempfile

    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return directory, handle
    except BlockingIOError:
        handle.close()
    own = Path(tempfile.mkdtemp(prefix=f"{directory.name}-", dir=directory.parent))
    atexit.register(shutil.rmtree, own, True)
    return own, None


class _Mismatch(Exception):
    """A transfer that ended without error but with other bytes than the manifest's: tried again."""


def open_remote_cache(config):
    """The ``ClipCache`` of ``config`` under the URL ``data.cache_dir``: its manifest downloaded now, its shards
    on demand into this process's own directory under ``data.stream_cache_dir``."""
    from fovea.core import distributed

    data, name = config.data, cache_name(config)
    url = f"{data.cache_dir.rstrip('/')}/{name}"
    local = (Path(data.stream_cache_dir) / name / f"rank-{distributed.current().rank}").resolve()
    store = ShardStore(url, local, int(data.stream_cache_gb * 1e9), data.stream_retries)
    try:
        store.fetch_manifest(MANIFEST)
    except StreamError as exc:
        raise StreamError(f"{exc}. A cache under a URL is written locally by `fovea precompute CONFIG` (the same "
                          f"[data] and [model.vae] settings, a local data.cache_dir) and its directory {name}/ "
                          f"uploaded whole") from None
    try:
        return ClipCache(local, store=store, max_open=data.shuffle_window + 1)
    except DamagedCache as exc:
        raise StreamError(f"the manifest at {url}/{MANIFEST} is not a usable fovea cache manifest "
                          f"({exc.problems[0]}); upload the cache again") from None
