"""`wrap_encoder`: the one way probes and the profiler watch the encoder during the real forward."""

from __future__ import annotations

import pytest
import torch

from fovea.core.instrument import wrap_encoder


def test_wrappers_see_every_call_nest_and_leave_the_encoder_as_it_was(tiny_model, tiny_batch):
    frames, latents = tiny_batch
    encoder = tiny_model.encoder
    seen: list[str] = []

    def outer(attend, queries, cache, *args, **kwargs):
        seen.append("outer")
        return attend(queries, cache, *args, **kwargs)

    def inner(attend, queries, cache, *args, **kwargs):
        seen.append("inner")
        return attend(torch.zeros_like(queries), cache, *args, **kwargs)   # changes what pass 1 and 2 read

    with torch.no_grad():
        plain = tiny_model(frames, latents).loss
        with wrap_encoder(encoder, attend=outer):
            with wrap_encoder(encoder, attend=inner):
                zeroed = tiny_model(frames, latents).loss
            assert seen == ["inner", "outer", "inner", "outer"]          # two passes, innermost first
            assert torch.equal(tiny_model(frames, latents).loss, plain)  # the outer wrap alone changes nothing
        assert "attend" not in vars(encoder)                              # the class's method again
        assert torch.equal(tiny_model(frames, latents).loss, plain)
    assert not torch.equal(zeroed, plain)
    with pytest.raises(ValueError, match="not forward"):
        with wrap_encoder(encoder, forward=outer):
            pass
