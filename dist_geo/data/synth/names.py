"""Millions of valid VG image names without a single image: the dataset side at SF-XL's scale.

Parsing, grouping and planning shards never open an image, so their time and memory at 41
million images can be measured (and tested) on names alone. The names here come from a street
grid like the synthetic world's (world.py), grown to hold `n` names: panoramas at uniformly
random points along the streets (so the number of panoramas per 10 m cell varies as on a real
drive, not stratified as in the rendered world), up to 2 m across the street, each cut into 12
crops 30 degrees apart from a random first heading, with SF-XL's kinds of fields (a 22-character
panorama id, a yyyymm timestamp). Every 10 m street cell gets `panos_per_cell` panoramas on
average, so a CosPlace class (cell x 30 degree sector) holds that many images on average.

Names are produced in chunks of panoramas, each from its own generator seeded by (seed,
chunk): the same (n, seed, ...) always gives the same names, in memory bounded by a chunk.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import utm

from dist_geo.atomic import atomic_path
from dist_geo.data.synth.world import grid_segments, points_along
from dist_geo.data.synth.writer import (
    ORIGIN_EAST, ORIGIN_NORTH, TRAIN_HEADINGS, ZONE_LETTER, ZONE_NUMBER,
)
from dist_geo.data.vg_format import format_name, images_paths_file

BLOCK, STREET = 110.0, 14.0  # 110 m pitch: streets fall in every residue of CosPlace's 50 m period
CHUNK = 20_000  # panoramas per generator
ID_CHARS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


def street_grid_names(n: int, seed: int = 0, panos_per_cell: float = 15.0) -> Iterator[str]:
    """`n` VG file names (see the module docstring), one panorama's 12 crops after another.

    The panoramas fill the first `length` metres of street (10 m per cell) of the smallest
    square grid whose streets, 2 * blocks * (blocks + 1) of BLOCK metres, are that long."""
    panos = math.ceil(n / TRAIN_HEADINGS)
    length = panos / panos_per_cell * 10.0
    blocks = max(1, math.ceil((math.sqrt(1 + 2 * length / BLOCK) - 1) / 2))
    segments = grid_segments(BLOCK, STREET, 0, blocks, 0, blocks)
    left = n
    for chunk, first in enumerate(range(0, panos, CHUNK)):
        rng = np.random.default_rng((seed, chunk))
        count = min(CHUNK, panos - first)
        xy = points_along(segments, rng.uniform(0, length, count), rng.uniform(-2.0, 2.0, count))
        east, north = ORIGIN_EAST + xy[:, 0], ORIGIN_NORTH + xy[:, 1]
        lat, lon = utm.to_latlon(east, north, ZONE_NUMBER, ZONE_LETTER)
        first_heading = rng.uniform(0, 360, count)
        ids = ["".join(c) for c in ID_CHARS[rng.integers(0, len(ID_CHARS), (count, 22))]]
        stamps = [f"{y}{m:02d}" for y, m in zip(rng.integers(2009, 2022, count),
                                                 rng.integers(1, 13, count))]
        for p in range(count):
            for tile in range(min(TRAIN_HEADINGS, left)):
                yield format_name(east[p], north[p], ZONE_NUMBER, ZONE_LETTER, lat[p], lon[p],
                                  first_heading[p] + tile * 360.0 / TRAIN_HEADINGS,
                                  pano_id=ids[p], timestamp=stamps[p])
            left -= TRAIN_HEADINGS


def write_names_list(folder: str | Path, n: int, seed: int = 0, panos_per_cell: float = 15.0,
                     per_folder: int = 12_000) -> Path:
    """`<folder>_images_paths.txt` listing `street_grid_names` as absolute paths under `folder`
    (in sub-folders of `per_folder` names, as datasets split their files), no image written.
    Absolute paths, because `list_images` checks that a relative first path exists."""
    folder = Path(folder).resolve()
    path = images_paths_file(folder)
    with atomic_path(path) as tmp, tmp.open("w") as f:
        for i, name in enumerate(street_grid_names(n, seed, panos_per_cell)):
            f.write(f"{folder}/{i // per_folder:04d}/{name}\n")
    return path


__all__ = ["street_grid_names", "write_names_list"]
