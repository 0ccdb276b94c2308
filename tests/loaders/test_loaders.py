from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from dist_geo.config import build_config
from dist_geo.distributed import DistContext, init_distributed, shutdown, single_process
from dist_geo.loaders.augment import IMAGENET_MEAN, IMAGENET_STD, NIGHT_LIGHT_GAINS
from dist_geo.loaders.contract import rank_shards
from dist_geo.loaders.dali_backend import dali_pass_keys
from dist_geo.loaders.factory import build_train_loader
from dist_geo.loaders.torch_backend import pass_keys
from dist_geo.shards.reading import iter_samples
from dist_geo.shards.writer import write_shards

# The tiny world's group 0 (M=10, alpha=30, N=5, L=2): 12 classes of 3 images, 5 shards.
OVERRIDES = ["data.M=10", "data.alpha=30", "data.N=5", "data.L=2", "data.groups_num=2",
             "data.min_images_per_class=3", "data.shard_size=8", "data.image_size=32",
             "train.batch_size=8", "data.shuffle_buffer=16", "data.num_workers=0"]
LOWEST = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
HIGHEST = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))


@pytest.fixture(scope="module")
def shard_dir(tiny_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_shards(tiny_world, out, build_config(overrides=OVERRIDES).data)
    return out


def config(shard_dir: Path, *extra: str):
    return build_config(overrides=[*OVERRIDES, f"data.shards={shard_dir}", *extra])


def rank(r: int, world: int = 2) -> DistContext:
    return DistContext(rank=r, world_size=world, local_rank=r, device=torch.device("cpu"))


def take(loader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(loader) for _ in range(n)]


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_batches_follow_the_contract(shard_dir, backend):
    cfg = config(shard_dir, f"data.loader={backend}", "data.augment.hflip=true",
                 "data.augment.night_light=true")
    loader = build_train_loader(cfg, 0, single_process(), epoch=0)
    assert loader.num_classes == 12
    batches = take(loader, 12)  # 96 samples: more than two passes (36), so it must not end
    for images, labels in batches:
        assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
        assert labels.shape == (8,) and labels.dtype == torch.int64
        assert LOWEST - 1e-4 <= images.min() and images.max() <= HIGHEST + 1e-4
    labels = torch.cat([b[1] for b in batches])
    assert set(labels.tolist()) == set(range(12))
    assert loader.stats()["corrupt_samples"] == 0


@pytest.mark.parametrize("backend,shard_size", [("torch", 8), ("torch", 100), ("dali", 8)])
def test_two_ranks_see_every_sample_once_per_pass(tiny_world, tmp_path, backend, shard_size):
    """One pass over 5 shards or 1 shard, dealt to two ranks: every sample once (DALI leaves
    out the pass's last partial global batch, so its ranks stay in step)."""
    cfg = config(tmp_path, f"data.loader={backend}", f"data.shard_size={shard_size}")
    write_shards(tiny_world, tmp_path, cfg.data)
    all_shards = rank_shards(tmp_path, 0, single_process()).all_shards
    assert (len(all_shards) >= 2) == (shard_size == 8)
    expected = [s["__key__"] for path, _ in all_shards for s in iter_samples(path)]
    seen = []
    for r in range(2):
        share = rank_shards(tmp_path, 0, rank(r))
        if backend == "torch":
            keys, faults = pass_keys(share, cfg, seed=0)
            assert not faults
        else:
            keys = dali_pass_keys(share, cfg, seed=0, ctx=rank(r))
        assert keys
        seen += [k for k, _ in keys]
    whole = len(expected) // 8 * 8 if backend == "dali" else len(expected)
    assert len(set(seen)) == len(seen) == whole and set(seen) <= set(expected)


def descents(keys: list[tuple[str, int]]) -> int:
    """How often the stream steps back in the group's sequence (keys are g<group>-<position>)."""
    positions = [int(key.rsplit("-", 1)[1]) for key, _ in keys]
    return sum(b < a for a, b in zip(positions, positions[1:]))


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_class_uniform_passes_are_streamed_in_order(tiny_world, tmp_path, backend):
    """CosPlace visits each class once per pass over the classes; the shards hold such passes,
    so a loader must not shuffle samples across them: within each shard the stream follows
    the layout (it may only step back where a new shard starts). Image-uniform shards are
    still shuffled per sample."""
    for sampling in ("class_uniform", "image_uniform"):
        cfg = config(tmp_path / sampling, f"data.loader={backend}", f"data.sampling={sampling}")
        write_shards(tiny_world, tmp_path / sampling, cfg.data)
        share = rank_shards(tmp_path / sampling, 0, single_process())
        keys = (pass_keys(share, cfg, seed=0)[0] if backend == "torch"
                else dali_pass_keys(share, cfg, seed=0, ctx=single_process()))
        total = sum(n for _, n in share.all_shards)
        assert len(keys) == (total // 8 * 8 if backend == "dali" else total)  # DALI: whole batches
        if sampling == "class_uniform":
            assert descents(keys) < len(share.all_shards)
        else:
            assert descents(keys) > len(share.all_shards)


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_a_global_batch_is_one_stretch_of_the_stream_on_any_number_of_ranks(shard_dir, backend):
    """CosPlace's batch is consecutive visits of one pass over the classes (no class twice).
    Split over ranks, the global batch must stay that: rank r's batch k is the r-th part of
    the batch one process would train on (ranks reading their own shards joined fragments of
    different passes: a class twice in most global batches)."""
    cfg = config(shard_dir, f"data.loader={backend}")
    one = take(build_train_loader(cfg, 0, single_process(), epoch=1), 9)
    two = [take(build_train_loader(cfg, 0, rank(r), epoch=1), 9) for r in range(2)]
    for k in range(9):
        assert torch.cat([two[0][k][1], two[1][k][1]]).tolist() == one[k][1].tolist()


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_deterministic_and_exact_resume_with_workers(shard_dir, backend):
    cfg = config(shard_dir, f"data.loader={backend}", "data.num_workers=2")
    first = take(build_train_loader(cfg, 0, single_process(), epoch=3), 5)
    again = take(build_train_loader(cfg, 0, single_process(), epoch=3), 5)
    resumed = take(build_train_loader(cfg, 0, single_process(), epoch=3, start_batch=3), 2)
    other_epoch = take(build_train_loader(cfg, 0, single_process(), epoch=4), 1)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first[3:], resumed))
    assert not torch.equal(first[0][0], other_epoch[0][0])


def test_dali_on_the_cpu_makes_each_batch_when_asked(shard_dir):
    """Without a GPU the step's convolutions use every core: DALI working beside them in the
    background would stall them (dali_backend.py), so its pipeline runs in step."""
    cfg = config(shard_dir, "data.loader=dali", "data.num_workers=2")
    pipe = build_train_loader(cfg, 0, single_process(), epoch=0)._iter._pipes[0]
    assert (pipe.exec_async, pipe.exec_pipelined, pipe.num_threads) == (False, False, 2)


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_night_light_is_the_shared_per_channel_gain(shard_dir, backend):
    """Same seed, night light off vs always on: the same crops, scaled by NIGHT_LIGHT_GAINS."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = {}
    for night in ("false", "true"):
        cfg = config(shard_dir, f"data.loader={backend}", f"data.augment.night_light={night}",
                     "data.augment.night_light_p=1.0", "data.augment.hflip=true",
                     "data.augment.brightness=0", "data.augment.hue=0")  # jitter partly off
        images, _ = next(build_train_loader(cfg, 0, single_process(), epoch=0))
        rgb[night] = images * std + mean
    gains = torch.tensor(NIGHT_LIGHT_GAINS).view(3, 1, 1)
    torch.testing.assert_close(rgb["true"], rgb["false"] * gains, atol=1e-4, rtol=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keys_on_rank(rank: int, world: int, port: int, shard_dir: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    try:
        cfg = config(Path(shard_dir), "data.loader=dali")
        share = rank_shards(shard_dir, 0, ctx)
        keys = {"torch": [k for k, _ in pass_keys(share, cfg, seed=0)[0]],
                "dali": [k for k, _ in dali_pass_keys(share, cfg, seed=0, ctx=ctx)]}
        images, labels = next(build_train_loader(cfg, 0, ctx, epoch=0))
        keys["batch"] = [list(images.shape), str(labels.dtype)]
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, keys)
        if rank == 0:
            Path(out).write_text(json.dumps(gathered))
    finally:
        shutdown()


def test_two_processes_split_the_group_between_them(shard_dir, tmp_path):
    out = tmp_path / "keys.json"
    mp.start_processes(_keys_on_rank, args=(2, _free_port(), str(shard_dir), str(out)),
                       nprocs=2, start_method="spawn", join=True)
    ranks = json.loads(out.read_text())
    expected = sorted(s["__key__"] for path, _ in rank_shards(shard_dir, 0, single_process()).all_shards
                      for s in iter_samples(path))
    for backend, whole in (("torch", len(expected)), ("dali", len(expected) // 8 * 8)):
        seen = ranks[0][backend] + ranks[1][backend]
        assert len(set(seen)) == len(seen) == whole and set(seen) <= set(expected)
    # train.batch_size is the global batch: each of the 2 ranks gets half of it
    assert ranks[0]["batch"] == ranks[1]["batch"] == [[4, 3, 32, 32], "torch.int64"]
