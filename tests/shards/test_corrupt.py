from __future__ import annotations

from pathlib import Path

import pytest

from dist_geo.cli import main as cli_main
from dist_geo.config import build_config
from dist_geo.distributed import single_process
from dist_geo.errors import DataError
from dist_geo.loaders.factory import build_train_loader
from dist_geo.shards.reading import iter_samples
from dist_geo.shards.verify import verify_shards
from dist_geo.shards.writer import write_shards


def corrupt_first_jpeg(tar: Path) -> str:
    """Overwrite the start of the first image of `tar` (same size, so the tar stays readable)."""
    key = next(iter_samples(tar))["__key__"]
    data = bytearray(tar.read_bytes())
    start = data.find(b"\xff\xd8\xff")
    data[start:start + 64] = bytes(64)
    tar.write_bytes(bytes(data))
    return key


def truncate(tar: Path, keep: int) -> None:
    tar.write_bytes(tar.read_bytes()[:keep])


def test_verify_clean_then_reports_shard_and_key(train_root, data_cfg, tmp_path, capsys):
    out = tmp_path / "shards"
    manifest = write_shards(train_root, out, data_cfg)
    report = verify_shards(out)
    assert report.ok and report.samples == sum(g["num_samples"] for g in manifest["groups"])

    bad_jpeg = out / manifest["groups"][0]["shards"][0]["file"]
    bad_key = corrupt_first_jpeg(bad_jpeg)
    cut = out / manifest["groups"][1]["shards"][0]["file"]
    truncate(cut, 3000)  # inside the first sample's image
    report = verify_shards(out)
    assert not report.ok
    found = {(f.shard, f.key) for f in report.faults}
    assert (str(bad_jpeg), bad_key) in found
    cut_key = next(f.key for f in report.faults if f.shard == str(cut) and f.key)
    assert cut_key.startswith("g01-")
    assert any(f.shard == str(cut) and "checksum" in f.fault for f in report.faults)

    assert cli_main(["shard", "--verify", str(out)]) == 1
    printed = capsys.readouterr().out
    assert f"{bad_jpeg}: sample '{bad_key}'" in printed and str(cut) in printed


def loader_setup(train_root, shard_overrides, out, backend):
    """A config for `backend` with 16 px batches of 4, and the shards written for it in `out`."""
    cfg = build_config(overrides=[*shard_overrides, f"data.shards={out}", f"data.loader={backend}",
                                  "data.image_size=16", "train.batch_size=4", "data.num_workers=0"])
    return cfg, write_shards(train_root, out, cfg.data)


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_loader_skips_counts_and_names_corrupt_samples(train_root, shard_overrides, tmp_path, backend):
    out = tmp_path / "shards"
    cfg, manifest = loader_setup(train_root, shard_overrides, out, backend)
    shards = [out / s["file"] for s in manifest["groups"][0]["shards"]]
    bad_key = corrupt_first_jpeg(shards[0])
    truncate(shards[-1], 3000)
    loader = build_train_loader(cfg, 0, single_process(), epoch=0)
    for _ in range(2 * manifest["groups"][0]["num_samples"] // 4):  # two passes
        next(loader)
    faults = loader.stats()["faults"]
    assert loader.stats()["corrupt_samples"] >= 2
    assert any(f.startswith(f"{shards[0]}: sample '{bad_key}'") for f in faults)
    assert any(f.startswith(str(shards[-1])) for f in faults)

    cfg.data.strict = True
    with pytest.raises(DataError, match="data.strict"):
        loader = build_train_loader(cfg, 0, single_process(), epoch=0)
        for _ in range(manifest["groups"][0]["num_samples"]):
            next(loader)


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_loader_fails_clearly_when_nothing_is_readable(train_root, shard_overrides, tmp_path, backend):
    out = tmp_path / "shards"
    cfg, manifest = loader_setup(train_root, shard_overrides, out, backend)
    for shard in manifest["groups"][1]["shards"]:
        truncate(out / shard["file"], 100)
    with pytest.raises(DataError, match="readable"):
        next(build_train_loader(cfg, 1, single_process(), epoch=0))


def test_torch_loader_counts_a_decompression_bomb_by_shard_and_key(
        train_root, shard_overrides, tmp_path, bomb_jpeg):
    """A bomb that reached the shards (written under a higher limit) is refused by the loader's
    decoder before any pixel is decoded, and counted like any corrupt sample."""
    victim = sorted((train_root / "train").iterdir())[0]
    victim.write_bytes(bomb_jpeg)
    out = tmp_path / "shards"
    cfg, manifest = loader_setup(
        train_root, shard_overrides + ["data.max_image_pixels=1000000000"], out, "torch")
    cfg.data.max_image_pixels = 89_478_485
    faults = []
    for group in manifest["groups"]:
        loader = build_train_loader(cfg, group["index"], single_process(), epoch=0)
        for _ in range(group["num_samples"] // 4 + 1):  # a pass over the group
            next(loader)
        faults += loader.stats()["faults"]
    assert faults and all(f.startswith(str(out / "group_")) and "sample 'g" in f and
                          "refused: its header promises 900000000 pixels" in f for f in faults)
