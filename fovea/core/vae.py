"""The frozen Stable Diffusion VAE: its latents of the frames are the prediction targets.

SPEC.md "Components": ``stabilityai/sd-vae-ft-mse`` (diffusers ``AutoencoderKL``), always frozen, used
only to precompute targets: ``latent_dist.mean * scaling_factor`` (deterministic).
"""

from __future__ import annotations

from pathlib import Path

import torch

from fovea.core.config import VAEConfig
from fovea.core.pretrained import load_pretrained

SIZES: dict[str, dict] = {
    # debug size: 4 blocks like SD, so latents are frame_size / 8 with 4 channels
    "tiny": dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8, sample_size=64),
    # stabilityai/sd-vae-ft-mse's architecture
    "sd": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=256),
}
_COMMON = dict(in_channels=3, out_channels=3, latent_channels=4, scaling_factor=0.18215,
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def vae_architecture(config: VAEConfig) -> dict:
    """The VAE's diffusers config: read from ``pretrained`` (no weights loaded) or the ``size`` preset."""
    if config.pretrained:
        from diffusers import AutoencoderKL

        return dict(load_pretrained(AutoencoderKL.load_config, config.pretrained, "VAE config",
                                    "model.vae.pretrained"))
    return {**_COMMON, **SIZES[config.size]}


def latent_shape(config: VAEConfig, frame_size: int) -> tuple[int, int, int]:
    """(C, h, w) of one frame's latent: each encoder block but the last halves the resolution."""
    arch = vae_architecture(config)
    side = frame_size // 2 ** (len(arch["block_out_channels"]) - 1)
    return arch["latent_channels"], side, side


def save_random_vae(config: VAEConfig, directory: Path, seed: int) -> Path:
    """Initialise a VAE of ``config.size`` from ``seed`` and ``save_pretrained`` it into ``directory``."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        AutoencoderKL(**vae_architecture(config)).save_pretrained(directory)
    return directory


def load_vae(pretrained: str | Path, device: torch.device | str = "cpu"):
    """A frozen ``AutoencoderKL`` in eval mode from a hub id or ``save_pretrained`` directory."""
    from diffusers import AutoencoderKL

    vae = load_pretrained(lambda p: AutoencoderKL.from_pretrained(p, low_cpu_mem_usage=False), str(pretrained),
                          "VAE", "model.vae.pretrained")
    return vae.to(device).eval().requires_grad_(False)


@torch.no_grad()
def encode_latents(vae, frames: torch.Tensor, batch_size: int) -> torch.Tensor:
    """uint8 frames (N, 3, H, W) -> float32 latents (N, C, h, w), ``batch_size`` frames per forward
    (in float32 on every device: the targets are made once and must not depend on where)."""
    device = next(vae.parameters()).device
    latents = []
    for chunk in frames.split(batch_size):  # chunks of frames, not one frame at a time
        pixels = chunk.to(device, non_blocking=True).float().div(127.5).sub(1.0)   # [-1, 1] as SD expects
        mean = vae.encode(pixels).latent_dist.mean
        latents.append((mean.float() * vae.config.scaling_factor).cpu())
    return torch.cat(latents)
