"""A hand-made train folder small enough to shard in a second: 2 groups of classes, 2-4 images each."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dist_geo.config import build_config
from dist_geo.data.vg_format import format_name

# Classes 10 m apart in east (M=10, N=2): even cells form group (0, 0, 0), odd ones (1, 0, 0).
SHARD_OVERRIDES = ["data.M=10", "data.N=2", "data.L=1", "data.groups_num=2",
                   "data.min_images_per_class=2", "data.shard_size=5"]


def write_train_folder(root: Path, places: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    train = root / "train"
    train.mkdir(parents=True)
    for p in range(places):
        for k in range(2 + p % 3):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            name = format_name(500003.0 + 10 * p + k * 0.5, 4100003.0, 10, "S", 37.0, -122.0, 15.0)
            Image.fromarray(pixels).save(train / name, quality=80)
    return root


@pytest.fixture
def train_root(tmp_path: Path) -> Path:
    return write_train_folder(tmp_path / "world")


@pytest.fixture
def shard_overrides() -> list[str]:
    return list(SHARD_OVERRIDES)


@pytest.fixture
def data_cfg():
    return build_config(overrides=SHARD_OVERRIDES).data
