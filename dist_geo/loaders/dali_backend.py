"""The training loader as a DALI pipeline: GPU decode and augmentation when there is a GPU, the
same operators on the CPU when there is none (`device_id=None`), one output contract.

`fn.readers.webdataset` reads the group's tars, in order, through index files of this rank's
samples alone: the group's stream is dealt out in stretches of the per-rank batch B, stretch c
to rank c % R, as the torch loader deals it, so global batch k is one stretch of the stream
(CosPlace's batch: consecutive visits of one pass over the classes, no class twice), whatever
the number of ranks; a pass keeps only whole global batches, so every rank has as many
batches per pass and the ranks stay in step pass after pass. Class-uniform shards are read in
order, image-uniform ones shuffled within a buffer (`initial_fill`,
contract.sample_shuffle); `reader_name` lets DALIGenericIterator end a pass, after which the
next pass starts (endless stream). The augmentation is the torch loader's, as a DALI graph
(dali_augment.py), its random draws from an external source seeded per rank.

Corrupt data: a DALI pipeline cannot skip a sample, it stops. So each tar is checked against
its index before the pipeline is built (the rank's index of a truncated tar holds only its
whole samples); when the pipeline fails, or flags an image whose
header promises more than data.max_image_pixels (never decoded), the shards are scanned
with DALI's own decoder (dist_geo/shards/dali_check.py) for the images it cannot use, which
are left out of rewritten indexes the same way, and the pipeline is rebuilt. Each sample left
out is reported by shard and key like the torch loader's (after a rebuild the stream is no
longer the one intact shards would give).

DALI's CPU threads are cfg.data.num_workers (at least 1). Without a GPU the pipeline runs
synchronously: a batch is made when the trainer asks for it, with every thread, instead of in
the background during the step. There the step's convolutions already keep every core busy,
and a loader thread beside them takes a core from one of their threads, which stalls the
others at each layer's barrier (measured on 2 cores: README, Training speed). On a GPU the
step runs on the device and the loader on the idle host cores, ahead of it.

`start_batch` replays that many batches and drops them: the reader and the random draws
advance as they did, but the images are not decoded (dali_augment.py), so the stream
continues exactly and cheaply.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from dist_geo.config import AugmentConfig, Config
from dist_geo.distributed import DistContext
from dist_geo.errors import DataError
from dist_geo.loaders.contract import FaultCounter, RankShards, dealt, derive_seed, sample_shuffle
from dist_geo.loaders.dali_augment import ParamSource, augment, draws
from dist_geo.shards.dali_check import DaliImageCheck, dali_error
from dist_geo.shards.manifest import entry_key_end, index_entries, index_path
from dist_geo.shards.reading import Fault, ShardReadError, iter_samples, judge_images

log = logging.getLogger(__name__)

READER = "shards"
# "<tar>:<offset>:<key>.jpg", padded so that DALIGenericIterator gets a dense tensor
SOURCE_INFO_BYTES = 4096


@pipeline_def(enable_conditionals=True)
def _train_pipeline(tars: list[str], indexes: list[str], initial_fill: int, aug: AugmentConfig,
                    image_size: int, gpu: bool, params: ParamSource, max_pixels: int,
                    keys_only: bool = False):
    jpegs, labels = fn.readers.webdataset(
        paths=tars, index_paths=indexes, ext=["jpg", "cls"], dtypes=[types.UINT8, types.INT64],
        missing_component_behavior="error", random_shuffle=initial_fill > 1,
        initial_fill=initial_fill, pad_last_batch=True, name=READER,
    )
    if keys_only:
        info = fn.get_property(jpegs, key="source_info")
        return fn.pad(info, axes=[0], shape=[SOURCE_INFO_BYTES], fill_value=0), labels
    images, too_big = augment(jpegs, draws(params), aug, image_size, gpu, max_pixels)
    return images, labels, too_big


def _readable_entries(tar: str) -> tuple[list[str], Fault | None]:
    """The index lines of the samples wholly inside the tar, and a fault if some are not."""
    try:
        size = Path(tar).stat().st_size
        entries = index_entries(index_path(Path(tar)))
    except OSError as e:
        return [], Fault(tar, "", f"unreadable shard or index ({e})")
    kept = [e for e in entries if entry_key_end(e)[1] <= size]
    if len(kept) == len(entries):
        return kept, None
    first = entry_key_end(entries[len(kept)])[0]
    return kept, Fault(tar, first, f"truncated tar (ends at byte {size}): this sample and the "
                                   f"{len(entries) - len(kept) - 1} after it left out")


def _unusable(tar: str, check: DaliImageCheck) -> tuple[set[str], list[Fault]]:
    """Keys of the samples of `tar` whose image DALI cannot use, and their faults."""
    bad, faults = set(), []
    try:
        for sample, verdict in judge_images(iter_samples(tar), check):
            if verdict:
                bad.add(sample["__key__"])
                faults.append(Fault(tar, sample["__key__"], verdict))
    except ShardReadError as e:
        faults.append(e.fault)
    return bad, faults


class DaliTrainLoader:
    """The DALI backend of `build_train_loader` (the contract: contract.py)."""

    def __init__(self, share: RankShards, cfg: Config, seed: int, ctx: DistContext,
                 start_batch: int = 0, keys_only: bool = False):
        self.num_classes = share.num_classes
        self.cfg, self.ctx, self.keys_only = cfg, ctx, keys_only
        self.seed = derive_seed(seed, ctx.rank)  # the ranks' augmentations must differ
        self.faults = FaultCounter(cfg.data.strict)
        self.gpu = ctx.device.type == "cuda"
        self._index_dir: tempfile.TemporaryDirectory | None = None
        self._left_out: set[tuple[str, str]] = set()  # (tar, key) of samples DALI cannot use
        self._rewritten: list[str] = []  # tars read through a rewritten index, in order
        self.tars: dict[str, str] = {}  # tar -> the index file this rank reads it through
        readable = {}
        for tar, _ in share.all_shards:
            readable[tar], fault = _readable_entries(tar)
            if fault and ctx.rank == 0:  # every rank reads it: the ranks' counts are summed
                self.faults.add_all([fault])
        self._deal(readable, cfg.train.per_rank_batch(ctx.world_size))
        if not self.tars:
            raise DataError(f"{share.all_shards[0][0]}: no readable shard in this group")
        self._iter = self._build(start_batch)
        for _ in range(start_batch):
            self._next_batch()

    def _deal(self, readable: dict[str, list[str]], batch: int) -> None:
        """Index files of this rank's stretches of the group's stream (the tars' `readable`
        samples in order), up to the last whole global batch."""
        world = self.ctx.world_size
        total = sum(len(entries) for entries in readable.values())
        end = total // (batch * world) * (batch * world)
        start = 0
        for tar, entries in readable.items():
            self._use_index(tar, [e for i, e in enumerate(entries, start)
                                  if i < end and dealt(i, batch, world)[0] == self.ctx.rank])
            start += len(entries)

    def _use_index(self, tar: str, entries: list[str]) -> None:
        """Read `tar` through an index of only `entries` (written in a temporary folder)."""
        if not entries:
            self.tars.pop(tar, None)
            return
        if self._index_dir is None:
            self._index_dir = tempfile.TemporaryDirectory(prefix="dist_geo_idx_")
        idx = Path(self._index_dir.name) / f"{len(self._rewritten)}.idx"
        self._rewritten.append(tar)
        idx.write_text(f"v1.2 {len(entries)}\n" + "\n".join(entries) + "\n")
        self.tars[tar] = str(idx)

    @property
    def _device_id(self) -> int | None:
        return self.ctx.device.index if self.gpu else None

    def _build(self, start_batch: int = 0) -> DALIGenericIterator:
        data = self.cfg.data
        batch_size = self.cfg.train.per_rank_batch(self.ctx.world_size)
        pipe = _train_pipeline(
            tars=list(self.tars), indexes=list(self.tars.values()),
            initial_fill=sample_shuffle(data), aug=data.augment, image_size=data.image_size,
            gpu=self.gpu, params=ParamSource(data.augment, batch_size, self.seed, start_batch),
            max_pixels=data.max_image_pixels, keys_only=self.keys_only, batch_size=batch_size,
            num_threads=max(1, data.num_workers), device_id=self._device_id,
            seed=self.seed % (2**31 - 1), exec_async=self.gpu, exec_pipelined=self.gpu,
            prefetch_queue_depth=2 if self.gpu else 1,  # in step on CPU (module docstring)
        )
        pipe.build()
        outputs = ["images", "labels"] if self.keys_only else ["images", "labels", "too_big"]
        policy = LastBatchPolicy.PARTIAL if self.keys_only else LastBatchPolicy.DROP
        try:  # the iterator runs the first batch already: a bad sample may fail it here
            return DALIGenericIterator(pipe, outputs, reader_name=READER,
                                       last_batch_policy=policy, auto_reset=True)
        except RuntimeError as e:
            if self.keys_only:
                raise
            self._leave_out_unusable(dali_error(e))
            return self._build()

    def _leave_out_unusable(self, failure: str) -> None:
        """After the pipeline failed or met an oversized image: index files without the samples
        DALI cannot use (the caller builds the next pipeline)."""
        check = DaliImageCheck(self.cfg.data.max_image_pixels, self._device_id)
        found, bad_keys = [], {}
        for tar in self.tars:
            bad, faults = _unusable(tar, check)
            found += faults
            if bad - {key for t, key in self._left_out if t == tar}:
                bad_keys[tar] = bad
        if not bad_keys:
            raise DataError(f"DALI pipeline failed on shards whose images DALI all decodes: "
                            f"{failure}")
        self.faults.add_all(found)
        for tar, bad in bad_keys.items():
            self._left_out |= {(tar, key) for key in bad}
            entries = index_entries(Path(self.tars[tar]))
            self._use_index(tar, [e for e in entries if entry_key_end(e)[0] not in bad])
        if not self.tars:
            raise DataError("no decodable sample left in this group's shards")

    def __iter__(self) -> DaliTrainLoader:
        return self

    def _next_batch(self) -> dict:
        while True:
            try:
                batch = next(self._iter)[0]
            except StopIteration:
                continue  # end of a pass: auto_reset started the next one
            except RuntimeError as e:
                if self.keys_only:
                    raise
                self._leave_out_unusable(dali_error(e))
                self._iter = self._build()
                continue
            if self.keys_only or not batch["too_big"].any():
                return batch
            self._leave_out_unusable("an image over data.max_image_pixels")
            self._iter = self._build()

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self._next_batch()
        return (batch["images"].to(self.ctx.device, non_blocking=True),
                batch["labels"].view(-1).to(self.ctx.device, non_blocking=True))

    def stats(self) -> dict:
        return self.faults.stats()


def dali_pass_keys(share: RankShards, cfg: Config, seed: int,
                   ctx: DistContext) -> list[tuple[str, int]]:
    """(key, label) of every sample one DALI pass yields on this rank (no decoding)."""
    loader = DaliTrainLoader(share, cfg, seed, ctx, keys_only=True)
    keys = []
    for batch in loader._iter:  # one pass: the iterator stops at the end of the reader's epoch
        infos, labels = batch[0]["images"], batch[0]["labels"].view(-1).tolist()
        for info, label in zip(infos, labels):
            source = bytes(info.numpy()).rstrip(b"\0").decode()
            keys.append((source.rsplit(":", 1)[1].split(".", 1)[0], label))
    return keys


__all__ = ["DaliTrainLoader", "dali_pass_keys"]
