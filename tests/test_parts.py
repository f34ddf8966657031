"""Contract tests over every registered encoder, head and clip source, at tiny sizes (timm's habit)."""

from __future__ import annotations

import pytest
import torch

from fovea.core.plugins import get_parts

ENCODERS = sorted(get_parts("encoder"))
HEADS = sorted(get_parts("head"))
SOURCES = sorted(get_parts("source"))


def tiny_options(cls, **extra):
    """The part's Config at its debug size where it has one."""
    fields = cls.Config.model_fields
    return cls.Config(**({"size": "tiny"} if "size" in fields else {}), **extra)


def assert_gradients_reach(module: torch.nn.Module):
    missing = [n for n, p in module.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, f"no gradient reached: {missing}"


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_contract(name):
    torch.manual_seed(0)
    cls = get_parts("encoder")[name].cls
    encoder = cls(tiny_options(cls)).eval()
    assert isinstance(encoder.dim, int)
    frames = torch.rand(3, 3, 64, 64)                                   # (N, 3, H, W) in [0, 1]
    queries = torch.randn(3, encoder.dim)
    cache = encoder.encode(frames)
    features = encoder.attend(queries, cache)                           # (N, D), or K tokens per frame (N, K, D)
    assert features.shape[0] == 3 and features.shape[-1] == encoder.dim and features.dim() in (2, 3)
    assert torch.isfinite(features).all()

    features2, attention = encoder.attend(queries, cache, return_attention=True)
    torch.testing.assert_close(features2, features)
    assert attention.ndim == 2 and attention.shape[0] == 3
    assert (attention >= 0).all()
    torch.testing.assert_close(attention.sum(-1), torch.ones(3))

    (features.square().mean() + attention.sum()).backward()
    assert_gradients_reach(encoder)


@pytest.mark.parametrize("name", [n for n in ENCODERS if getattr(get_parts("encoder")[n].cls, "uses_query", True)])
def test_builtin_encoder_query_projections_follow_the_spec(name):   # the query-free baselines have no query path
    cls = get_parts("encoder")[name].cls
    encoder = cls(tiny_options(cls))
    assert encoder.query_input_proj.bias is None                        # SPEC: no bias (failure mode)
    assert encoder.query_output_proj.in_features == encoder.dim
    frozen = cls(tiny_options(cls, trainable=False))
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    assert frozen.query_input_proj.weight.requires_grad                 # the query path always trains


@pytest.mark.parametrize("name", HEADS)
def test_head_contract(name):
    torch.manual_seed(0)
    cls = get_parts("head")[name].cls
    head = cls(cls.Config(), hidden_size=16, latent_channels=4)
    hidden, prev = torch.randn(5, 16), torch.randn(5, 4, 8, 8)
    pred = head(hidden, prev)
    assert pred.shape == (5, 4, 8, 8) and torch.isfinite(pred).all()
    pred.square().mean().backward()
    assert_gradients_reach(head)


def test_film_head_has_the_spec_shape():
    from fovea.plugins.heads.film import FiLMHead

    head = FiLMHead(FiLMHead.Config(), hidden_size=576, latent_channels=4)
    assert [m.out_features for m in head.h_to_film if isinstance(m, torch.nn.Linear)] == [512, 512]
    assert [m.out_channels for m in head.encoder if isinstance(m, torch.nn.Conv2d)] == [64, 128, 256]
    assert [m.out_channels for m in head.decoder if isinstance(m, torch.nn.Conv2d)] == [128, 64, 4]
    # FiLM: the hidden state changes the prediction, so it is a conditioning, not a bias-free copy
    prev = torch.randn(2, 4, 32, 32)
    assert not torch.allclose(head(torch.randn(2, 576), prev), head(torch.randn(2, 576), prev))


@pytest.fixture(scope="module")
def source_options(tmp_path_factory):
    """Options that give each built-in clip source something to read; third-party sources get their defaults."""
    from tests.helpers import write_video

    videos = tmp_path_factory.mktemp("videos")
    write_video(videos / "clip.mp4", num_frames=12)
    return {"videos": {"path": str(videos)}}


@pytest.mark.parametrize("name", SOURCES)
def test_source_contract(name, source_options):
    from fovea.core.data import Clip

    cls = get_parts("source")[name].cls
    options = cls.Config(**source_options.get(name, {}))
    source = cls(options, num_frames=4, frame_size=32, seed=1)
    assert len(source) > 0
    clip = source[0]
    assert isinstance(clip, Clip) and clip.source
    assert clip.frames.dtype == torch.uint8 and clip.frames.shape == (4, 3, 32, 32)
    assert len(clip.frame_indices) == 4
    assert torch.equal(clip.frames, cls(options, num_frames=4, frame_size=32, seed=1)[0].frames)   # deterministic


def test_synthetic_clips_move_and_differ():
    from fovea.plugins.data.synthetic import SyntheticShapes

    source = SyntheticShapes(SyntheticShapes.Config(num_objects=3), num_frames=8, frame_size=64, seed=0)
    clip = source[0].frames.float()
    assert (clip[1:] - clip[:-1]).abs().sum(dim=(1, 2, 3)).min() > 0      # something moves every frame
    assert not torch.equal(source[0].frames, source[1].frames)            # clips differ
    other_seed = SyntheticShapes(source.config, num_frames=8, frame_size=64, seed=1)
    assert not torch.equal(source[0].frames, other_seed[0].frames)
    assert len(torch.unique(clip.flatten(1).T, dim=0)) >= 3               # background + several colours
    with pytest.raises(IndexError):
        source[len(source)]
