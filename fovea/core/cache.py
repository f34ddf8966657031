"""The clip cache: every clip decoded once, with its VAE latents, in shards that stream fast and are verified.

``<data.cache_dir>/<source>-<key>/`` holds ``shard-00000.safetensors`` … (uint8 ``frames``
(n, T, 3, S, S), or with ``data.codec = "jpeg"`` their JPEGs end to end in ``jpeg`` with ``jpeg_offsets``
(``fovea.core.codec``); ``latents`` (n, T, C, h, w) in float32 or ``data.latent_dtype``; the clips' source paths, frame indices,
captions and the skipped items with their reasons in the shard's metadata), beside each shard its record
``shard-00000.json`` (size, SHA-256, clips, skipped items: written with the shard, from the bytes
written), ``key.json`` (what the cache was made from), ``vae/`` (a random-initialised VAE, when the
config names none, with ``vae/checksums.json``), ``.lock`` (one writer at a time) and, once every
shard is written, ``manifest.json`` (the records of all shards). The manifest and the records carry a
SHA-256 of their own content, so a damaged one is never taken for a valid one.

A shard and then its record are written to temp files, fsynced and renamed, so a shard with a record
of its size is complete: an interrupted ``fovea precompute`` resumes at the first shard without one.
A run checks every shard's size against the manifest when it opens the cache (stat only, so a huge
cache opens in seconds) and hashes each shard the first time it reads from it, in the loader's
worker threads; a shard that does not match stops the run with one error naming the fix
(``fovea precompute --repair CONFIG``). ``fovea precompute --verify`` hashes everything at once.
Under torchrun ``fovea precompute`` writes the shards on every rank (``build_cache_on_ranks``); a cache
under a URL is read through ``fovea.core.stream``, never written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import torch

from fovea.core.config import FoveaConfig
from fovea.core.data import SkipClip, build_source, check_clip
from fovea.core.errors import FoveaError
from fovea.core.files import atomic_write, sha256_file

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
    from fovea.core.stream import is_url

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

def _checked_json(body: dict[str, Any]) -> bytes:
    """``body`` as JSON with a ``checksum`` of its canonical form, so a flipped byte is seen on reading."""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return (json.dumps({**body, "checksum": digest}, indent=1) + "\n").encode()


def _read_checked_json(path: Path) -> dict[str, Any]:
    """The body :func:`_checked_json` wrote; ``ValueError`` (or ``OSError``) when it is missing or damaged."""
    body = json.loads(path.read_bytes())
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    checksum = body.pop("checksum", None)
    if checksum != hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest():
        raise ValueError("its content does not match its checksum")
    return body


def _describe(exc: Exception) -> str:
    if isinstance(exc, FileNotFoundError):
        return "is missing"
    if isinstance(exc, OSError):
        return f"is unreadable ({exc.strerror or exc})"
    return f"is damaged ({exc})"


def read_manifest(root: Path) -> dict[str, Any]:
    """The cache's manifest, checked (content checksum, format, fields); ``DamagedCache`` otherwise."""
    try:
        manifest = _read_checked_json(root / MANIFEST)
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
        record = _read_checked_json(record_file(root, shard))
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


# --- reading -----------------------------------------------------------------------------------

class ClipCache:
    """A complete cache: random access to clips by index, thread-safe, memory-mapped.

    Opening it checks the manifest and every shard's size (``DamagedCache`` if any is wrong). With
    ``verify`` (the default) each shard is hashed once, by the first read that needs it, before any of
    its clips is returned: a damaged shard raises ``DamagedCache`` from ``read``, never its data.
    ``store`` (``fovea.core.stream.ShardStore``): the cache lives under a URL and ``root`` is the local
    directory its shards are downloaded into, on demand, each verified against the manifest's SHA-256
    as it arrives. Each thread keeps at most ``max_open`` shards open (memory-mapped), the least
    recently read closed first.
    """

    def __init__(self, root: Path, verify: bool = True, store=None, max_open: int = 64):
        self.root, self.verify, self.store, self.max_open = root, verify, store, max_open
        self.location = store.url if store is not None else str(root)    # what reports name: a directory or a URL
        self.manifest = read_manifest(root)
        self._records = self.manifest["shards"]
        self.format = self.manifest.get("format") or {"codec": "raw", "jpeg_quality": None, "latent_dtype": "float32"}
        if store is None:
            problems = [p for p in (check_shard(root, r, full=False) for r in self._records) if p]
            if problems:
                raise DamagedCache(root, problems)
        self.shard_counts = torch.tensor([r["clips"] for r in self._records], dtype=torch.int64)   # (shards,)
        self._starts = torch.cumsum(self.shard_counts, 0) - self.shard_counts    # first clip index of each shard
        self._local = threading.local()                                    # one set of open shards per thread
        self._checked: dict[int, str | None] = {}                          # shard -> None (verified) or problem
        self._check_locks = [threading.Lock() for _ in self._records]     # one hash per shard, whoever asks
        self._captions: list[str | None] | None = None                     # by clip index, built on first use

    def __len__(self) -> int:
        return self.manifest["num_clips"]

    @property
    def vae(self) -> str:
        """The VAE whose latents the cache holds: hub id or directory."""
        return self.manifest["vae"]

    @property
    def shard_starts(self) -> torch.Tensor:
        """The first clip index of each shard, int64 (shards,)."""
        return self._starts

    def _verify(self, shard: int) -> None:
        """Hash ``shard`` once per cache object; a thread asking meanwhile waits for that one result."""
        if shard not in self._checked:
            with self._check_locks[shard]:
                if shard not in self._checked:
                    self._checked[shard] = check_shard(self.root, self._records[shard])
        if self._checked[shard] is not None:
            raise DamagedCache(self.root, [self._checked[shard]],
                               f"{REPAIR_FIX}, then continue with `fovea run --resume`")

    def _open(self, shard: int):
        from safetensors import safe_open

        handles = self._local.__dict__.setdefault("handles", OrderedDict())   # shard -> (generation, handle)
        generation = self.store.generation(shard) if self.store is not None else 0
        if shard in handles and handles[shard][0] == generation:
            handles.move_to_end(shard)
            return handles[shard][1]
        handles.pop(shard, None)          # evicted from the download cache since: open the new copy
        if self.store is not None:        # downloaded (and hashed) if not here, then opened before eviction can run
            generation, handle = self.store.open(shard, self._records[shard],
                                                 lambda path: safe_open(str(path), framework="pt"))
        else:
            if self.verify:
                self._verify(shard)
            handle = safe_open(str(shard_file(self.root, shard)), framework="pt")
        handles[shard] = (generation, handle)
        while len(handles) > self.max_open:
            handles.popitem(last=False)   # unmapped when the last reference goes
        return handle

    def read(self, indices: list[int], device: torch.device | str | None = None) -> dict[str, Any]:
        """Clips ``indices`` -> {"frames": (B, T, 3, S, S) uint8, "latents": (B, T, C, h, w) float32, "index": (B,),
        "captions": B str or None, in the order of ``indices``}.

        JPEG frames are decoded here (the loader calls this in its worker threads), on ``device`` when it is a
        CUDA device (nvJPEG, one batched call), else on the CPU; raw frames are memory-mapped slices.
        """
        from safetensors import SafetensorError

        from fovea.core.codec import decode_jpeg, split_jpegs

        index = torch.as_tensor(indices)
        shards = torch.searchsorted(self._starts, index, right=True) - 1   # (B,)
        frames, latents, jpegs = [], [], []
        for clip, shard in zip(index.tolist(), shards.tolist()):           # one slice read per clip
            try:
                handle, row = self._open(shard), clip - int(self._starts[shard])
                latents.append(handle.get_slice("latents")[row:row + 1])   # (1, T, C, h, w)
                if self.format["codec"] == "jpeg":
                    T = latents[-1].shape[1]
                    offsets = handle.get_slice("jpeg_offsets")[row * T:row * T + T + 1]           # (T + 1,)
                    data = handle.get_slice("jpeg")[int(offsets[0]):int(offsets[-1])]
                    jpegs += split_jpegs(data, offsets - offsets[0])
                else:
                    frames.append(handle.get_slice("frames")[row:row + 1])
            except (SafetensorError, OSError, RuntimeError) as exc:       # only without verify, or changed since
                name = shard_file(self.root, shard).name
                raise DamagedCache(self.root, [f"{name} is unreadable ({type(exc).__name__}: {exc})"]) from None
        latents = torch.cat(latents).float()                               # (B, T, C, h, w)
        if jpegs:
            decoded = decode_jpeg(jpegs, device if device is not None else "cpu")      # (B*T, 3, S, S)
            frames = [decoded.view(len(indices), -1, *decoded.shape[1:])]
        captions = self._caption_list()
        return {"frames": torch.cat(frames), "latents": latents, "index": index,
                "captions": [captions[clip] for clip in index.tolist()]}

    def clip_info(self) -> list[dict[str, Any]]:
        """Source, frame indices and caption (str or None) of every cached clip, in cache order."""
        return [clip for shard in self._records for clip in shard["clip_info"]]

    def captions(self) -> list[str | None]:
        """The caption of every cached clip (None where the source gave none), in cache order."""
        return list(self._caption_list())

    def _caption_list(self) -> list[str | None]:
        if self._captions is None:   # two threads may both build it: the same list, assigned atomically
            self._captions = [clip["caption"] for shard in self._records for clip in shard["clip_info"]]
        return self._captions

    def report(self) -> dict[str, Any]:
        """The data report: how many clips, and every skipped item with its reason."""
        return {"cache": self.location, "vae": self.vae, "num_clips": len(self), "format": self.format,
                "num_skipped": len(self.manifest["skipped"]), "skipped": self.manifest["skipped"]}


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


# --- writing, resuming, verifying and repairing -------------------------------------------------

def build_cache(config: FoveaConfig, device: torch.device | str = "cpu", progress: bool = True,
                repair: bool = False, parallel: bool = False) -> ClipCache:
    """The cache for ``config``: opened if complete, else written (resuming from complete shards).

    A cache whose manifest is damaged or whose shards are missing or cut short (stat only) has just
    those shards decoded again from the source, said on stderr. ``repair`` hashes every file first and
    decodes again only the shards that do not match (``fovea precompute --repair``). With ``data.cache_dir``
    a URL the cache is opened there (``fovea.core.stream``), never written. ``parallel``: every rank of
    the joined torchrun job calls this together and writes its own share of the shards
    (``build_cache_on_ranks``).
    """
    from fovea.core import distributed
    from fovea.core.stream import is_url, open_remote_cache

    if is_url(config.data.cache_dir) and not repair:
        return open_remote_cache(config)
    if parallel and distributed.current().world_size > 1:
        return build_cache_on_ranks(config, device, progress, repair)
    root = cache_path(config).resolve()   # absolute: run directories record it
    damage: list[str] = []
    if not repair and (root / MANIFEST).exists():
        try:
            return ClipCache(root)
        except DamagedCache as exc:
            damage = exc.problems
    try:
        source = build_source(config)   # a missing video directory fails here, before anything is written
    except FoveaError as exc:
        if damage:
            raise DamagedCache(root, damage, f"it cannot be decoded again from its source: {exc}") from None
        raise
    with writer_lock(root):
        if not repair and not damage and (root / MANIFEST).exists():   # another writer finished it meanwhile
            with contextlib.suppress(DamagedCache):
                return ClipCache(root)
        for problem in damage:
            print(f"warning: the clip cache at {root}: {problem}; making just that again from the source",
                  file=sys.stderr)
        previous, vae_files = _previous_records(root)
        if repair:
            _remove_damaged(root, inspect_cache(root, progress))
        (root / "key.json").write_text(json.dumps(cache_key(config), indent=2) + "\n", encoding="utf-8")
        _write_shards(config, root, source, device, progress, previous, vae_files)
        _write_manifest(config, root, len(source), vae_files)
        return ClipCache(root)


def build_cache_on_ranks(config: FoveaConfig, device: torch.device | str = "cpu", progress: bool = True,
                         repair: bool = False) -> ClipCache:
    """``torchrun --nproc_per_node=N -m fovea precompute``: every rank writes the shards ``s`` with
    ``s % N == rank`` (its own clips, its own device for the VAE), then rank 0 writes the manifest.

    Rank 0 holds the writer lock from start to end, removes what a killed writer left, repairs, and saves
    a random VAE before the others start; a shard whose record is complete is not written again, so a
    killed job resumes shard by shard, on any number of processes. The shards are the ones a single
    process writes (the same clips in each, encoded in the same VAE batches).
    """
    from fovea.core import distributed

    world = distributed.current()
    root = cache_path(config).resolve()
    source = distributed.main_first(lambda: build_source(config))   # a missing source fails on rank 0 first
    with contextlib.ExitStack() as held:
        def prepare() -> tuple[dict[int, dict], dict | None]:
            held.enter_context(writer_lock(root))
            previous, vae_files = _previous_records(root)
            if repair:
                _remove_damaged(root, inspect_cache(root, progress))
            else:
                with contextlib.suppress(DamagedCache):
                    ClipCache(root)
                    return previous, vae_files                     # complete: nothing to write
                (root / MANIFEST).unlink(missing_ok=True)          # rewritten once every shard is there
            (root / "key.json").write_text(json.dumps(cache_key(config), indent=2) + "\n", encoding="utf-8")
            _ensure_cache_vae(config, root, vae_files)
            return previous, vae_files

        previous, vae_files = distributed.from_main(prepare)
        if not (root / MANIFEST).exists():
            failure = None
            try:
                _write_shards(config, root, source, device, progress and world.is_main, previous, vae_files,
                              world.rank, world.world_size)
            except Exception as exc:   # every rank must reach the gather below, or the others wait forever
                failure = exc
            failed = [rank for rank, f in enumerate(distributed.gather(failure is not None)) if f]
            if failure is not None:
                raise failure
            if failed:
                raise FoveaError(f"rank {failed[0]} failed writing its shards of the clip cache at {root} (its "
                                 f"error is above); the shards written are kept: run the same command again")
            distributed.on_main(lambda: _write_manifest(config, root, len(source), vae_files))
    return ClipCache(root)


def _write_shards(config: FoveaConfig, root: Path, source, device, progress: bool,
                  previous: dict[int, dict], vae_files: dict | None, rank: int = 0, world_size: int = 1) -> None:
    """Write every shard (of this ``rank``'s share) without a complete record; the caller holds the lock.

    ``previous``: the records the cache held (a shard written again must hold the same clips);
    ``vae_files``: the saved VAE's checksums in the manifest, if any (a VAE made again must match them).
    """
    shard_size = config.data.shard_size
    num_shards = -(-len(source) // shard_size)
    mine = range(rank, num_shards, world_size)
    vae = None

    from tqdm.auto import tqdm

    total = sum(min(len(source), (s + 1) * shard_size) - s * shard_size for s in mine)
    bar = tqdm(total=total, desc=f"precompute {root.name}", unit="clip", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, config.data.num_workers)) as pool:
        for shard in mine:
            indices = range(shard * shard_size, min(len(source), (shard + 1) * shard_size))
            record = read_record(root, shard)
            if record is not None and check_shard(root, record, full=False) is None:
                bar.update(len(indices))
                continue
            if vae is None:
                vae = _load_cache_vae(config, root, device, vae_files)
            clips, skipped = [], []
            for result in pool.map(lambda i: _read(source, i, config), indices):   # decoded in parallel
                (skipped if isinstance(result, dict) else clips).append(result)
                bar.update()
            _write_shard(root, shard, clips, skipped, vae, config, previous.get(shard))
    bar.close()


def _write_manifest(config: FoveaConfig, root: Path, num_clips: int, vae_files: dict | None) -> None:
    """The manifest, from the records of every shard (all written); the caller holds the lock."""
    num_shards = -(-num_clips // config.data.shard_size)
    vae_id = config.model.vae.pretrained or str(root / "vae")
    _ensure_cache_vae(config, root, vae_files)   # a cache whose shards are all there may have lost its VAE
    manifest = _collect_manifest(root, num_shards, vae_id, None if config.model.vae.pretrained else root / "vae",
                                 storage_format(config))
    if manifest["num_clips"] == 0:
        reasons = "; ".join(f"{s['source'] or s['index']}: {s['reason']}" for s in manifest["skipped"][:5])
        raise FoveaError(f"no clip of the '{config.data.name}' source could be read ({reasons}); "
                         f"check the files under [data] and the report in {root}")
    atomic_write(root / MANIFEST, _checked_json(manifest))


def inspect_cache(root: Path, progress: bool = True) -> list[tuple[str, str]]:
    """Hash every file of the cache at ``root`` against its record: [(file name, what is wrong)].

    The manifest, each shard (against the manifest, or its record when the manifest is damaged), each
    shard's record, and the saved VAE's files. The caller holds the writer lock.
    """
    from tqdm.auto import tqdm

    problems: list[tuple[str, str]] = []
    try:
        manifest = read_manifest(root)
        entries = {s["shard"]: s for s in manifest["shards"]}
        num_shards = len(manifest["shards"])
    except DamagedCache as exc:
        problems.append((MANIFEST, exc.problems[0]))
        manifest, entries = None, {}
        written = [int(p.name[6:11]) for p in root.glob("shard-?????.*") if p.name[6:11].isdigit()]
        num_shards = max(written, default=-1) + 1
    records = {shard: read_record(root, shard) for shard in range(num_shards)}
    expected = {shard: entries.get(shard) or records[shard] for shard in range(num_shards)}
    total = sum(e["bytes"] for e in expected.values() if e)
    with tqdm(total=total, desc=f"verify {root.name}", unit="B", unit_scale=True, disable=not progress) as bar:
        for shard in range(num_shards):
            name, entry = shard_file(root, shard).name, expected[shard]
            if entry is None:
                problems.append((name, f"{name} has no readable record (the manifest and "
                                       f"{record_file(root, shard).name} are damaged or missing)"))
                continue
            problem = check_shard(root, entry)
            if problem:
                problems.append((name, problem))
            elif records[shard] is None or (manifest and _entry(records[shard]) != _entry(entry)):
                problems.append((record_file(root, shard).name,
                                 f"{record_file(root, shard).name} is missing, damaged or differs from the manifest"))
            bar.update(entry["bytes"])
    vae_files = manifest.get("vae_files") if manifest else None
    if vae_files is not None or (root / "vae").is_dir():
        problem = check_vae(root / "vae", vae_files)
        if problem:
            problems.append(("vae/", problem))
    return problems


def verify_cache(config: FoveaConfig, progress: bool = True) -> tuple[Path, int, list[tuple[str, str]]]:
    """``fovea precompute --verify``: (the cache's directory, its number of shards, what is wrong in it)."""
    root = cache_path(config).resolve()
    if not root.is_dir() or not any(root.glob("shard-*")):
        raise FoveaError(f"there is no clip cache for this config at {root}; build it with `fovea precompute CONFIG`")
    with writer_lock(root):
        problems = inspect_cache(root, progress)
        with contextlib.suppress(DamagedCache):
            return root, len(read_manifest(root)["shards"]), problems
        return root, len(list(root.glob("shard-?????.safetensors"))), problems


def _entry(record: dict[str, Any]) -> dict[str, Any]:
    """The part of a shard's record the manifest holds."""
    return {key: record[key] for key in ("shard", "clips", "bytes", "sha256", "clip_info")}


def _previous_records(root: Path) -> tuple[dict[int, dict], dict | None]:
    """What the cache held before this write, where still readable: {shard: record}, the VAE's checksums."""
    records: dict[int, dict] = {}
    vae_files = None
    with contextlib.suppress(DamagedCache):
        manifest = read_manifest(root)
        records, vae_files = {s["shard"]: s for s in manifest["shards"]}, manifest.get("vae_files")
    for path in root.glob("shard-?????.json"):
        shard = int(path.name[6:11])
        if shard not in records and (record := read_record(root, shard)) is not None:
            records[shard] = record
    return records, vae_files


def _remove_damaged(root: Path, problems: list[tuple[str, str]]) -> None:
    """Delete what ``inspect_cache`` found damaged, so the write that follows makes it again."""
    if not problems:
        print(f"the clip cache at {root} verifies clean; nothing to repair", file=sys.stderr)
    for name, problem in problems:
        print(f"repair: {problem}; making it again from the source", file=sys.stderr)
        if name.startswith("shard-"):
            shard = int(name[6:11])
            record_file(root, shard).unlink(missing_ok=True)   # first: a shard without a record is redone
            shard_file(root, shard).unlink(missing_ok=True)
        elif name == "vae/":
            shutil.rmtree(root / "vae", ignore_errors=True)
    (root / MANIFEST).unlink(missing_ok=True)                  # rewritten from the records


def _read(source, index: int, config: FoveaConfig):
    """The clip, or a report entry saying why it was skipped."""
    try:
        return check_clip(source[index], config)
    except SkipClip as exc:
        return {"index": index, "source": exc.source, "reason": exc.reason}


def check_vae(directory: Path, recorded: dict[str, Any] | None = None) -> str | None:
    """What is wrong with a VAE saved into the cache, or None: each file's size and SHA-256 against
    ``vae/checksums.json`` (and ``recorded``, the manifest's copy, when given)."""
    try:
        sums = _read_checked_json(directory / VAE_CHECKSUMS)
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


def _file_sums(directory: Path) -> dict[str, dict[str, Any]]:
    return {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != VAE_CHECKSUMS}


def _ensure_cache_vae(config: FoveaConfig, root: Path, recorded: dict[str, Any] | None) -> None:
    """A seeded random VAE saved in the cache, with its checksums; made again (deterministically) if damaged."""
    if config.model.vae.pretrained:
        return
    from fovea.core.vae import save_random_vae

    target = root / "vae"
    if target.is_dir() and check_vae(target, recorded) is None:
        return
    tmp = Path(tempfile.mkdtemp(prefix=".vae-", dir=root))   # unique even for two writers of one pid
    save_random_vae(config.model.vae, tmp, config.run.seed)
    sums = _file_sums(tmp)
    if recorded is not None and sums != recorded:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FoveaError(f"the VAE saved in the clip cache at {root} is damaged, and the one made again from the "
                         f"seed differs from it (another torch or diffusers version?), so the cached latents "
                         f"cannot be trusted: delete {root} and run `fovea precompute CONFIG` again")
    atomic_write(tmp / VAE_CHECKSUMS, _checked_json(sums))
    if target.exists():
        print(f"warning: the VAE saved in the clip cache at {root} is damaged ({check_vae(target, recorded)}); "
              f"saving it again from its seed", file=sys.stderr)
        trash = root / f".vae-trash-{os.getpid()}"
        os.replace(target, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp, target)


def _load_cache_vae(config: FoveaConfig, root: Path, device, recorded: dict[str, Any] | None = None):
    """The frozen VAE: the configured one, or a seeded random one saved into the cache and loaded back."""
    from fovea.core.vae import load_vae

    if config.model.vae.pretrained:
        return load_vae(config.model.vae.pretrained, device)
    _ensure_cache_vae(config, root, recorded)
    return load_vae(root / "vae", device)


def _write_shard(root: Path, shard: int, clips: list, skipped: list, vae, config: FoveaConfig,
                 previous: dict[str, Any] | None = None) -> None:
    """Encode and write one shard, then its record (size and SHA-256 of the bytes written).

    ``previous``: the record of the shard this one replaces; its clips must be the same ones, else the
    source changed since the cache was written and mixing old and new shards would be wrong.
    """
    from safetensors.torch import save

    from fovea.core.vae import encode_latents, latent_shape

    info = [{"source": c.source, "frame_indices": c.frame_indices, "caption": c.caption} for c in clips]
    if previous is not None and previous.get("clip_info") != info:
        raise FoveaError(f"the source of the clip cache at {root} changed since the cache was written (shard "
                         f"{shard} held {len(previous.get('clip_info', []))} other clips); delete {root} and run "
                         f"`fovea precompute CONFIG` again")
    T, S = config.data.num_frames, config.data.frame_size
    if clips:
        frames = torch.stack([c.frames for c in clips])                                   # (n, T, 3, S, S)
        latents = encode_latents(vae, frames.flatten(0, 1), config.model.vae.batch_size)  # (n*T, C, h, w)
        latents = latents.view(len(clips), T, *latents.shape[1:])                         # (n, T, C, h, w)
    else:  # every file of this shard was skipped: an empty shard keeps the numbering
        frames = torch.zeros(0, T, 3, S, S, dtype=torch.uint8)
        latents = torch.zeros(0, T, *latent_shape(config.model.vae, S))
    metadata = {"clip_info": json.dumps(info), "skipped": json.dumps(skipped)}
    tensors = {"latents": latents.to(getattr(torch, config.data.latent_dtype)).contiguous()}
    if config.data.codec == "jpeg":
        from fovea.core.codec import encode_jpeg

        tensors["jpeg"], tensors["jpeg_offsets"] = encode_jpeg(frames.flatten(0, 1), config.data.jpeg_quality)
    else:
        tensors["frames"] = frames.contiguous()
    data = save(tensors, metadata=metadata)
    record = {"shard": shard, "clips": len(clips), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
              "clip_info": info, "skipped": skipped}
    record_file(root, shard).unlink(missing_ok=True)   # a shard never has the record of another write
    atomic_write(shard_file(root, shard), data)
    atomic_write(record_file(root, shard), _checked_json(record))


def _collect_manifest(root: Path, num_shards: int, vae_id: str, vae_dir: Path | None,
                      fmt: dict[str, Any]) -> dict[str, Any]:
    """The manifest from the shards' records (no shard is read again) and the saved VAE's checksums."""
    shards, skipped = [], []
    for shard in range(num_shards):
        record = read_record(root, shard)
        if record is None:
            raise FoveaError(f"the record {record_file(root, shard).name} written with shard {shard} of the clip "
                             f"cache at {root} vanished; run `fovea precompute --repair CONFIG`")
        shards.append(_entry(record))
        skipped += record["skipped"]
    vae_files = _read_checked_json(vae_dir / VAE_CHECKSUMS) if vae_dir is not None else None
    return {"version": CACHE_VERSION, "num_clips": sum(s["clips"] for s in shards), "vae": vae_id,
            "vae_files": vae_files, "format": fmt, "shards": shards, "skipped": skipped}
