"""Shards of two groups of the tiny synthetic world, and the training config overrides that
make a resnet18 train in seconds on them (32 px crops, 2 iterations of 4 images per epoch)."""
from __future__ import annotations

from pathlib import Path

import pytest

from dist_geo.config import build_config
from dist_geo.shards.writer import write_shards

DATA = ["data.M=10", "data.alpha=30", "data.N=5", "data.L=2", "data.groups_num=2",
        "data.min_images_per_class=3", "data.shard_size=16"]


@pytest.fixture(scope="session")
def train_shards(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train_shards")
    write_shards(tiny_world, out, build_config(overrides=DATA).data)
    return out


@pytest.fixture(scope="session")
def train_overrides(tiny_world: Path, train_shards: Path) -> list[str]:
    return DATA + [
        f"data.dataset={tiny_world}", f"data.shards={train_shards}", "data.loader=torch",
        "data.image_size=32", "data.num_workers=0", "model.backbone=resnet18",
        "model.fc_output_dim=16", "train.iterations_per_epoch=2", "train.batch_size=4",
        "train.device=cpu", "train.log_every=1", "eval.splits=[test]", "eval.batch_size=64",
    ]
