"""Shared fixtures: tiny configs, a tiny model and a batch of synthetic clips."""

from __future__ import annotations

import pytest
import torch

import fovea

from tests.helpers import QUICKSTART, tiny_overrides


@pytest.fixture
def tiny_config(tmp_path):
    return fovea.load_config(QUICKSTART, tiny_overrides(tmp_path))


@pytest.fixture
def tiny_model(tiny_config):
    return fovea.build_model(tiny_config).eval()


@pytest.fixture
def tiny_batch(tiny_config):
    """Two synthetic clips (B=2, T=8, 64 px) and random stand-in latents of the model's latent shape."""
    from fovea.core.data import read_clips
    from fovea.core.vae import latent_shape

    frames = read_clips(tiny_config)[:2]                                          # (2, T, 3, S, S) uint8
    g = torch.Generator().manual_seed(0)
    shape = latent_shape(tiny_config.model.vae, tiny_config.data.frame_size)
    latents = torch.randn(2, tiny_config.data.num_frames, *shape, generator=g)   # (2, T, C, h, w)
    return frames, latents
