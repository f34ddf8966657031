"""``synthetic``: short videos of moving shapes, deterministic from a seed (no downloads).

Each clip holds several objects (circles and squares) of different sizes, colours and speeds that
bounce off the frame borders, so *where to look* matters for predicting the next frame. Each clip
carries a caption describing its scene (``describe_scene``): the small objects' colour, shape and
motion are in it, so captioning a clip well needs a focused look at them.

With ``grid_cell`` the source draws a *grid world* instead (``_grid_clip``): objects fill cells of a grid,
and each shows a sign (a shading that 8x8 pooling, hence the VAE latent, cannot see) saying where it
steps next. With one mover among still objects whose signs are random, the next frame depends on one
object's sign, and which object that is does not show in the frame itself (with ``cue``, frame 1 says it):
the positive control of foveation (configs/foveation_demo.toml, docs/quickstart.md "A positive control").
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
# The grid world's colours: the palette's corners but grey, at channel levels 0.3 / 0.7 (uint8 76 / 178), so a
# sign of +-SIGN_LEVEL stays inside [0, 255] and every cell's mean stays its colour exactly.
GRID_COLOURS = {name: tuple(round(255 * (0.7 if level > 0.5 else 0.3)) for level in rgb)
                for name, rgb in PALETTE.items() if name != "grey"}
SIGN_LEVEL = 70  # uint8: a sign's bright half is the colour + 70, its dark half the colour - 70
GRID_DIRECTIONS = ("right", "up", "left", "down")
GRID_STEPS = ((0, 1), (-1, 0), (0, -1), (1, 0))   # (row, column) per direction; rows point down
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
        moving_objects: int | None = Field(None, ge=0)
        """How many objects move: the first ones drawn; the others stay still. None: all of them."""
        same_look: bool = False
        """Every object gets the first one's radius, colour and shape: look-alikes told apart only by where
        they are and how they move (free objects only; a grid world's objects differ by colour)."""
        grid_cell: int = Field(0, ge=0)
        """0: free objects (above). N > 0: a grid world of N-pixel cells (``frame_size`` a multiple of N; N = 8,
        the VAE's and the ``tiny`` encoder's 8-pixel cell, makes each object one latent element and one patch).
        Each object fills one cell in its own palette colour (no two alike) and shows a *sign*: its bright half
        (+SIGN_LEVEL) and dark half (-SIGN_LEVEL) face one of right, up, left, down, so the cell's mean, all
        the 8x8-pooled latent sees, is its colour whatever the sign. A moving object steps one cell per frame
        the way its sign pointed in the frame before (a step off the grid or into another object is never
        signed; one boxed in stays, with a random sign); a still object's sign changes at random every frame.
        ``min_radius``, ``max_radius``, ``max_speed`` and ``same_look`` do not apply."""
        sign_tile: int = Field(0, ge=0)
        """Grid world: the sign is repeated in tiles of this many pixels (even, dividing ``grid_cell``); 0: one
        tile, the whole cell. With cells larger than the VAE's 8 pixels, 8 keeps the signs out of the latent."""
        cue: bool = False
        """Grid world with one mover: in frame 1 the mover shows a one-pixel checkerboard of +-SIGN_LEVEL instead
        of a sign (the same look for every mover: a static read can find it), so frame 1 says which object
        to watch; its first step is not signed. The cell's mean stays its colour: the latent does not see the
        cue."""

        @model_validator(mode="after")
        def _radii_ordered(self):
            if self.min_radius > self.max_radius:
                raise ValueError(f"min_radius ({self.min_radius}) must not exceed max_radius ({self.max_radius})")
            if self.moving_objects is not None and self.moving_objects > self.num_objects:
                raise ValueError(f"moving_objects ({self.moving_objects}) must not exceed num_objects "
                                 f"({self.num_objects})")
            if self.grid_cell and self.num_objects > len(GRID_COLOURS):
                raise ValueError(f"a grid world has {len(GRID_COLOURS)} colours, one per object: num_objects "
                                 f"({self.num_objects}) must not exceed it")
            if self.grid_cell % 2:
                raise ValueError(f"grid_cell ({self.grid_cell}) must be even: a sign is two equal halves")
            if self.cue and not (self.grid_cell and self.moving_objects == 1):
                raise ValueError("cue names the one mover of a grid world: it needs grid_cell and moving_objects = 1")
            tile = self.sign_tile or self.grid_cell
            if self.grid_cell and (tile % 2 or self.grid_cell % tile):
                raise ValueError(f"sign_tile ({self.sign_tile}) must be even and divide grid_cell ({self.grid_cell})")
            if self.grid_cell and self.same_look:
                raise ValueError("same_look applies to free objects; a grid world's objects differ by colour")
            return self

    def __init__(self, config: Config, *, num_frames: int, frame_size: int, seed: int = 0):
        from fovea.core.errors import ConfigError

        if config.grid_cell and frame_size % config.grid_cell:
            raise ConfigError(f"data.grid_cell = {config.grid_cell} must divide data.frame_size = {frame_size}")
        if config.grid_cell and config.num_objects > (frame_size // config.grid_cell) ** 2:
            raise ConfigError(f"data.num_objects = {config.num_objects} objects do not fit in a grid of "
                              f"{(frame_size // config.grid_cell) ** 2} cells")
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
        source = f"synthetic seed={self.seed} clip={index}"
        if c.grid_cell:
            frames, caption = _grid_clip(c, T, S, g)
            return Clip(frames, source=source, frame_indices=list(range(T)), caption=caption)
        radius = c.min_radius + (c.max_radius - c.min_radius) * torch.rand(K, generator=g)     # (K,)
        start = radius[:, None] + (1 - 2 * radius[:, None]) * torch.rand(K, 2, generator=g)  # (K, 2) x, y
        speed = c.max_speed * (2 * torch.rand(K, 2, generator=g) - 1)                        # (K, 2)
        colour = 0.3 + 0.7 * torch.rand(K, 3, generator=g)                                   # (K, 3)
        is_square = torch.rand(K, generator=g) < 0.5                                         # (K,)
        # The options below only overwrite what was drawn, so the default clips stay what they were.
        if c.moving_objects is not None:
            speed[c.moving_objects:] = 0.0
        if c.same_look:   # the first object's look for all; each start kept at the same place in its range
            where = (start - radius[:, None]) / (1 - 2 * radius[:, None])                     # (K, 2) in [0, 1]
            radius, colour, is_square = radius[:1].expand(K), colour[:1].expand(K, 3), is_square[:1].expand(K)
            start = radius[:, None] + (1 - 2 * radius[:, None]) * where                      # (K, 2)

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
        return Clip(frames, source=source, frame_indices=list(range(T)), caption=caption)


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


def _grid_clip(c: SyntheticShapes.Config, T: int, S: int, g: torch.Generator) -> tuple[torch.Tensor, str]:
    """A grid-world clip (``Config.grid_cell``): uint8 frames (T, 3, S, S) and its caption."""
    cell, K = c.grid_cell, c.num_objects
    G = S // cell
    moving = K if c.moving_objects is None else c.moving_objects
    names = [list(GRID_COLOURS)[int(i)] for i in torch.randperm(len(GRID_COLOURS), generator=g)[:K]]
    start = torch.randperm(G * G, generator=g)[:K]
    where = [(int(i) // G, int(i) % G) for i in start]                               # K (row, column)
    cells, signs, paths = [], [], [[] for _ in range(moving)]
    # Frame by frame, object by object: a step depends on where the others stand and which cells earlier
    # movers took, so this is a loop (T x K draws per clip).
    for t in range(T):
        cells.append(list(where))
        taken = set(where)                                                          # now, and cells claimed next
        sign = []
        for k in range(K):
            row, col = where[k]
            free = [d for d, (dr, dc) in enumerate(GRID_STEPS)
                    if 0 <= row + dr < G and 0 <= col + dc < G and (row + dr, col + dc) not in taken]
            options = free or range(len(GRID_STEPS))
            d = options[int(torch.randint(len(options), (1,), generator=g))]
            sign.append(d)
            if k < moving and t < T - 1:
                if free:
                    where[k] = (row + GRID_STEPS[d][0], col + GRID_STEPS[d][1])
                    taken.add(where[k])
                paths[k].append(GRID_DIRECTIONS[d] if free else "stays")
        signs.append(sign)

    position = torch.tensor(cells)                                                   # (T, K, 2) row, column
    colour = torch.tensor([GRID_COLOURS[n] for n in names], dtype=torch.int16)      # (K, 3)
    tile = c.sign_tile or cell
    half = torch.arange(cell) % tile >= tile // 2                                    # (cell,) each tile's far half
    bright = torch.stack([half[None, :].expand(cell, cell), ~half[:, None].expand(cell, cell),
                          ~half[None, :].expand(cell, cell), half[:, None].expand(cell, cell)])  # (4, cell, cell)
    sign = (2 * bright.to(torch.int16) - 1)[torch.tensor(signs)] * SIGN_LEVEL       # (T, K, cell, cell)
    if c.cue:   # frame 1: the mover's checkerboard instead of its sign
        sign[0, 0] = ((torch.arange(cell)[:, None] + torch.arange(cell)[None, :]) % 2 * 2 - 1) * SIGN_LEVEL
    looks = colour[None, :, :, None, None] + sign[:, :, None]                        # (T, K, 3, cell, cell)
    canvas = torch.full((T, G, G, 3, cell, cell), round(BACKGROUND * 255), dtype=torch.int16)
    frame = torch.arange(T)[:, None].expand(T, K)                                    # (T, K)
    canvas[frame, position[..., 0], position[..., 1]] = looks                        # (T, G, G, 3, cell, cell)
    frames = canvas.permute(0, 3, 1, 4, 2, 5).reshape(T, 3, S, S).to(torch.uint8)    # (T, 3, S, S)

    parts = [f"{NUMBERS[K] if K < len(NUMBERS) else K} object{'' if K == 1 else 's'}."]
    # movers first, in the order drawn; then the still objects in palette order (their order carries nothing)
    for k in [*range(moving), *sorted(range(moving, K), key=lambda k: list(GRID_COLOURS).index(names[k]))]:
        motion = f"moves {', '.join(paths[k])}" if k < moving and paths[k] else "is still"
        parts.append(f"a {names[k]} square {motion}.")
    return frames, " ".join(parts)


@hookimpl
def fovea_register_sources(register):
    register("synthetic", SyntheticShapes)
