"""The ``synthetic`` source's options for the foveation positive control: still objects, look-alikes and the
grid world with signs (configs/foveation_demo.toml). The default clips are pinned in test_captions_data.py."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from fovea.core.errors import ConfigError
from fovea.plugins.data.synthetic import BACKGROUND, GRID_COLOURS, GRID_DIRECTIONS, GRID_STEPS, SyntheticShapes

BG = round(BACKGROUND * 255)


def source(num_frames=8, frame_size=64, seed=0, **options) -> SyntheticShapes:
    return SyntheticShapes(SyntheticShapes.Config(num_clips=16, **options), num_frames=num_frames,
                           frame_size=frame_size, seed=seed)


def test_the_new_options_at_their_defaults_change_nothing():
    plain, spelled = source(), source(moving_objects=None, same_look=False, grid_cell=0, cue=False)
    for i in range(4):
        assert torch.equal(plain[i].frames, spelled[i].frames) and plain[i].caption == spelled[i].caption


def test_still_objects_and_look_alikes():
    frames = source(num_objects=1, moving_objects=0)[3].frames
    assert all(torch.equal(frames[0], f) for f in frames)                      # the only object is still
    alike = source(num_objects=3, same_look=True, moving_objects=1)[5]
    colours = {tuple(p.tolist()) for p in alike.frames[0].flatten(1).T} - {(BG, BG, BG)}
    assert len(colours) == 1                                                   # one colour for all
    words = alike.caption.split(". ")[1:]
    assert len({w.split(" moves")[0].split(" is still")[0] for w in words}) == 1, alike.caption
    assert sum("is still" in w for w in words) == 2, alike.caption


def cells(frames: torch.Tensor, cell: int) -> torch.Tensor:
    """uint8 frames (T, 3, S, S) -> each cell's mean colour (T, G, G, 3), as 8x8 pooling sees it."""
    return torch.nn.functional.avg_pool2d(frames.double(), cell).permute(0, 2, 3, 1)


def where(cell_means: torch.Tensor, colour) -> tuple[int, int]:
    """The (row, column) of the cell of ``colour`` (exactly one)."""
    hits = (cell_means == torch.tensor(colour, dtype=cell_means.dtype)).all(dim=-1).nonzero().tolist()
    assert len(hits) == 1, hits
    return tuple(hits[0])


def sign_of(frames: torch.Tensor, cell: int, tile: int, row: int, col: int) -> int:
    """The direction the cell's sign points: where its tiles' bright half is."""
    block = frames[:, row * cell:(row + 1) * cell, col * cell:(col + 1) * cell].double().mean(0)   # (cell, cell)
    half = torch.arange(cell) % tile >= tile // 2
    scores = [block[:, half].mean() - block[:, ~half].mean(), block[~half].mean() - block[half].mean(),
              block[:, ~half].mean() - block[:, half].mean(), block[half].mean() - block[~half].mean()]
    return int(torch.stack(scores).argmax())


@pytest.mark.parametrize("cell, tile, size", [(8, 0, 64), (16, 8, 64), (8, 0, 32)])
def test_grid_world_movers_follow_their_signs_and_the_latent_cannot_see_them(cell, tile, size):
    src = source(frame_size=size, grid_cell=cell, sign_tile=tile, num_objects=3, moving_objects=1)
    for i in range(8):
        clip = src[i]
        names = [part.split()[1] for part in clip.caption.split(". ")[1:]]
        mover, still = names[0], names[1:]
        grid = cells(clip.frames, cell)                                        # (T, G, G, 3)
        flat = grid.repeat_interleave(cell // 8, 1).repeat_interleave(cell // 8, 2)
        assert torch.equal(cells(clip.frames, 8), flat)   # what the pooling VAE sees: flat colours, no signs
        steps = clip.caption.split("moves ")[1].split(".")[0].split(", ")
        assert len(steps) == 7
        for t in range(7):
            row, col = where(grid[t], GRID_COLOURS[mover])
            nxt = where(grid[t + 1], GRID_COLOURS[mover])
            d = sign_of(clip.frames[t], cell, tile or cell, row, col)
            if steps[t] == "stays":
                assert nxt == (row, col)
            else:
                assert steps[t] == GRID_DIRECTIONS[d]                          # the sign said so
                assert nxt == (row + GRID_STEPS[d][0], col + GRID_STEPS[d][1])
            for name in still:
                assert where(grid[t], GRID_COLOURS[name]) == where(grid[0], GRID_COLOURS[name])


def test_still_objects_signs_change_and_the_cue_marks_the_mover_in_frame_one():
    src = source(grid_cell=8, num_objects=4, moving_objects=1, cue=True)
    changed = 0
    for i in range(8):
        clip = src[i]
        names = [part.split()[1] for part in clip.caption.split(". ")[1:]]
        grid = cells(clip.frames, 8)
        row, col = where(grid[0], GRID_COLOURS[names[0]])
        cue = clip.frames[0, :, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8].int()
        assert torch.equal(cue[:, 0, 0] + cue[:, 0, 1], 2 * torch.tensor(GRID_COLOURS[names[0]]))  # +- around it
        assert (cue[:, :, :-1] != cue[:, :, 1:]).all() and (cue[:, :-1] != cue[:, 1:]).all()      # a checkerboard
        for name in names[1:]:
            r, c = where(grid[0], GRID_COLOURS[name])
            signs = [sign_of(clip.frames[t], 8, 8, r, c) for t in range(8)]
            changed += len(set(signs)) > 1
    assert changed >= 20                                                       # of 24 still objects


def test_grid_world_options_are_checked():
    with pytest.raises(ValidationError, match="must be even"):
        SyntheticShapes.Config(grid_cell=7)
    with pytest.raises(ValidationError, match="sign_tile"):
        SyntheticShapes.Config(grid_cell=16, sign_tile=6)
    with pytest.raises(ValidationError, match="cue"):
        SyntheticShapes.Config(grid_cell=8, cue=True)
    with pytest.raises(ValidationError, match="moving_objects"):
        SyntheticShapes.Config(num_objects=2, moving_objects=3)
    with pytest.raises(ValidationError, match="colours"):
        SyntheticShapes.Config(grid_cell=8, num_objects=8)
    with pytest.raises(ConfigError, match="divide"):
        source(frame_size=60, grid_cell=8)
