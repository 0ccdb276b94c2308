"""A procedural city: a street grid, building footprints and the looks of each building.

Coordinates are local metres (x east, y north) from the city's south-west corner. Blocks of
`block` metres repeat on both axes; the first `street` metres of each block are street, the rest
is split into lots. Each lot carries a building (an axis-aligned box) whose appearance is
drawn once here: facade and trim colours, window grid, a shop sign with a logo on each face.
A few tall landmarks with bands and a crown logo stand out over the skyline. Some blocks are
parks (no buildings, grass). Nothing here depends on a camera: the renderer reads these arrays.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

# Face order of the per-face arrays: the wall whose outward normal is -x, +x, -y, +y.
FACE_NORMALS = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])


@dataclass
class City:
    block: float  # block pitch (street + lots), metres
    street: float  # street width, metres
    blocks_x: int
    blocks_y: int
    park: np.ndarray  # bool [blocks_x, blocks_y]
    boxes: np.ndarray  # float64 [B, 4]: x0, y0, x1, y1
    height: np.ndarray  # [B] metres
    colour: np.ndarray  # [B, 3] facade
    trim: np.ndarray  # [B, 3] ground floor, parapet, bands, fins
    glass: np.ndarray  # [B, 3] window glass by day
    win_dx: np.ndarray  # [B] window spacing along the wall, metres
    win_w: np.ndarray  # [B] window width as a fraction of win_dx
    floor_h: np.ndarray  # [B] storey height, metres
    win_h: np.ndarray  # [B] window height as a fraction of floor_h
    style: np.ndarray  # [B] int: 0 windows, 1 ribbon windows, 2 vertical fins, 3 landmark
    sign_colour: np.ndarray  # [B, 4, 3] per face
    logo_colour: np.ndarray  # [B, 4, 3]
    sign_pos: np.ndarray  # [B, 4] sign centre along the wall, metres from the wall's start
    sign_w: np.ndarray  # [B, 4] metres
    logo: np.ndarray  # [B, 4] int shape: 0 disc, 1 diamond, 2 bar, 3 square

    @property
    def size(self) -> tuple[float, float]:
        return self.blocks_x * self.block, self.blocks_y * self.block

    @property
    def is_landmark(self) -> np.ndarray:
        return self.style == 3


def _hsv(rng: np.random.Generator, n: int, s: tuple[float, float], v: tuple[float, float]) -> np.ndarray:
    h, sat, val = rng.random(n), rng.uniform(*s, n), rng.uniform(*v, n)
    return np.array([colorsys.hsv_to_rgb(*c) for c in zip(h, sat, val)]).reshape(n, 3)


def _cuts(rng: np.random.Generator, lo: float, hi: float, pieces: int) -> np.ndarray:
    """Split [lo, hi] in `pieces` lots of uneven widths (no lot narrower than a fifth)."""
    weights = rng.uniform(1.0, 2.5, pieces)
    return lo + np.concatenate([[0.0], np.cumsum(weights) / weights.sum()]) * (hi - lo)


def generate_city(
    rng: np.random.Generator,
    blocks_x: int,
    blocks_y: int,
    block: float = 60.0,
    street: float = 14.0,
    park_p: float = 0.08,
    landmark_per_block: float = 0.12,
) -> City:
    """Draw a city of blocks_x x blocks_y blocks; every draw comes from `rng` (deterministic)."""
    park = rng.random((blocks_x, blocks_y)) < park_p
    boxes = []
    for bx in range(blocks_x):
        for by in range(blocks_y):
            if park[bx, by]:
                continue
            xs = _cuts(rng, bx * block + street, (bx + 1) * block, int(rng.integers(1, 4)))
            ys = _cuts(rng, by * block + street, (by + 1) * block, int(rng.integers(2, 4)))
            for i in range(len(xs) - 1):
                for j in range(len(ys) - 1):
                    gap = rng.uniform(0.3, 1.5, 4)  # alleys between neighbours, setbacks
                    boxes.append((xs[i] + gap[0], ys[j] + gap[1], xs[i + 1] - gap[2], ys[j + 1] - gap[3]))
    boxes = np.array(boxes)
    n = len(boxes)
    style = rng.integers(0, 3, n)
    height = np.clip(rng.lognormal(np.log(16.0), 0.45, n), 6.0, 45.0)
    landmarks = rng.choice(n, size=max(1, round(landmark_per_block * blocks_x * blocks_y)), replace=False)
    style[landmarks] = 3
    height[landmarks] = rng.uniform(55.0, 110.0, len(landmarks))
    colour = _hsv(rng, n, (0.1, 0.75), (0.45, 0.95))
    colour[landmarks] = _hsv(rng, len(landmarks), (0.7, 1.0), (0.7, 1.0))
    return City(
        block=block, street=street, blocks_x=blocks_x, blocks_y=blocks_y, park=park,
        boxes=boxes, height=height, colour=colour,
        trim=_hsv(rng, n, (0.0, 0.6), (0.2, 0.9)),
        glass=_hsv(rng, n, (0.2, 0.6), (0.1, 0.35)),
        win_dx=rng.uniform(2.2, 4.5, n), win_w=rng.uniform(0.35, 0.75, n),
        floor_h=rng.uniform(2.8, 4.0, n), win_h=rng.uniform(0.35, 0.7, n),
        style=style,
        sign_colour=_hsv(rng, 4 * n, (0.6, 1.0), (0.6, 1.0)).reshape(n, 4, 3),
        logo_colour=_hsv(rng, 4 * n, (0.0, 1.0), (0.0, 1.0)).reshape(n, 4, 3),
        sign_pos=rng.uniform(0.2, 0.8, (n, 4)) * _wall_lengths(boxes),
        sign_w=rng.uniform(3.0, 8.0, (n, 4)),
        logo=rng.integers(0, 4, (n, 4)),
    )


def _wall_lengths(boxes: np.ndarray) -> np.ndarray:
    """[B, 4] length of each face: -x and +x faces run along y, -y and +y along x."""
    dy, dx = boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]
    return np.stack([dy, dy, dx, dx], axis=1)


def street_segments(city: City, bx0: int, bx1: int, by0: int, by1: int) -> np.ndarray:
    """Centre lines [S, 4] (x0, y0, x1, y1) of the streets bounding blocks [bx0, bx1) x [by0, by1)."""
    return grid_segments(city.block, city.street, bx0, bx1, by0, by1)


def grid_segments(block: float, street: float, bx0: int, bx1: int, by0: int, by1: int) -> np.ndarray:
    """`street_segments` of any grid of `block` m pitch and `street` m wide streets (no City
    needed: the names-only generator lays out grids far larger than a rendered city)."""
    half, P = street / 2, block
    xs = [k * P + half for k in range(bx0, bx1 + 1)]
    ys = [k * P + half for k in range(by0, by1 + 1)]
    vertical = [(x, ys[0], x, ys[-1]) for x in xs]
    horizontal = [(xs[0], y, xs[-1], y) for y in ys]
    return np.array(vertical + horizontal, dtype=np.float64)


def points_along(segments: np.ndarray, arc: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Points [n, 2] at arc lengths `arc` along the segments laid end to end, moved `off`
    metres across their street (x for north-south streets, y for east-west ones)."""
    lengths = np.hypot(segments[:, 2] - segments[:, 0], segments[:, 3] - segments[:, 1])
    ends = np.cumsum(lengths)
    seg = np.minimum(np.searchsorted(ends, arc, side="right"), len(segments) - 1)
    s = (arc - (ends[seg] - lengths[seg])) / lengths[seg]
    x0, y0, x1, y1 = segments[seg].T
    vertical = x0 == x1
    return np.stack([x0 + s * (x1 - x0) + np.where(vertical, off, 0.0),
                     y0 + s * (y1 - y0) + np.where(vertical, 0.0, off)], axis=1)
