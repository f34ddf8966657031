"""Reading a complete clip cache: ``ClipCache``, random access to clips by index, verified shard by shard."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from fovea.core.cache.layout import REPAIR_FIX, DamagedCache, check_shard, read_manifest, shard_file


class ClipCache:
    """A complete cache: random access to clips by index, thread-safe, memory-mapped.

    Opening it checks the manifest and every shard's size (``DamagedCache`` if any is wrong). With
    ``verify`` (the default) each shard is hashed once, by the first read that needs it, before any of
    its clips is returned: a damaged shard raises ``DamagedCache`` from ``read``, never its data.
    ``store`` (``fovea.core.cache.stream.ShardStore``): the cache lives under a URL and ``root`` is the local
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
