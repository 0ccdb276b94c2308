"""The DALI loader leaves out, names and counts what its own decoder cannot use (issue 10,
items 4 and 5): a JPEG torchvision decodes but DALI refuses, and a decompression bomb, which
it never decodes."""
from __future__ import annotations

import pytest

from dist_geo.config import build_config
from dist_geo.distributed import single_process
from dist_geo.errors import DataError
from dist_geo.loaders.factory import build_train_loader
from dist_geo.shards.writer import write_shards

# The tiny world's group 0 (M=10, alpha=30, N=5, L=2): 12 classes of 3 images, 5 shards.
OVERRIDES = ["data.M=10", "data.alpha=30", "data.N=5", "data.L=2", "data.groups_num=2",
             "data.min_images_per_class=3", "data.shard_size=8", "data.image_size=32",
             "train.batch_size=8", "data.shuffle_buffer=16", "data.num_workers=0",
             "data.loader=dali"]


def test_dali_loader_leaves_out_names_and_counts_what_dali_cannot_use(tiny_world, tmp_path,
                                                                       make_hostile):
    cfg = build_config(overrides=[*OVERRIDES, f"data.shards={tmp_path}"])
    manifest = write_shards(tiny_world, tmp_path, cfg.data)
    tars = [tmp_path / s["file"] for s in manifest["groups"][0]["shards"]]
    garbled, _ = make_hostile(tars[0], 2, "garbled")
    bomb, _ = make_hostile(tars[3], 5, "bomb")
    loader = build_train_loader(cfg, 0, single_process(), epoch=0)
    for _ in range(12):  # 96 samples: more than two passes over the 34 left
        images, labels = next(loader)
        assert images.shape == (8, 3, 32, 32) and labels.shape == (8,)
    stats = loader.stats()
    assert stats["corrupt_samples"] == 2
    assert any(f.startswith(f"{tars[0]}: sample '{garbled}': undecodable image (DALI)")
               for f in stats["faults"])
    assert f"{tars[3]}: sample '{bomb}': 30000x30000 image: more than " \
           f"data.max_image_pixels=89478485 pixels, not decoded" in stats["faults"]

    cfg.data.strict = True
    with pytest.raises(DataError, match="data.strict"):
        loader = build_train_loader(cfg, 0, single_process(), epoch=0)
        for _ in range(12):
            next(loader)
