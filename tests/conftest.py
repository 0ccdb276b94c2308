"""Shared fixtures.

`tiny_world`: the synthetic world's `tiny` preset (seed 0), built once per test session in a
few seconds (dist_geo.data.synth.write_world). It is a dataset in the VG layout:

- train/ (in sub-folders 000/ 001/ 002/, listed by train_images_paths.txt): 2400 images of
  48x48 px, 200 panoramas x 12 headings 30 degrees apart, on the streets of a 120 m x 120 m area.
- val/ and test/ (other areas of the city, east of train): database/ 164 images (41 panoramas
  every 10 m x 4 headings), queries/ 24 images; test/queries_night/ 24 night images. Every
  folder has its `<folder>_images_paths.txt`; world.json holds the parameters and counts.

DataConfig overrides that suit it: data.image_size=48 (or smaller), data.M=10 data.alpha=30
data.min_images_per_class=3 with either data.N=5 data.L=2 (38 groups of 6-24 classes, 552
classes, 1848 images; data.groups_num <= 38) or data.N=2 data.L=1 (3 groups of 120-240
classes; groups_num <= 3: the streets run at one parity of the 10 m cells).
min_images_per_class=2 keeps all 828 classes (2400 images), =4 keeps 132 classes (588 images).

`corrupt_jpeg(data, kind)`: a JPEG made hostile, "garbled" or "bomb" (see `corrupt_jpeg`),
same length; `make_hostile(tar, index, kind)` does it in place to a sample of a shard (the tar
stays readable).
"""
from __future__ import annotations

import io
import ipaddress
import socket
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil
import pytest
import torch
from PIL import Image

from dist_geo.atomic import write_json
from dist_geo.checksums import checksum_files
from dist_geo.config import build_config, save_config
from dist_geo.data.synth import write_world
from dist_geo.shards.reading import iter_samples
from dist_geo.model.checkpoint import FORMAT, MANIFEST
from dist_geo.model.network import build_model


@pytest.fixture(scope="session")
def bomb_jpeg() -> bytes:
    """A decompression bomb: a JPEG of a few hundred bytes whose header says 30000 x 30000
    pixels (2.7 GB decoded as RGB)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 90, 60)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.find(b"\xff\xc0")  # baseline frame header: marker, length, precision, H, W
    data[sof + 5:sof + 9] = struct.pack(">HH", 30000, 30000)
    return bytes(data)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` run where CUDA is visible and are skipped, with the reason, elsewhere."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is visible")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root folder of the tiny synthetic world (read-only: tests must not write into it)."""
    return write_world(tmp_path_factory.mktemp("tiny_world"), seed=0, preset="tiny")


def _seal(folder: Path, **manifest) -> Path:
    """(Re)write a checkpoint folder's manifest with the sha256 of the files there now."""
    (folder / MANIFEST).unlink(missing_ok=True)
    write_json(folder / MANIFEST, {"format": FORMAT, "world_size": 1, "zero_stage": 0,
                                   "position": {"epoch": 1, "batch": 0, "step": 2},
                                   "mlflow_run_id": "", "groups": [], **manifest,
                                   "files": checksum_files(folder)})
    return folder


@pytest.fixture
def make_checkpoint(tmp_path: Path) -> Callable[..., Path]:
    """`make_checkpoint(**manifest)`: a checkpoint folder with what evaluation reads
    (config.yaml of a 16-d resnet18, model.pt, the manifest), in <tmp>/run/checkpoints/best,
    training's train.out being <tmp>/run."""
    def make(**manifest) -> Path:
        cfg = build_config(overrides=["model.fc_output_dim=16", f"train.out={tmp_path / 'run'}"])
        folder = tmp_path / "run" / "checkpoints" / "best"
        folder.mkdir(parents=True)
        save_config(cfg, folder / "config.yaml")
        torch.manual_seed(0)
        torch.save(build_model(cfg.model).state_dict(), folder / "model.pt")
        return _seal(folder, **manifest)

    return make


@pytest.fixture
def seal() -> Callable[..., Path]:
    """`seal(folder, **manifest)`: rewrite a checkpoint's manifest over its files as they are
    now (a tampered file that a forger re-hashed)."""
    return _seal


def _open_ports(pids: Iterable[int]) -> set[tuple[str, str, int]]:
    """(process name, address, port) of every TCP socket the processes `pids` (and their
    descendants) listen on, and every UDP socket they have bound."""
    family: set[int] = set()
    for pid in pids:
        try:
            process = psutil.Process(pid)
            family |= {pid, *(child.pid for child in process.children(recursive=True))}
        except psutil.NoSuchProcess:
            continue
    found = set()
    for c in psutil.net_connections("inet"):
        listening = c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr)
        if c.pid in family and listening:
            try:
                found.add((psutil.Process(c.pid).name(), c.laddr.ip, c.laddr.port))
            except psutil.NoSuchProcess:
                continue
    return found


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a dual-stack socket
    return address.is_loopback or bool(mapped and mapped.is_loopback)


@pytest.fixture
def open_ports() -> Callable[[Iterable[int]], set[tuple[str, str, int]]]:
    """`open_ports(pids)`: what those processes and their descendants listen on, now."""
    return _open_ports


@pytest.fixture
def loopback() -> Callable[[str], bool]:
    """`loopback(ip)`: whether a listening address is reachable from this machine only."""
    return _loopback


def _segments(jpeg: bytes) -> list[tuple[int, int]]:
    """(marker, offset) of each header segment of a JPEG, up to its start of scan."""
    out, at = [], 2
    while jpeg[at + 1] != 0xDA:
        out.append((jpeg[at + 1], at))
        at += 2 + int.from_bytes(jpeg[at + 2:at + 4], "big")
    return out


def _corrupt_jpeg(jpeg: bytes, kind: str) -> bytes:
    data = bytearray(jpeg)
    segments = _segments(jpeg)
    if kind == "garbled":  # 200 zero bytes centred on the third Huffman-table (DHT) marker
        third = [at for marker, at in segments if marker == 0xC4][2]
        data[third - 100:third + 100] = bytes(200)
    elif kind == "bomb":  # the frame header (SOF0) claims 30000 x 30000 pixels
        sof = next(at for marker, at in segments if marker == 0xC0)
        data[sof + 5:sof + 9] = (30000).to_bytes(2, "big") * 2
    else:
        raise ValueError(kind)
    return bytes(data)


@pytest.fixture(scope="session")
def corrupt_jpeg():
    """corrupt_jpeg(data, kind) -> the JPEG `data`, same length, made hostile:
    "garbled": 200 zero bytes over its Huffman tables: torchvision (libjpeg-turbo) decodes it,
    with a warning, and DALI's decoder (nvImageCodec) refuses it (200 garbled bytes inside the
    entropy-coded data decode with both);
    "bomb": a header claiming 30000 x 30000 pixels (a decompression bomb).
    """
    return _corrupt_jpeg


@pytest.fixture(scope="session")
def make_hostile():
    """make_hostile(tar, index, kind) -> (key, image): the image of sample `index` of `tar`
    turned into a `kind` one (see corrupt_jpeg) in place."""
    def make(tar: Path, index: int, kind: str) -> tuple[str, bytes]:
        sample = list(iter_samples(tar))[index]
        data, image = tar.read_bytes(), sample["jpg"]
        at = data.index(image)
        hostile = _corrupt_jpeg(image, kind)
        tar.write_bytes(data[:at] + hostile + data[at + len(image):])
        return sample["__key__"], hostile
    return make
