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
under a URL is read through ``fovea.core.cache.stream``, never written.

The modules, each importing only the ones before it:

- ``layout``: file names, the cache key, the self-checked records, checking a shard or the saved VAE, the
  writer lock: what the others agree on;
- ``reader``: ``ClipCache``, a complete cache opened for reading;
- ``stream``: a cache under a URL, its shards downloaded on demand (``ShardStore``);
- ``verify``: ``fovea precompute --verify``, and what ``--repair`` removes;
- ``build``: ``fovea precompute``: writing, resuming and repairing (``build_cache``).

Callers import from ``fovea.core.cache`` itself: the names below are its API.
"""

from fovea.core.cache.build import build_cache, build_cache_on_ranks
from fovea.core.cache.layout import (CACHE_VERSION, LOCK, MANIFEST, DamagedCache, cache_key, cache_name, cache_path,
                                     checked_json, read_manifest, record_file, shard_file, storage_format,
                                     writer_lock)
from fovea.core.cache.reader import ClipCache
from fovea.core.cache.verify import inspect_cache, verify_cache

__all__ = ["CACHE_VERSION", "LOCK", "MANIFEST", "ClipCache", "DamagedCache", "build_cache", "build_cache_on_ranks",
           "cache_key", "cache_name", "cache_path", "checked_json", "inspect_cache", "read_manifest", "record_file",
           "shard_file", "storage_format", "verify_cache", "writer_lock"]
