"""The frozen Stable Diffusion VAE: its latents of the frames are the prediction targets.

SPEC.md "Components": ``stabilityai/sd-vae-ft-mse`` (diffusers ``AutoencoderKL``), always frozen, used
only to precompute targets: ``latent_dist.mean * scaling_factor`` (deterministic).

Without ``pretrained`` weights a VAE of the named ``size`` is made here, saved with ``save_pretrained`` and
loaded back like any other (``model.vae.init``): seeded random weights, or ``pooling`` — a fixed
initialisation whose latent is the frame average-pooled over 8 x 8 pixels, image-like as the SD-VAE's
latents are (a random VAE's latents are close to noise with respect to the frames' motion; see
docs/quickstart.md).
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
    """Initialise a VAE of ``config.size`` as ``config.init`` says and ``save_pretrained`` it into ``directory``:
    ``random`` from ``seed``, ``pooling`` the same weights for every seed (``init_pooling_vae``)."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**vae_architecture(config))
    if config.init == "pooling":
        init_pooling_vae(vae)
    vae.save_pretrained(directory)
    return directory


# ``pooling``: every block of the AutoencoderKL kept, its weights set so that it computes a fixed linear map.
# - Each ResNet block's second conv is zero, so the block is its residual (the 1x1 shortcut, where the width
#   changes, passes the first channels through); each attention's output projection is zero (its residual).
# - Each ``Downsample2D`` conv (3x3, stride 2, input padded by one row and column at the bottom and right)
#   averages its 2x2 window; each ``Upsample2D`` conv after the nearest-neighbour x2 passes through.
# - The GroupNorm before ``conv_out`` normalises by sqrt(var + eps) per group: the signal is carried at
#   ``_QUIET`` x sqrt(eps), so var << eps and the norm is a fixed scaling (to 1e-4) that subtracts the group
#   mean. Each signal channel shares its group with a channel that is zero before the norm and so holds minus
#   that mean after it: their difference is the signal, exactly linear. The norm's bias puts the SiLU after
#   it at ``_SILU_LINEAR``, where SiLU(z) = z to 1e-5.
_QUIET = 0.01
_SILU_LINEAR = 16.0
_LOG_VARIANCE = -20.0   # the posterior's log-variance: a sample is the mean to exp(-10)


def init_pooling_vae(vae) -> None:
    """Set ``vae``'s weights in place so that ``latent_dist.mean * scaling_factor`` is the frame (in [-1, 1])
    average-pooled over 2^(blocks-1) pixels: channels R, G, B and luminance (their mean), and the decoder
    upsamples a latent back by nearest neighbour. Needs 4 latent channels and an encoder whose last
    GroupNorm has at least 4 groups; every weight is set, none depends on the seed.

    The decoder's last GroupNorm has one channel per group at the ``tiny`` size, so each channel's mean over
    the frame is lost there: a decoded frame shows the pooled frame with each colour's mean set to 0 (mid-grey).
    """
    from torch import nn

    arch = vae.config
    if arch.latent_channels != 4 or arch.in_channels != 3 or arch.out_channels != 3:
        raise ValueError("the pooling init needs an RGB AutoencoderKL with 4 latent channels")
    scale = arch.scaling_factor
    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        for m in vae.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.fill_(1.0)
            if getattr(m, "conv_shortcut", None) is not None:                # a ResNet block changing width
                _identity(m.conv_shortcut)
        for block in vae.encoder.down_blocks:
            for down in block.downsamplers or []:
                for i in range(min(down.conv.in_channels, down.conv.out_channels)):
                    down.conv.weight[i, i, :2, :2] = 0.25                    # the 2x2 window
        for block in vae.decoder.up_blocks:
            for up in block.upsamplers or []:
                _identity(up.conv)
        _identity(vae.quant_conv)
        _identity(vae.post_quant_conv)

        # encoder: R, G, B, luminance, each on the first channel of its own group of the last GroupNorm
        norm, conv_in, conv_out = vae.encoder.conv_norm_out, vae.encoder.conv_in, vae.encoder.conv_out
        group = norm.num_channels // norm.num_groups
        if norm.num_groups < 4 or group < 2:
            raise ValueError("the pooling init needs the encoder's last GroupNorm to have 4+ groups of 2+ channels")
        quiet = _QUIET * norm.eps ** 0.5
        rgb_l = torch.cat([torch.eye(3), torch.full((1, 3), 1 / 3)])        # (4, 3)
        for k in range(4):
            conv_in.weight[k * group, :, 1, 1] = quiet * rgb_l[k]
        norm.weight.fill_(1 / _QUIET)
        norm.bias.fill_(_SILU_LINEAR)
        for k in range(4):   # the signal's channel minus its zero partner's: the signal; the bias cancels
            conv_out.weight[k, k * group, 1, 1] = 1 / scale
            conv_out.weight[k, k * group + 1, 1, 1] = -1 / scale
        conv_out.bias[4:] = _LOG_VARIANCE

        # decoder: the latent's R, G, B (times scaling_factor: latents are decoded divided by it) on the first
        # channel of a group of its last GroupNorm, with the zero partner when groups have two channels or more
        norm, conv_in, conv_out = vae.decoder.conv_norm_out, vae.decoder.conv_in, vae.decoder.conv_out
        group = norm.num_channels // norm.num_groups
        quiet = _QUIET * norm.eps ** 0.5
        for k in range(3):
            conv_in.weight[k * group, k, 1, 1] = quiet * scale
            conv_out.weight[k, k * group, 1, 1] = 1.0
            if group > 1:
                conv_out.weight[k, k * group + 1, 1, 1] = -1.0
            else:
                conv_out.bias[k] = -_SILU_LINEAR
        norm.weight.fill_(1 / _QUIET)
        norm.bias.fill_(_SILU_LINEAR)


def _identity(conv) -> None:
    """A conv that passes its first min(in, out) channels through (the centre tap) and adds nothing."""
    conv.weight.zero_()
    conv.bias.zero_()
    centre = (conv.kernel_size[0] // 2, conv.kernel_size[1] // 2)
    for i in range(min(conv.in_channels, conv.out_channels)):
        conv.weight[i, i, centre[0], centre[1]] = 1.0


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
