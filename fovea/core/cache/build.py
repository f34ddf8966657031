"""Writing the clip cache (``fovea precompute``): every clip decoded once, its latents encoded, in shards
written atomically, resumed shard by shard, repaired, on one process or on every rank of a torchrun job."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from fovea.core.cache.layout import (CACHE_VERSION, MANIFEST, VAE_CHECKSUMS, DamagedCache, cache_key, cache_path,
                                     check_shard, check_vae, checked_json, manifest_entry, read_checked_json,
                                     read_manifest, read_record, record_file, shard_file, storage_format,
                                     writer_lock)
from fovea.core.cache.reader import ClipCache
from fovea.core.cache.stream import open_remote_cache
from fovea.core.cache.verify import inspect_cache, remove_damaged
from fovea.core.config import FoveaConfig
from fovea.core.data import SkipClip, build_source, check_clip
from fovea.core.errors import FoveaError
from fovea.core.files import atomic_write, is_url, sha256_file


def build_cache(config: FoveaConfig, device: torch.device | str = "cpu", progress: bool = True,
                repair: bool = False, parallel: bool = False) -> ClipCache:
    """The cache for ``config``: opened if complete, else written (resuming from complete shards).

    A cache whose manifest is damaged or whose shards are missing or cut short (stat only) has just
    those shards decoded again from the source, said on stderr. ``repair`` hashes every file first and
    decodes again only the shards that do not match (``fovea precompute --repair``). With ``data.cache_dir``
    a URL the cache is opened there (``fovea.core.cache.stream``), never written. ``parallel``: every rank of
    the joined torchrun job calls this together and writes its own share of the shards
    (``build_cache_on_ranks``).
    """
    from fovea.core import distributed

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
            remove_damaged(root, inspect_cache(root, progress))
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
                remove_damaged(root, inspect_cache(root, progress))
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
    atomic_write(root / MANIFEST, checked_json(manifest))


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


def _read(source, index: int, config: FoveaConfig):
    """The clip, or a report entry saying why it was skipped."""
    try:
        return check_clip(source[index], config)
    except SkipClip as exc:
        return {"index": index, "source": exc.source, "reason": exc.reason}


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
    atomic_write(tmp / VAE_CHECKSUMS, checked_json(sums))
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
    atomic_write(record_file(root, shard), checked_json(record))


def _collect_manifest(root: Path, num_shards: int, vae_id: str, vae_dir: Path | None,
                      fmt: dict[str, Any]) -> dict[str, Any]:
    """The manifest from the shards' records (no shard is read again) and the saved VAE's checksums."""
    shards, skipped = [], []
    for shard in range(num_shards):
        record = read_record(root, shard)
        if record is None:
            raise FoveaError(f"the record {record_file(root, shard).name} written with shard {shard} of the clip "
                             f"cache at {root} vanished; run `fovea precompute --repair CONFIG`")
        shards.append(manifest_entry(record))
        skipped += record["skipped"]
    vae_files = read_checked_json(vae_dir / VAE_CHECKSUMS) if vae_dir is not None else None
    return {"version": CACHE_VERSION, "num_clips": sum(s["clips"] for s in shards), "vae": vae_id,
            "vae_files": vae_files, "format": fmt, "shards": shards, "skipped": skipped}
