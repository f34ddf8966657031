"""What a run read, for the commands that read a run (audit, viz): its first clips and the VAE of its targets.

``first_clips`` is the one reader of "the first N clips" of a run (its clip cache while that is on disk, else
its clip source through the clip contract); ``load_run_vae`` the VAE that made the run's targets, and
``clip_latents`` encodes frames with it as the cache does. Layout and file names belong to ``rundir``.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from fovea.core.config import FoveaConfig
from fovea.core.errors import FoveaError
from fovea.core.rundir import RunDir


@dataclass
class RunClips:
    """The first clips of a run, as ``first_clips`` found them."""

    frames: torch.Tensor              # (B, T, 3, S, S) uint8
    latents: torch.Tensor | None      # (B, T, C, h, w) float32 from the run's cache; None when decoded from the source
    captions: list[str | None]        # None where a clip has no caption
    origin: str                       # where they came from, in words


def first_clips(run: RunDir, count: int, config: FoveaConfig | None = None) -> RunClips:
    """The first ``count`` clips of the run's data: from its clip cache (named in ``data_report.json``) while
    that is on disk, else decoded from its clip source (``config``, default the run's own) and checked
    against the clip contract. A ``FoveaError`` (or a plugin's error) when fewer than ``count`` can be read."""
    import itertools

    from fovea.core.cache import MANIFEST, ClipCache
    from fovea.core.data import iter_clips

    report = run.read_json(run.data_report_file) or {}
    root = Path(report["cache"]) if isinstance(report.get("cache"), str) else None
    if root is not None and (root / MANIFEST).is_file():
        cache = ClipCache(root)
        if len(cache) >= count:
            batch = cache.read(list(range(count)))
            return RunClips(batch["frames"], batch["latents"].float(), list(batch["captions"]),
                            f"the first {count} clips of the run's clip cache ({root})")
    if config is None:
        from fovea.core.config import load_config

        config = load_config(run.config_file)
    read = list(itertools.islice(iter_clips(config), count))
    if len(read) < count:
        raise FoveaError(f"the `{config.data.name}` source has fewer than {count} readable clips")
    listed = ", ".join(str(index) for index, _ in read)
    return RunClips(torch.stack([clip.frames for _, clip in read]), None, [clip.caption for _, clip in read],
                    f"{count} clips of the `{config.data.name}` source (clips {listed})")


def load_run_vae(run: RunDir, config: FoveaConfig, data_report: dict | None):
    """The VAE of the run's targets through ``load_vae``, where it came from, and its change from init.

    A pretrained VAE is loaded from ``model.vae.pretrained``. One without weights was made by
    ``save_random_vae`` as ``model.vae.init`` says (seeded by ``run.seed``, or the fixed ``pooling`` init): the
    audit makes that VAE again, with the same init (in a temporary directory) and,
    when the run's own copy is still on disk (the clip cache's ``vae/`` named in ``data_report.json``, or
    an older run's ``vae/``), loads that copy and measures how far it is from the seeded one.
    """
    from fovea.core import vae as vae_lib   # through the module: tests replace load_vae

    if config.model.vae.pretrained:
        return vae_lib.load_vae(config.model.vae.pretrained), f"`{config.model.vae.pretrained}` (model.vae.pretrained)", None
    candidates = []
    if data_report and isinstance(data_report.get("vae"), str):
        candidates.append(Path(data_report["vae"]))
    candidates.append(run.path / "vae")
    used = next((c for c in candidates if (c / "config.json").is_file()), None)
    with tempfile.TemporaryDirectory(prefix="fovea-audit-vae-") as tmp:
        seeded = vae_lib.save_random_vae(config.model.vae, Path(tmp) / "vae", config.run.seed)
        reference = vae_lib.load_vae(seeded)
        if used is None:
            origin = f"{_vae_init(config)} made again (the run's copy is not on disk here)"
            return reference, origin, 0.0
        vae = vae_lib.load_vae(used)
    reference_state = reference.state_dict()
    state = vae.state_dict()
    if state.keys() != reference_state.keys():
        change = math.inf
    else:
        change = max((float((state[k].float() - reference_state[k].float()).abs().max()) if state[k].numel() else 0.0)
                     for k in state) if state else 0.0
    return vae, f"`{used}` ({_vae_init(config)})", change


def _vae_init(config: FoveaConfig) -> str:
    """How a VAE without weights was initialised, in words."""
    vae = config.model.vae
    if vae.init == "random":
        return f"random `{vae.size}` VAE from run.seed"
    return f"`{vae.size}` VAE with the fixed `{vae.init}` init (model.vae.init)"


def clip_latents(vae, frames: torch.Tensor, config: FoveaConfig) -> torch.Tensor:
    """Latents (B, T, C, h, w) float32 of uint8 frames (B, T, 3, S, S), computed by ``vae`` as the cache does."""
    from fovea.core.vae import encode_latents

    B, T = frames.shape[:2]
    with torch.no_grad():
        latents = encode_latents(vae, frames.flatten(0, 1), config.model.vae.batch_size)   # (B*T, C, h, w)
    return latents.view(B, T, *latents.shape[1:]).float()
