"""A damaged clip cache never trains silently and never crashes (issue 21).

Byte flips in a shard's data or header, truncation, a deleted shard, a deleted or damaged manifest,
two writers at once: each ends with one clear error or a repair of just the damage, never a
traceback, never a batch of damaged clips, and a cache that verifies clean afterwards.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import sys
import threading
import time

import pytest
import torch
from typer.testing import CliRunner

import fovea
from fovea.cli import app
import fovea.core.cache.build as cache_build
import fovea.core.cache.layout as cache_layout
from fovea.core import cache as cache_module
from fovea.core.cache import (ClipCache, DamagedCache, build_cache, cache_path, inspect_cache, record_file,
                              shard_file, verify_cache)
from fovea.core.files import sha256_file
from fovea.core.loader import build_loader, shutdown
from tests.helpers import QUICKSTART, ROOT, tiny_overrides, write_video

runner = CliRunner()
NUM_SHARDS, SHARD_SIZE = 4, 4


def cache_overrides(tmp_path, **extra):
    """16 synthetic clips in 4 shards of 4."""
    return tiny_overrides(tmp_path, **{"data.num_clips": str(NUM_SHARDS * SHARD_SIZE),
                                       "data.shard_size": str(SHARD_SIZE), "data.num_workers": "2", **extra})


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A complete cache, built once; each test gets its own copy through ``config``."""
    tmp = tmp_path_factory.mktemp("pristine")
    cache = build_cache(fovea.load_config(QUICKSTART, cache_overrides(tmp)), progress=False)
    return cache.root


@pytest.fixture
def config(tmp_path, pristine):
    config = fovea.load_config(QUICKSTART, cache_overrides(tmp_path))
    shutil.copytree(pristine, cache_path(config), symlinks=True)
    return config


def root_of(config):
    return cache_path(config).resolve()


def header_end(path) -> int:
    """Where a safetensors file's tensor bytes begin: 8 bytes of header length, then the JSON header."""
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


def flip(path, offset: int, count: int = 1) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, min(offset + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def same_shard(data: bytes, other: bytes) -> bool:
    """The same tensors and metadata (safetensors writes the metadata keys in no fixed order)."""
    from safetensors.torch import load

    def metadata(raw: bytes) -> dict:
        return json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])["__metadata__"]

    a, b = load(data), load(other)
    return metadata(data) == metadata(other) and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def clips_of(shard: int) -> list[int]:
    return list(range(shard * SHARD_SIZE, (shard + 1) * SHARD_SIZE))


def test_every_shard_and_the_vae_are_recorded_with_their_checksum(config):
    root = root_of(config)
    manifest = cache_module.read_manifest(root)
    assert len(manifest["shards"]) == NUM_SHARDS
    for entry in manifest["shards"]:
        path = shard_file(root, entry["shard"])
        assert entry["sha256"] == sha256_file(path) and entry["bytes"] == path.stat().st_size
    assert manifest["vae_files"] and all(sha256_file(root / "vae" / name) == entry["sha256"]
                                         for name, entry in manifest["vae_files"].items())
    assert inspect_cache(root, progress=False) == []


@pytest.mark.parametrize("region", ["data", "header"])
def test_a_byte_flip_in_a_shard_stops_reads_of_it_and_never_returns_its_clips(config, region):
    root, rng = root_of(config), random.Random(f"flip-{region}")
    for _ in range(4):
        shard = rng.randrange(NUM_SHARDS)
        path = shard_file(root, shard)
        start, end = (header_end(path), path.stat().st_size) if region == "data" else (0, header_end(path))
        offset = rng.randrange(start, end)
        original = path.read_bytes()
        flip(path, offset, count=rng.choice([1, 64]))
        cache = ClipCache(root)                               # the size is right: opening it cannot tell
        other = (shard + 1) % NUM_SHARDS
        assert cache.read(clips_of(other))["frames"].shape[0] == SHARD_SIZE   # the intact shards still read
        with pytest.raises(DamagedCache, match=f"{path.name} does not match the SHA-256 .* --repair"):
            cache.read(clips_of(shard)[1:2])
        with pytest.raises(DamagedCache):                     # and again, from the remembered result
            cache.read(clips_of(shard)[:1])
        path.write_bytes(original)


def test_the_loader_raises_the_damage_itself_before_any_batch_of_the_damaged_shard(config):
    root = root_of(config)
    damaged = 2
    path = shard_file(root, damaged)
    flip(path, header_end(path) + 100, count=64)
    cache = ClipCache(root)
    loader = build_loader(cache, config, torch.device("cpu"))     # 2 worker threads, prefetch
    batches, returned = iter(loader), []
    try:
        with pytest.raises(DamagedCache) as raised:
            for _ in range(2 * NUM_SHARDS * SHARD_SIZE // config.training.batch_size):   # two epochs at most
                returned += next(batches)["index"].tolist()
    finally:
        shutdown(loader)
    message = str(raised.value)
    assert type(raised.value) is DamagedCache                      # not torchdata's re-wrapped copy
    assert "\n" not in message and "Traceback" not in message and path.name in message
    assert not set(returned) & set(clips_of(damaged))              # no clip of the damaged shard was trained on


def test_without_verification_a_damaged_header_is_still_one_clear_error(config):
    path = shard_file(root_of(config), 1)
    flip(path, 0, count=8)                                         # the header's length: unparseable
    cache = ClipCache(root_of(config), verify=False)
    with pytest.raises(DamagedCache, match=f"{path.name} is unreadable \\(SafetensorError"):
        cache.read(clips_of(1)[:1])


def test_each_shard_is_hashed_once_by_the_first_read_that_needs_it(config, monkeypatch):
    hashed = []
    monkeypatch.setattr(cache_layout, "sha256_file", lambda path: (hashed.append(path.name), sha256_file(path))[1])
    cache = ClipCache(root_of(config))
    assert hashed == []                                            # opening hashes nothing: seconds for any size
    loader = build_loader(cache, config, torch.device("cpu"))
    batches = iter(loader)
    seen = {i for _ in range(3 * NUM_SHARDS * SHARD_SIZE // config.training.batch_size)
            for i in next(batches)["index"].tolist()}              # three epochs, two worker threads
    shutdown(loader)
    assert len(seen) == NUM_SHARDS * SHARD_SIZE
    assert sorted(hashed) == sorted(shard_file(cache.root, s).name for s in range(NUM_SHARDS))


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_a_shard_cut_short_or_deleted_is_found_at_opening_and_made_again_alone(config, damage, monkeypatch, capsys):
    root, rng = root_of(config), random.Random(damage)
    shard = rng.randrange(NUM_SHARDS)
    path = shard_file(root, shard)
    original = path.read_bytes()
    if damage == "truncated":
        with open(path, "r+b") as f:
            f.truncate(rng.randrange(0, len(original)))
    else:
        path.unlink()
    with pytest.raises(DamagedCache, match=f"{path.name} (is missing|is \\d+ bytes, expected {len(original)})"):
        ClipCache(root)

    written = []
    write_shard = cache_build._write_shard
    monkeypatch.setattr(cache_build, "_write_shard", lambda root, shard, *args: (written.append(shard),
                                                                                   write_shard(root, shard, *args)))
    cache = build_cache(config, progress=False)
    assert written == [shard]
    assert f"warning: the clip cache at {root}: {path.name}" in capsys.readouterr().err
    assert same_shard(path.read_bytes(), original)           # decoding is deterministic: the very same clips
    assert inspect_cache(root, progress=False) == [] and len(cache) == NUM_SHARDS * SHARD_SIZE


@pytest.mark.parametrize("damage", ["deleted", "flipped", "not json"])
def test_a_deleted_or_damaged_manifest_is_made_again_from_the_records_without_decoding(config, damage, monkeypatch,
                                                                                      capsys):
    root = root_of(config)
    manifest_file = root / cache_module.MANIFEST
    original = manifest_file.read_bytes()
    if damage == "deleted":
        manifest_file.unlink()
    elif damage == "flipped":   # still valid JSON: one clip count changed, caught by the manifest's own checksum
        manifest_file.write_bytes(original.replace(b'"clips": 4', b'"clips": 5', 1))
    else:
        manifest_file.write_bytes(original[:len(original) // 2])
    if damage != "deleted":
        with pytest.raises(DamagedCache, match="manifest.json is damaged"):
            ClipCache(root)
    monkeypatch.setattr(cache_build, "_write_shard", lambda *args: pytest.fail("a shard was decoded again"))
    build_cache(config, progress=False)
    rebuilt, before = json.loads(manifest_file.read_bytes()), json.loads(original)
    for changed in ("vae", "checksum"):          # the VAE's absolute path: this copy's, not the pristine cache's
        rebuilt.pop(changed), before.pop(changed)
    assert rebuilt == before
    assert ("manifest.json is damaged" in capsys.readouterr().err) == (damage != "deleted")


def test_verify_lists_the_damage_and_repair_makes_only_that_again(config, monkeypatch):
    root = root_of(config)
    args = ["precompute", str(QUICKSTART)] + [a for o in cache_overrides(root.parents[1]) for a in ("--set", o)]
    flip(shard_file(root, 1), header_end(shard_file(root, 1)) + 10)
    flip(shard_file(root, 3), 20)                                  # in the header
    record_file(root, 0).write_text("{}")
    vae_weights = next(p for p in (root / "vae").iterdir() if p.suffix == ".safetensors")
    flip(vae_weights, vae_weights.stat().st_size - 5)
    untouched = shard_file(root, 2).stat().st_mtime_ns

    verified = runner.invoke(app, args + ["--verify"])
    assert verified.exit_code == 2
    assert "damaged files: 4" in verified.output
    for name in ["shard-00001.safetensors does not match", "shard-00003.safetensors does not match",
                 "shard-00000.json is missing, damaged", f"vae/{vae_weights.name} does not match"]:
        assert name in verified.output
    assert verified.output.strip().splitlines()[-1].startswith("error: 4 damaged file(s)")
    assert "fovea precompute --repair" in verified.output

    written = []
    write_shard = cache_build._write_shard
    monkeypatch.setattr(cache_build, "_write_shard", lambda root, shard, *a: (written.append(shard),
                                                                                write_shard(root, shard, *a)))
    repaired = runner.invoke(app, args + ["--repair"])
    assert repaired.exit_code == 0, repaired.output
    assert sorted(written) == [0, 1, 3] and shard_file(root, 2).stat().st_mtime_ns == untouched
    assert runner.invoke(app, args + ["--verify"]).exit_code == 0
    assert verify_cache(config, progress=False) == (root, NUM_SHARDS, [])


def test_two_writers_at_once_decode_each_shard_once(tmp_path, monkeypatch, capsys):
    config = fovea.load_config(QUICKSTART, cache_overrides(tmp_path))
    written = []
    write_shard = cache_build._write_shard

    def slow_write(root, shard, *args):
        written.append(shard)
        time.sleep(0.2)                        # the second writer arrives while the first holds the cache
        write_shard(root, shard, *args)

    monkeypatch.setattr(cache_build, "_write_shard", slow_write)
    results = []
    threads = [threading.Thread(target=lambda: results.append(build_cache(config, progress=False)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.1)
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == 2 and results[0].root == results[1].root
    assert sorted(written) == list(range(NUM_SHARDS))              # every shard written once, by one writer
    assert f"another precompute (pid {os.getpid()}) is writing the clip cache" in capsys.readouterr().err
    assert not list(results[0].root.glob(".vae-*")) and inspect_cache(results[0].root, progress=False) == []


# --- through the real command line, in a subprocess ---------------------------------------------

def fovea_subprocess(*args, **kwargs):
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "fovea", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=environment, **kwargs)


def set_args(overrides):
    return [a for o in overrides for a in ("--set", o)]


def test_a_second_precompute_waits_for_the_first_and_uses_its_cache(tmp_path, pristine):
    import fcntl

    config = fovea.load_config(QUICKSTART, cache_overrides(tmp_path))
    root = root_of(config)
    root.mkdir(parents=True)
    with open(root / cache_module.LOCK, "w") as lock:              # the first writer: this test
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write("4242\n")
        lock.flush()
        second = fovea_subprocess("precompute", str(QUICKSTART), *set_args(cache_overrides(tmp_path)))
        waiting = f"another precompute (pid 4242) is writing the clip cache at {root}"
        line = second.stderr.readline()
        while line and waiting not in line:                       # whatever a library says first
            line = second.stderr.readline()
        assert waiting in line
        for path in pristine.iterdir():                           # the first writer finishes the cache
            if path.name != cache_module.LOCK:
                (shutil.copytree if path.is_dir() else shutil.copy2)(path, root / path.name)
        written = {p.name: p.stat().st_mtime_ns for p in root.glob("shard-*")}
        fcntl.flock(lock, fcntl.LOCK_UN)
        out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert "clips: 16  skipped: 0" in out and "Traceback" not in err
    assert {p.name: p.stat().st_mtime_ns for p in root.glob("shard-*")} == written   # used, not written again


def test_a_run_stopped_by_a_damaged_shard_says_it_in_one_line_and_keeps_its_checkpoint(tmp_path, pristine):
    from fovea.core.checkpoint import read_checkpoint
    from fovea.core.rundir import RunDir
    from fovea.core.train import train

    config = fovea.load_config(QUICKSTART, cache_overrides(tmp_path, **{"training.save_every": "2"}))
    shutil.copytree(pristine, cache_path(config), symlinks=True)
    run = train(config)                                            # 4 steps, checkpoints at steps 2 and 4
    checkpoints = {p.relative_to(run.path): p.read_bytes() for p in run.checkpoints_dir.rglob("*") if p.is_file()}
    for shard in range(NUM_SHARDS):                                # whichever shard it reads first is damaged
        path = shard_file(root_of(config), shard)
        flip(path, header_end(path) + 1000, count=64)

    overrides = cache_overrides(tmp_path, **{"training.save_every": "2", "training.max_steps": "8"})
    result = fovea_subprocess("run", "--resume", str(run.path), *set_args(overrides))
    out, err = result.communicate(timeout=300)
    assert result.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the clip cache at ") and "Traceback" not in err
    assert "does not match the SHA-256" in lines[0] and "fovea precompute --repair" in lines[0]
    assert {p.relative_to(run.path): p.read_bytes() for p in run.checkpoints_dir.rglob("*") if p.is_file()} \
        == checkpoints                                             # no step after the damage, nothing saved
    assert read_checkpoint(RunDir.open(run.path).latest_checkpoint).step == 4


def test_a_damaged_cache_that_cannot_be_made_again_stops_the_run_before_its_directory(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(4):
        write_video(videos / f"clip{i}.mp4", num_frames=10)
    from tests.test_cache import videos_toml

    videos_toml(tmp_path)
    overrides = [o for o in cache_overrides(tmp_path, **{"data.path": f'"{videos}"', "data.shard_size": "2"})
                 if not o.startswith("data.num_clips")]
    config = fovea.load_config(tmp_path / "videos.toml", overrides)
    root = build_cache(config, progress=False).root
    shutil.rmtree(videos)                                          # the source is gone: nothing to decode again

    with open(shard_file(root, 1), "r+b") as f:
        f.truncate(100)
    result = fovea_subprocess("run", str(tmp_path / "videos.toml"), *set_args(overrides))
    out, err = result.communicate(timeout=300)
    assert result.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: the clip cache at {root} is damaged: shard-00001.safetensors is 100 bytes")
    assert "cannot be decoded again from its source: no video directory" in lines[0]
    assert not (tmp_path / "runs").exists()                        # a run that could not start leaves nothing

    (root / cache_module.MANIFEST).write_text("{")                  # the same, in process, for the manifest
    result = runner.invoke(app, ["run", str(tmp_path / "videos.toml"), *set_args(overrides)])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(f"error: the clip cache at {root} is damaged: manifest.json is damaged")
    assert not (tmp_path / "runs").exists()
