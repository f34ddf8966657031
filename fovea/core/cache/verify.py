"""Checking a whole clip cache: ``fovea precompute --verify`` (hash every file against its record) and what
``--repair`` removes so that ``fovea.core.cache.build`` makes it again."""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path

from fovea.core.cache.layout import (MANIFEST, DamagedCache, cache_path, check_shard, check_vae, manifest_entry,
                                     read_manifest, read_record, record_file, shard_file, writer_lock)
from fovea.core.config import FoveaConfig
from fovea.core.errors import FoveaError


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
            elif records[shard] is None or (manifest and manifest_entry(records[shard]) != manifest_entry(entry)):
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


def remove_damaged(root: Path, problems: list[tuple[str, str]]) -> None:
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
