"""The frozen VAE made without pretrained weights: the ``pooling`` init is fixed, real (saved and loaded back
through ``from_pretrained``) and gives image-like latents; its caches and audits keep it apart from ``random``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import fovea
from fovea.core.cache import cache_key, cache_path
from fovea.core.errors import ConfigError
from fovea.core.vae import encode_latents, load_vae, save_random_vae
from fovea.plugins.data.synthetic import SyntheticShapes
from tests.helpers import QUICKSTART, tiny_overrides


def vae_config(tmp_path, init: str, seed: int = 0):
    return fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{"model.vae.init": f'"{init}"',
                                                                     "run.seed": str(seed)}))


@pytest.fixture(scope="module")
def frames():
    """32 synthetic 64 px frames (uint8, (N, 3, 64, 64))."""
    source = SyntheticShapes(SyntheticShapes.Config(num_clips=4), num_frames=8, frame_size=64, seed=0)
    return torch.cat([source[i].frames for i in range(4)])


def explained_by_pooled_pixels(latents: torch.Tensor, frames: torch.Tensor) -> float:
    """Share of the latents' variance that a least-squares affine map of the 8x8-pooled pixels explains."""
    pooled = F.avg_pool2d(frames.float() / 127.5 - 1, 8)                          # (N, 3, 8, 8)
    x = torch.cat([pooled.permute(0, 2, 3, 1).reshape(-1, 3), torch.ones(pooled[:, :1].numel(), 1)], dim=1)
    y = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])                # (N*h*w, C)
    fit = torch.linalg.lstsq(x.double(), y.double()).solution
    residual = (x.double() @ fit - y.double()).square().mean(0)
    return float(1 - (residual / y.double().var(0)).mean())


def test_pooling_init_is_the_same_for_every_seed_and_loads_back(tmp_path):
    first = save_random_vae(vae_config(tmp_path, "pooling", seed=0).model.vae, tmp_path / "a", seed=0)
    second = save_random_vae(vae_config(tmp_path, "pooling", seed=7).model.vae, tmp_path / "b", seed=7)
    a, b = load_vae(first), load_vae(second)                                       # through from_pretrained
    assert type(a).__name__ == "AutoencoderKL" and not any(p.requires_grad for p in a.parameters())
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)

    random_0 = load_vae(save_random_vae(vae_config(tmp_path, "random").model.vae, tmp_path / "r", seed=0))
    assert not all(torch.equal(state_a[k], v) for k, v in random_0.state_dict().items())


def test_pooling_latents_are_the_pooled_frame_and_a_random_vaes_are_not(tmp_path, frames):
    pooling = load_vae(save_random_vae(vae_config(tmp_path, "pooling").model.vae, tmp_path / "p", seed=0))
    latents = encode_latents(pooling, frames, batch_size=16)                       # (N, 4, 8, 8)
    pooled = F.avg_pool2d(frames.float() / 127.5 - 1, 8)                           # (N, 3, 8, 8)
    torch.testing.assert_close(latents, torch.cat([pooled, pooled.mean(1, keepdim=True)], 1), atol=1e-4, rtol=0)
    assert explained_by_pooled_pixels(latents, frames) > 0.99

    # the reason for the init: a random VAE's latents are mostly not a linear function of the image
    random = load_vae(save_random_vae(vae_config(tmp_path, "random").model.vae, tmp_path / "r", seed=0))
    assert explained_by_pooled_pixels(encode_latents(random, frames, batch_size=16), frames) < 0.5


def test_pooling_decoder_gives_the_frame_back_up_to_each_colours_mean(tmp_path, frames):
    vae = load_vae(save_random_vae(vae_config(tmp_path, "pooling").model.vae, tmp_path / "p", seed=0))
    latents = encode_latents(vae, frames, batch_size=16)
    with torch.no_grad():
        decoded = vae.decode(latents / vae.config.scaling_factor).sample            # (N, 3, 64, 64)
    upsampled = F.interpolate(F.avg_pool2d(frames.float() / 127.5 - 1, 8), scale_factor=8, mode="nearest")
    expected = upsampled - upsampled.mean((2, 3), keepdim=True)
    torch.testing.assert_close(decoded, expected, atol=1e-3, rtol=0)


def test_cache_key_tells_the_inits_apart(tmp_path):
    random, pooling = vae_config(tmp_path, "random"), vae_config(tmp_path, "pooling")
    assert cache_key(random)["vae"]["init"] == "random" and cache_key(pooling)["vae"]["init"] == "pooling"
    assert cache_path(random) != cache_path(pooling)


def test_pooling_init_with_pretrained_weights_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="init"):
        fovea.load_config(QUICKSTART, tiny_overrides(tmp_path, **{"model.vae.init": '"pooling"',
                                                                   "model.vae.pretrained": '"some/vae"'}))


@pytest.mark.parametrize("made_as", ["pooling", "random"])
def test_audit_compares_the_runs_vae_with_the_same_init(tmp_path, made_as):
    from fovea.core.rundata import load_run_vae

    used = save_random_vae(vae_config(tmp_path, made_as).model.vae, tmp_path / "cache" / "vae", seed=0)
    run = SimpleNamespace(path=tmp_path / "run")
    _, origin, change = load_run_vae(run, vae_config(tmp_path, "pooling"), {"vae": str(used)})
    assert "pooling" in origin
    assert (change == 0) == (made_as == "pooling")
