"""``synthetic``: short videos of moving shapes, deterministic from a seed (no downloads).

Each clip holds several objects (circles and squares) of different sizes, colours and speeds that
bounce off the frame borders, so *where to look* matters for predicting the next frame. Each clip
carries a caption describing its scene (``describe_scene``): the small objects' colour, shape and
motion are in it, so captioning a clip well needs a focused look at them.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fovea.core.data import Clip
from fovea.core.hookspecs import hookimpl

BACKGROUND = 0.08  # dark grey

# The caption's colour names: the corners of the cube [0.3, 1]^3 the objects' colours are drawn from,
# so each name covers one eighth of it (a channel above or below 0.65).
PALETTE = {"grey": (0.3, 0.3, 0.3), "red": (1.0, 0.3, 0.3), "green": (0.3, 1.0, 0.3), "blue": (0.3, 0.3, 1.0),
           "yellow": (1.0, 1.0, 0.3), "pink": (1.0, 0.3, 1.0), "cyan": (0.3, 1.0, 1.0), "white": (1.0, 1.0, 1.0)}
STILL_SPEED = 0.005  # frame sides per frame: slower than this is "still" (a third of a pixel at 64 px)
NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
# Directions by the angle of (dx, -dy) in 45-degree sectors, counter-clockwise from "right" (y points down).
DIRECTIONS = ("right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right")


class SyntheticShapes:
    """Moving circles and squares of several sizes and speeds, deterministic from the run seed."""

    class Config(BaseModel):
        """Options of the ``synthetic`` source."""

        model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

        num_clips: int = Field(256, ge=1)
        """Number of clips in the set."""
        num_objects: int = Field(3, ge=1)
        """Objects per clip."""
        min_radius: float = Field(0.06, gt=0.0, lt=0.5)
        """Smallest object half-size, as a fraction of the frame side."""
        max_radius: float = Field(0.2, gt=0.0, lt=0.5)
        """Largest object half-size, as a fraction of the frame side."""
        max_speed: float = Field(0.08, ge=0.0)
        """Largest speed, in frame sides per frame."""

        @model_validator(mode="after")
        def _radii_ordered(self):
            if self.min_radius > self.max_radius:
                raise ValueError(f"min_radius ({self.min_radius}) must not exceed max_radius ({self.max_radius})")
            return self

    def __init__(self, config: Config, *, num_frames: int, frame_size: int, seed: int = 0):
        self.config = config
        self.num_frames = num_frames
        self.frame_size = frame_size
        self.seed = seed

    def __len__(self) -> int:
        return self.config.num_clips

    def __getitem__(self, index: int) -> Clip:
        """Clip ``index``: uint8 frames (T, 3, S, S)."""
        if not 0 <= index < len(self):
            raise IndexError(f"clip {index} out of range for {len(self)} clips")
        c, T, S, K = self.config, self.num_frames, self.frame_size, self.config.num_objects
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        radius = c.min_radius + (c.max_radius - c.min_radius) * torch.rand(K, generator=g)     # (K,)
        start = radius[:, None] + (1 - 2 * radius[:, None]) * torch.rand(K, 2, generator=g)  # (K, 2) x, y
        speed = c.max_speed * (2 * torch.rand(K, 2, generator=g) - 1)                        # (K, 2)
        colour = 0.3 + 0.7 * torch.rand(K, 3, generator=g)                                   # (K, 3)
        is_square = torch.rand(K, generator=g) < 0.5                                         # (K,)

        # Straight motion folded into [r, 1 - r] by a triangle wave: a bounce off each border.
        t = torch.arange(T, dtype=torch.float32)[:, None, None]                              # (T, 1, 1)
        span = (1 - 2 * radius)[None, :, None]                                               # (1, K, 1)
        travel = (start - radius[:, None])[None] + speed[None] * t                           # (T, K, 2)
        phase = torch.remainder(travel, 2 * span)
        centre = radius[None, :, None] + span - (phase - span).abs()                         # (T, K, 2)
        leg = torch.div(travel, span, rounding_mode="floor")                                # (T, K, 2) wave leg
        bounces = (leg[-1] != leg[0]).any(dim=1)                                             # (K,) a fold in the clip

        grid = (torch.arange(S, dtype=torch.float32) + 0.5) / S                              # (S,)
        dx = grid[None, None, None, :] - centre[..., 0, None, None]                         # (T, K, 1, S)
        dy = grid[None, None, :, None] - centre[..., 1, None, None]                         # (T, K, S, 1)
        r = radius[None, :, None, None]
        inside = torch.where(is_square[None, :, None, None],
                             torch.maximum(dx.abs(), dy.abs()) <= 0.85 * r,
                             dx.square() + dy.square() <= r.square())                        # (T, K, S, S)

        # Painter's order: the highest-index object covering a pixel is the one seen.
        depth = inside * torch.arange(1, K + 1)[None, :, None, None]                         # (T, K, S, S)
        top = depth.argmax(dim=1)                                                            # (T, S, S)
        frames = torch.where(inside.any(dim=1)[..., None], colour[top], BACKGROUND)         # (T, S, S, 3)
        frames = (frames.permute(0, 3, 1, 2) * 255).round().to(torch.uint8)                 # (T, 3, S, S)
        visible = torch.bincount(top[inside.any(dim=1)], minlength=K) > 0                    # (K,) seen in a frame
        caption = describe_scene(radius, colour, is_square, speed, bounces, visible, c.min_radius, c.max_radius)
        return Clip(frames, source=f"synthetic seed={self.seed} clip={index}", frame_indices=list(range(T)),
                    caption=caption)


def describe_scene(radius: torch.Tensor, colour: torch.Tensor, is_square: torch.Tensor, speed: torch.Tensor,
                   bounces: torch.Tensor, visible: torch.Tensor, min_radius: float, max_radius: float) -> str:
    """A clip's caption from its objects' radius (K,), colour (K, 3), is_square (K,), speed (K, 2),
    bounces (K,) and visible (K,); lowercase ASCII in a fixed grammar::

        caption   := COUNT " object" ["s"] "." (" " object ".")*
        object    := "a " SIZE " " COLOUR " " SHAPE " " motion
        motion    := "is still" | "moves " DIRECTION [" and bounces"]
        COUNT     := "no" | "one" | ... | "ten" | a number
        SIZE      := "small" | "medium" | "large"      (thirds of [min_radius, max_radius])
        COLOUR    := a name of PALETTE, the nearest in RGB
        SHAPE     := "circle" | "square"
        DIRECTION := one of DIRECTIONS, the start's direction (y points down)

    Only objects seen in some frame (not covered in all of them) are counted and described, largest
    first (ties by index). "still": slower than ``STILL_SPEED``; "bounces": its path turns at a border
    between the first and the last frame. E.g.
    "two objects. a large red square moves left and bounces. a small cyan circle is still."
    """
    names = list(PALETTE)
    nearest = torch.cdist(colour, torch.tensor(list(PALETTE.values()))).argmin(dim=1)    # (K,)
    if max_radius > min_radius:
        third = ((radius - min_radius) / (max_radius - min_radius) * 3).long().clamp(0, 2)  # (K,) 0 small .. 2 large
    else:
        third = torch.ones(len(radius), dtype=torch.long)                              # one size: all medium
    angle = torch.atan2(-speed[:, 1], speed[:, 0])                                       # (K,) y points down
    sector = (torch.round(angle / (torch.pi / 4)).long() % 8)                            # (K,)
    still = speed.norm(dim=1) < STILL_SPEED                                              # (K,)

    order = [k for k in sorted(range(len(radius)), key=lambda k: -float(radius[k])) if visible[k]]
    count = NUMBERS[len(order)] if len(order) < len(NUMBERS) else str(len(order))
    parts = [f"{count} object{'' if len(order) == 1 else 's'}."]
    for k in order:
        motion = "is still" if still[k] else f"moves {DIRECTIONS[int(sector[k])]}"
        motion += " and bounces" if bounces[k] and not still[k] else ""
        parts.append(f"a {('small', 'medium', 'large')[int(third[k])]} {names[int(nearest[k])]} "
                     f"{'square' if is_square[k] else 'circle'} {motion}.")
    return " ".join(parts)


@hookimpl
def fovea_register_loaders(register):
    register("synthetic", SyntheticShapes)
