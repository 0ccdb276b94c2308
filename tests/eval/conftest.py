"""A hand-made VG-format dataset whose right answers are known, for the eval tests.

Places lie 100 m apart on a line; each has a distinct random texture. The database holds one
image per place; every query is a noisy copy of one place's texture taken 5 m away, so its only
positive (threshold 25 m) is that place. One extra query stands 1 km away from everything:
it has no positive.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dist_geo.data.vg_format import format_name

PLACES = 12
SIDE = 32


def _save(folder: Path, east: float, pixels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    name = format_name(500000.0 + east, 4100000.0, 10, "S", 37.0, -122.0, 0.0)
    Image.fromarray(pixels).save(folder / name)


def write_known_dataset(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    textures = rng.integers(0, 256, size=(PLACES, SIDE, SIDE, 3), dtype=np.uint8)
    for split in ("val", "test"):
        for p, texture in enumerate(textures):
            _save(root / split / "database", 100.0 * p, texture)
            noisy = np.clip(texture + rng.normal(0, 20, texture.shape), 0, 255).astype(np.uint8)
            _save(root / split / "queries", 100.0 * p + 5.0, noisy)
            _save(root / split / "queries_night", 100.0 * p + 5.0, (noisy * 0.3).astype(np.uint8))
        _save(root / split / "queries", 100.0 * PLACES + 1000.0, textures[0])
    return root


@pytest.fixture(scope="session")
def known_dataset(tmp_path_factory) -> Path:
    return write_known_dataset(tmp_path_factory.mktemp("known_vg"))
