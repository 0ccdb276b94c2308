"""The training loader on webdataset + torchvision.transforms.v2 (where DALI is not installable).

The group's stream is the same on every rank and worker: passes over all of the group's
shards, each pass in a new seeded order, read sample by sample (dist_geo/shards/reading.py,
so faults carry shard and key), shuffled in a seeded buffer (`wds.shuffle`) when the shards
are image-uniform (contract.sample_shuffle). Its samples are dealt out in stretches of the
per-rank batch B: stretch c goes to rank c % R as that rank's batch c // R, so global batch k
is samples [k R B, (k+1) R B) of the stream, the batch one process would train on (CosPlace's
batch: consecutive visits of one pass over the classes, no class twice). A rank's batch k
is made by DataLoader worker k % W, which the DataLoader asks in turn; each worker decodes and
augments only its own samples, the augmentation of stream position i seeded by (seed, i). So
the global stream is a function of the seed alone, whatever the number of ranks and workers,
and `start_batch` is cheap and exact: earlier batches are never decoded. Every rank and worker
reads every shard of the group: reading a tar costs little beside decoding its JPEGs.

The pipeline is assembled from webdataset stages rather than `wds.WebDataset`, whose shard
opening hands errors over without the member's key and whose `shardshuffle`/`empty_check`
concern finite shard lists: here the shard order is explicit (seeded per pass).
"""
from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dist_geo.config import Config
from dist_geo.errors import DataError
from dist_geo.loaders.augment import torch_transform
from dist_geo.loaders.contract import FaultCounter, RankShards, dealt, derive_seed, sample_shuffle
from dist_geo.shards.manifest import decode_label
from dist_geo.shards.reading import Fault, ShardReadError, decode_rgb, iter_samples
from dist_geo.signals import ignore_stop_signals


@dataclass(frozen=True)
class _Shard:
    url: str
    samples: int


class ShardStream(IterableDataset):
    """Batches {"images", "labels", "keys", "faults"} of one rank's stretches of a group's stream.

    `passes=None` streams endlessly; `decode=False` yields keys and labels only (one pass of
    it is what a rank sees per pass over the group, used to check coverage).
    """

    def __init__(self, share: RankShards, cfg: Config, seed: int, start_batch: int = 0,
                 passes: int | None = None, decode: bool = True):
        super().__init__()
        self.shards = [_Shard(url, n) for url, n in share.all_shards]
        self.rank, self.world = share.rank, share.world
        self.seed, self.start_batch, self.passes, self.decode = seed, start_batch, passes, decode
        self.batch_size = cfg.train.per_rank_batch(share.world)
        self.buffer = sample_shuffle(cfg.data)
        self.max_pixels = cfg.data.max_image_pixels
        self.transform = torch_transform(cfg.data.augment, cfg.data.image_size)
        self.faults: list[Fault] = []

    def _shard_order(self) -> Iterator[_Shard]:
        """Pass after pass over the shards, each pass in its own seeded order."""
        for p in itertools.count() if self.passes is None else range(self.passes):
            order = list(self.shards)
            random.Random(derive_seed(self.seed, p)).shuffle(order)
            yield from order

    def _read(self, shards: Iterator[_Shard]) -> Iterator[dict]:
        """The samples of `shards`; an unreadable or short shard is a fault of rank 0 alone
        (every rank reads it: the ranks' counts are summed)."""
        barren: set[str] = set()  # shards read since the last readable sample
        for shard in shards:
            count = 0
            try:
                for sample in iter_samples(shard.url):
                    count += 1
                    yield sample
            except ShardReadError as e:
                self.faults += [e.fault] if self.rank == 0 else []
            if count != shard.samples and self.rank == 0:
                self.faults.append(
                    Fault(shard.url, "", f"{count} samples instead of {shard.samples}"))
            barren = set() if count else barren | {shard.url}
            if len(barren) == len(self.shards):
                raise DataError(f"{shard.url}: none of the group's {len(self.shards)} shards "
                                f"has a readable sample")

    def _deal(self, samples: Iterator[dict], role: int,
              workers: int) -> Iterator[tuple[int, int, dict]]:
        """(stream position, this rank's batch number, sample) of the samples in this rank's
        batches from `start_batch` on that worker `role` of `workers` makes."""
        for position, sample in enumerate(samples):
            rank, batch = dealt(position, self.batch_size, self.world)
            if rank == self.rank and batch % workers == role and batch >= self.start_batch:
                yield position, batch, sample

    def _decode(self, samples: Iterator[tuple[int, int, dict]]) -> Iterator[tuple[int, dict]]:
        # More failures in a row than two passes hold: no sample decodes.
        hopeless = 2 * sum(s.samples for s in self.shards)
        failures = 0
        for position, batch, sample in samples:
            try:
                item = {"key": sample["__key__"], "label": decode_label(sample["cls"])}
                if self.decode:
                    image = decode_rgb(sample["jpg"], self.max_pixels)
                    with torch.random.fork_rng(devices=[]):  # the CPU generator only:
                        torch.default_generator.manual_seed(derive_seed(self.seed, position))
                        item["image"] = self.transform(image)
            except (KeyError, ValueError) as e:
                fault = (f"missing member .{e.args[0]}" if isinstance(e, KeyError)
                         else str(e).splitlines()[-1])
                self.faults.append(Fault(sample["__url__"], sample["__key__"], fault))
                failures += 1
                if failures > hopeless:
                    raise DataError(f"{sample['__url__']}: no sample of this group's shards "
                                    f"decodes (last: {self.faults[-1]})") from None
                continue
            failures = 0
            yield batch, item

    def _batch(self, items: Iterator[tuple[int, dict]]) -> Iterator[dict]:
        """One batch per batch number (a sample that did not decode leaves it one short)."""
        for _, group in itertools.groupby(items, key=lambda pair: pair[0]):
            chunk = [item for _, item in group]
            batch = {
                "keys": [it["key"] for it in chunk],
                "labels": torch.tensor([it["label"] for it in chunk], dtype=torch.int64),
                "faults": self.faults[:],
            }
            if self.decode:
                batch["images"] = torch.stack([it["image"] for it in chunk])
            self.faults.clear()
            yield batch

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # The DataLoader asks worker 0 first: after skipping `start_batch` batches, worker 0
        # must produce batch `start_batch`, so workers take the roles rotated by it.
        role = (worker + self.start_batch) % workers
        pipeline = wds.DataPipeline(
            self._shard_order,
            self._read,
            wds.shuffle(self.buffer, initial=self.buffer, rng=random.Random(self.seed)),
            lambda samples: self._deal(samples, role, workers),
            self._decode,
            self._batch,
        )
        return iter(pipeline)


class TorchTrainLoader:
    """The torch backend of `build_train_loader` (the contract: contract.py)."""

    def __init__(self, share: RankShards, cfg: Config, seed: int, device: torch.device,
                 start_batch: int = 0):
        self.num_classes = share.num_classes
        self.device = device
        self.faults = FaultCounter(cfg.data.strict)
        stream = ShardStream(share, cfg, seed, start_batch=start_batch)
        workers = cfg.data.num_workers
        self._loader = DataLoader(
            stream, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
            persistent_workers=False, prefetch_factor=2 if workers else None,
            worker_init_fn=ignore_stop_signals,  # the rank finishes its step on SIGTERM/SIGINT
        )
        self._iter = iter(self._loader)

    def __iter__(self) -> TorchTrainLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = next(self._iter)
        self.faults.add_all(batch["faults"])
        return (batch["images"].to(self.device, non_blocking=True),
                batch["labels"].to(self.device, non_blocking=True))

    def stats(self) -> dict:
        return self.faults.stats()


def pass_keys(share: RankShards, cfg: Config,
              seed: int) -> tuple[list[tuple[str, int]], list[Fault]]:
    """(key, label) of every sample one pass over this rank's share yields, and the faults met."""
    stream = ShardStream(share, cfg, seed, passes=1, decode=False)
    keys, faults = [], []
    for batch in stream:
        keys += list(zip(batch["keys"], batch["labels"].tolist()))
        faults += batch["faults"]
    return keys, faults + stream.faults


__all__ = ["ShardStream", "TorchTrainLoader", "pass_keys"]
