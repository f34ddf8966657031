"""The clip cache: every clip decoded once, with its VAE latents, in shards that stream fast.

``<data.cache_dir>/<source>-<key>/`` holds ``shard-00000.safetensors`` … (uint8 ``frames``
(n, T, 3, S, S) and float32 ``latents`` (n, T, C, h, w); the clips' source paths, frame indices and
the skipped items with their reasons in the shard's metadata), ``key.json`` (what the cache was made
from), ``vae/`` (a random-initialised VAE, when the config names none) and, once every shard is
written, ``manifest.json``. A shard is written to a temp file, fsynced and renamed, so a shard file
that exists is complete: an interrupted ``fovea precompute`` resumes at the first missing shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from fovea.core.config import FoveaConfig
from fovea.core.data import SkipClip, build_source, check_clip
from fovea.core.errors import FoveaError
from fovea.core.files import atomic_write

CACHE_VERSION = 1
MANIFEST = "manifest.json"


def cache_key(config: FoveaConfig) -> dict[str, Any]:
    """Everything that decides the cache's content; a change of any of it makes a new cache."""
    vae = config.model.vae
    return {
        "version": CACHE_VERSION,
        "source": config.data.name,
        "options": config.data.options.model_dump(mode="json"),
        "num_frames": config.data.num_frames,
        "frame_size": config.data.frame_size,
        "seed": config.run.seed,
        "vae": {"pretrained": vae.pretrained} if vae.pretrained else {"size": vae.size, "init": vae.init, "seed": config.run.seed},
    }


def cache_path(config: FoveaConfig) -> Path:
    digest = hashlib.sha256(json.dumps(cache_key(config), sort_keys=True).encode()).hexdigest()[:12]
    return Path(config.data.cache_dir) / f"{config.data.name}-{digest}"


def shard_file(root: Path, shard: int) -> Path:
    return root / f"shard-{shard:05d}.safetensors"


class ClipCache:
    """A complete cache on disk: random access to clips by index, thread-safe, memory-mapped."""

    def __init__(self, root: Path):
        self.root = root
        try:
            self.manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
            self._shards = [(shard_file(root, s["shard"]), s["clips"]) for s in self.manifest["shards"]]
        except (OSError, ValueError, KeyError) as exc:
            raise FoveaError(f"the clip cache at {root} is unreadable ({exc}); delete that directory and run "
                             f"`fovea precompute` again") from None
        counts = torch.tensor([count for _, count in self._shards])
        self._starts = torch.cumsum(counts, 0) - counts                    # first clip index of each shard
        self._local = threading.local()                                    # one set of open shards per thread

    def __len__(self) -> int:
        return self.manifest["num_clips"]

    @property
    def vae(self) -> str:
        """The VAE whose latents the cache holds: hub id or directory."""
        return self.manifest["vae"]

    def _open(self, shard: int):
        from safetensors import safe_open

        handles = self._local.__dict__.setdefault("handles", {})
        if shard not in handles:
            handles[shard] = safe_open(str(self._shards[shard][0]), framework="pt")
        return handles[shard]

    def read(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """Clips ``indices`` -> {"frames": (B, T, 3, S, S) uint8, "latents": (B, T, C, h, w), "index": (B,)}."""
        index = torch.as_tensor(indices)
        shards = torch.searchsorted(self._starts, index, right=True) - 1   # (B,)
        frames, latents = [], []
        for clip, shard in zip(index.tolist(), shards.tolist()):           # one slice read per clip
            handle, row = self._open(shard), clip - int(self._starts[shard])
            frames.append(handle.get_slice("frames")[row:row + 1])
            latents.append(handle.get_slice("latents")[row:row + 1])
        return {"frames": torch.cat(frames), "latents": torch.cat(latents), "index": index}

    def clip_info(self) -> list[dict[str, Any]]:
        """Source and frame indices of every cached clip, in cache order."""
        return [clip for shard in self.manifest["shards"] for clip in shard["clip_info"]]

    def report(self) -> dict[str, Any]:
        """The data report: how many clips, and every skipped item with its reason."""
        return {"cache": str(self.root), "vae": self.vae, "num_clips": len(self),
                "num_skipped": len(self.manifest["skipped"]), "skipped": self.manifest["skipped"]}


def build_cache(config: FoveaConfig, device: torch.device | str = "cpu", progress: bool = True) -> ClipCache:
    """The cache for ``config``: opened if complete, else written (resuming from complete shards)."""
    root = cache_path(config).resolve()   # absolute: run directories record it
    if (root / MANIFEST).is_file():
        return ClipCache(root)
    source = build_source(config)   # a missing video directory fails here, before anything is written
    root.mkdir(parents=True, exist_ok=True)
    (root / "key.json").write_text(json.dumps(cache_key(config), indent=2) + "\n", encoding="utf-8")
    shard_size = config.data.shard_size
    num_shards = -(-len(source) // shard_size)
    vae_id = config.model.vae.pretrained or str(root / "vae")
    vae = None

    from tqdm.auto import tqdm

    bar = tqdm(total=len(source), desc=f"precompute {root.name}", unit="clip", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, config.data.num_workers)) as pool:
        for shard in range(num_shards):
            indices = range(shard * shard_size, min(len(source), (shard + 1) * shard_size))
            if shard_file(root, shard).is_file():
                bar.update(len(indices))
                continue
            if vae is None:
                vae = _load_cache_vae(config, root, device)
            clips, skipped = [], []
            for result in pool.map(lambda i: _read(source, i, config), indices):   # decoded in parallel
                (skipped if isinstance(result, dict) else clips).append(result)
                bar.update()
            _write_shard(root, shard, clips, skipped, vae, config)
    bar.close()

    manifest = _collect_manifest(root, num_shards, vae_id)
    if manifest["num_clips"] == 0:
        reasons = "; ".join(f"{s['source'] or s['index']}: {s['reason']}" for s in manifest["skipped"][:5])
        raise FoveaError(f"no clip of the '{config.data.name}' source could be read ({reasons}); "
                         f"check the files under [data] and the report in {root}")
    atomic_write(root / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return ClipCache(root)


def _read(source, index: int, config: FoveaConfig):
    """The clip, or a report entry saying why it was skipped."""
    try:
        return check_clip(source[index], config)
    except SkipClip as exc:
        return {"index": index, "source": exc.source, "reason": exc.reason}


def _load_cache_vae(config: FoveaConfig, root: Path, device):
    """The frozen VAE: the configured one, or a seeded random one saved into the cache and loaded back."""
    from fovea.core.vae import load_vae, save_random_vae

    if config.model.vae.pretrained:
        return load_vae(config.model.vae.pretrained, device)
    if not (root / "vae" / "config.json").is_file():
        tmp = root / f".vae-{os.getpid()}"
        save_random_vae(config.model.vae, tmp, config.run.seed)
        os.replace(tmp, root / "vae")
    return load_vae(root / "vae", device)


def _write_shard(root: Path, shard: int, clips: list, skipped: list, vae, config: FoveaConfig) -> None:
    from safetensors.torch import save

    from fovea.core.vae import encode_latents, latent_shape

    T, S = config.data.num_frames, config.data.frame_size
    if clips:
        frames = torch.stack([c.frames for c in clips])                                   # (n, T, 3, S, S)
        latents = encode_latents(vae, frames.flatten(0, 1), config.model.vae.batch_size)  # (n*T, C, h, w)
        latents = latents.view(len(clips), T, *latents.shape[1:])                         # (n, T, C, h, w)
    else:  # every file of this shard was skipped: an empty shard keeps the numbering
        frames = torch.zeros(0, T, 3, S, S, dtype=torch.uint8)
        latents = torch.zeros(0, T, *latent_shape(config.model.vae, S))
    info = [{"source": c.source, "frame_indices": c.frame_indices} for c in clips]
    metadata = {"clip_info": json.dumps(info), "skipped": json.dumps(skipped)}
    data = save({"frames": frames.contiguous(), "latents": latents.contiguous()}, metadata=metadata)
    atomic_write(shard_file(root, shard), data)


def _collect_manifest(root: Path, num_shards: int, vae_id: str) -> dict[str, Any]:
    from safetensors import safe_open

    shards, skipped, total = [], [], 0
    for shard in range(num_shards):
        with safe_open(str(shard_file(root, shard)), framework="pt") as f:
            meta = f.metadata()
            count = f.get_slice("frames").get_shape()[0]
        shards.append({"shard": shard, "clips": count, "clip_info": json.loads(meta["clip_info"])})
        skipped += json.loads(meta["skipped"])
        total += count
    return {"version": CACHE_VERSION, "num_clips": total, "vae": vae_id, "shards": shards, "skipped": skipped}
