"""The contract both training loaders keep, and the pieces they share.

`build_train_loader` (factory.py) returns the batches of one CosPlace group for one rank, from
its shards, with either backend (cfg.data.loader = "dali" | "torch": dali_backend.py,
torch_backend.py). Both keep this contract:
- iterating yields `(images, labels)`: images float32 [B, 3, S, S], ImageNet-normalised and
  augmented (augment.py), labels int64 [B] = local class index in the group,
  both on ctx.device (B = this rank's share of the global cfg.train.batch_size,
  S = cfg.data.image_size);
- endless within an epoch: passes over the rank's shards follow each other (the trainer
  takes cfg.train.iterations_per_epoch batches);
- deterministic given (cfg.train.seed, epoch, rank, world size); `start_batch` skips that
  many batches, so a resumed epoch continues with the batches the interrupted one would have
  produced;
- one stream per group, the same on every rank, dealt out in stretches of the per-rank
  batch: rank r's batch k is the r-th part of global batch k, which is one stretch of the
  stream, the batch one process would train on (the samples' order does not depend on the
  number of ranks or workers);
- a class-uniform group is streamed in its shards' order (`sample_shuffle`), as CosPlace
  visits its classes, pass after pass; only image-uniform shards are shuffled per sample;
- `num_classes` is the group's class count; a corrupt sample (unreadable tar member or
  image) is skipped, logged with its shard and key, and counted in `stats()`; with
  `cfg.data.strict` it raises DataError instead.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from dist_geo.config import DataConfig
from dist_geo.distributed import DistContext
from dist_geo.errors import DataError
from dist_geo.shards.manifest import group_entry, read_manifest
from dist_geo.shards.reading import Fault

log = logging.getLogger(__name__)

MAX_LISTED_FAULTS = 20


class TrainLoader(Protocol):
    num_classes: int

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]: ...

    def stats(self) -> dict: ...


def derive_seed(*parts: int) -> int:
    """A well-mixed 62-bit seed from integers (train seed, epoch, rank, worker, ...)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> 2)


def dealt(position: int, batch: int, world: int) -> tuple[int, int]:
    """(rank, that rank's batch number) of a group's stream position: the stream is dealt out
    in stretches of the per-rank `batch`, stretch c to rank c % world as its batch c // world,
    so global batch k is one stretch of the stream whatever the number of ranks."""
    stretch = position // batch
    return stretch % world, stretch // world


def sample_shuffle(data: DataConfig) -> int:
    """The loaders' shuffle buffer, in samples (1: none).

    CosPlace iterates a DataLoader over the classes with shuffle=True: each pass visits every
    class once, in a new order, so no class comes twice in a batch and its visits are evenly
    spaced. Class-uniform shards are written as such passes (dist_geo/shards/writer.py), so a
    stream that keeps their order is CosPlace's; a shuffle buffer of data.shuffle_buffer
    samples mixes several passes instead (with 1,000: a class twice in 94% of batches of 32
    from ~200 classes), and trains measurably worse (README, Fidelity: training loss 0.8
    above the oracle's after 4 epochs, within the oracle's seeds without the buffer).
    Image-uniform shards hold every image once in a random order: the buffer adds per-epoch
    variety there.
    """
    return 1 if data.sampling == "class_uniform" else data.shuffle_buffer


@dataclass(frozen=True)
class RankShards:
    """A group's shards (path, sample count), and the rank that deals itself its part of them."""

    all_shards: list[tuple[str, int]]
    num_classes: int
    rank: int
    world: int


def rank_shards(out_dir: str | Path, group_index: int, ctx: DistContext) -> RankShards:
    out_dir = Path(out_dir)
    entry = group_entry(read_manifest(out_dir), group_index, out_dir)
    files = [(str(out_dir / s["file"]), int(s["samples"])) for s in entry["shards"]]
    if not files:
        raise DataError(f"{out_dir}: group {group_index} has no shards")
    return RankShards(files, int(entry["num_classes"]), ctx.rank, ctx.world_size)


class FaultCounter:
    """Corrupt samples met by a loader: logged once with shard and key, counted, fatal if strict.

    An endless stream meets the same bad sample on every pass: it counts once, and
    `occurrences` says how often it was skipped.
    """

    def __init__(self, strict: bool):
        self.strict = strict
        self.faults: dict[Fault, int] = {}

    def add_all(self, faults: list[Fault]) -> None:
        for fault in faults:
            if self.strict:
                raise DataError(f"corrupt sample (data.strict=true): {fault}")
            if fault not in self.faults:
                log.warning("corrupt sample skipped: %s", fault)
            self.faults[fault] = self.faults.get(fault, 0) + 1

    def stats(self) -> dict:
        return {
            "corrupt_samples": len(self.faults),
            "occurrences": sum(self.faults.values()),
            "faults": [str(f) for f in list(self.faults)[:MAX_LISTED_FAULTS]],
        }


__all__ = ["FaultCounter", "RankShards", "TrainLoader", "dealt", "derive_seed", "rank_shards",
           "sample_shuffle"]
