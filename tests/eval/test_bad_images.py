"""Evaluation on hostile or unusual images: mixed sizes, decompression bombs, images the
network cannot take; on one rank and on two."""
from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from torch import nn

from dist_geo.cli import main as cli_main
from dist_geo.config import build_config
from dist_geo.data.vg_format import format_name, list_images
from dist_geo.distributed import DistContext, single_process
from dist_geo.errors import DataError
from dist_geo.eval.evaluate import evaluate
from dist_geo.eval.features import extract_descriptors
from dist_geo.model.network import build_model

OVERRIDES = ["model.fc_output_dim=16", "data.num_workers=0", "eval.batch_size=8"]


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(build_config(overrides=OVERRIDES).model)


def image_name(east: float) -> str:
    return format_name(500000.0 + east, 4100000.0, 10, "S", 37.0, -122.0, 0.0)


@pytest.fixture
def dataset(known_dataset: Path, tmp_path: Path) -> Path:
    """A writable copy of the known dataset (12 places, 13 queries per split)."""
    return Path(shutil.copytree(known_dataset, tmp_path / "dataset"))


def test_mixed_sizes_are_described_as_each_image_alone(dataset):
    rng = np.random.default_rng(1)
    thin = dataset / "val" / "database" / image_name(50.0)
    Image.fromarray(rng.integers(0, 256, (7, 300, 3), dtype=np.uint8)).save(thin)
    wide = dataset / "val" / "queries" / image_name(55.0)
    Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(wide)
    for image_size in (0, 20):  # native sizes, and the shorter side resized (shapes still differ)
        cfg = build_config(overrides=OVERRIDES + [f"eval.image_size={image_size}"])
        results = evaluate(tiny_model(), dataset, cfg, single_process(), splits=["val"])
        assert results["val"]["queries"] == 14
    paths = sorted(str(p) for p in (dataset / "val" / "database").iterdir())
    batched = extract_descriptors(tiny_model(), paths, single_process(), batch_size=8)
    alone = extract_descriptors(tiny_model(), paths, single_process(), batch_size=1)
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_an_image_the_network_cannot_take_is_named(dataset):
    narrow = nn.Sequential(nn.Conv2d(3, 4, 5), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    sliver = dataset / "sliver.jpg"
    Image.new("RGB", (300, 3)).save(sliver)
    paths = [r.path for r in list_images(dataset / "val" / "database")[0]][:3] + [str(sliver)]
    with pytest.raises(DataError) as error:
        extract_descriptors(narrow, paths, single_process())
    message = str(error.value)
    assert message.startswith(f"{sliver}: a 300x3 image cannot go through the network (")
    assert "\n" not in message


def write_model(tmp_path: Path) -> Path:
    path = tmp_path / "model.pth"
    torch.save(tiny_model().state_dict(), path)
    return path


def test_a_decompression_bomb_is_refused_in_one_line_or_skipped_and_counted(
        dataset, bomb_jpeg, tmp_path, capsys):
    bomb = dataset / "val" / "database" / image_name(1.0)
    bomb.write_bytes(bomb_jpeg)
    command = ["eval", str(write_model(tmp_path)), *OVERRIDES, "tracking.enabled=false",
               "--dataset", str(dataset), "--splits", "val", "--baseline",
               "--out", str(tmp_path / "out")]
    assert cli_main(command) == 2
    err = capsys.readouterr().err  # progress bars, then the error
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"dist-geo eval: error: {bomb}: refused: its header promises 900000000 pixels, more "
        "than data.max_image_pixels=89478485")

    assert cli_main(command + ["data.skip_bad=true"]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    for split in ("val", "raw-pixels/val"):  # the network and the thumbnails both skip it
        assert results[split]["skipped_images"] == 1 and results[split]["queries"] == 13


def _bomb_on_rank(rank: int, world: int, port: int, paths: list[str], out: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    ctx = DistContext(rank, world, rank, torch.device("cpu"))
    outcomes = []
    try:
        for skipped in (None, []):
            try:
                descriptors = extract_descriptors(tiny_model(), paths, ctx, batch_size=2,
                                                  skipped=skipped)
                outcomes.append({"skipped": skipped,
                                 "zeros": np.flatnonzero(~descriptors.any(1)).tolist()})
            except DataError as e:
                outcomes.append({"error": str(e)})
    finally:
        dist.destroy_process_group()
    Path(f"{out}.{rank}").write_text(json.dumps(outcomes))


def test_two_ranks_agree_on_a_file_only_one_of_them_reads(dataset, bomb_jpeg, tmp_path):
    """The bomb lies in rank 1's slice: rank 0 must fail (or skip) with it, not wait forever."""
    paths = sorted(str(p) for p in (dataset / "val" / "database").iterdir())[:6]
    Path(paths[4]).write_bytes(bomb_jpeg)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "outcome")
    mp.start_processes(_bomb_on_rank, args=(2, port, paths, out), nprocs=2,
                       start_method="spawn", join=True)
    refused, skipped = json.loads(Path(f"{out}.0").read_text())
    assert [refused, skipped] == json.loads(Path(f"{out}.1").read_text())
    assert refused["error"].startswith(f"{paths[4]}: refused: its header promises")
    assert skipped == {"skipped": [4], "zeros": [4]}
