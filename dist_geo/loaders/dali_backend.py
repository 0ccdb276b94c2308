"""The training loader as a DALI pipeline: GPU decode and augmentation when there is a GPU, the
same operators on the CPU when there is none (`device_id=None`), one output contract.

`fn.readers.webdataset` reads the group's tars through their wds2idx index files; DALI splits
the samples in `num_shards` contiguous parts and this rank keeps part `shard_id`
(`stick_to_shard`, as the torch loader keeps its shards); it shuffles within a buffer
(`initial_fill`, the layout already shuffled samples across shards) and pads the last batch
(`pad_last_batch`) so every rank's pass has whole batches; `reader_name` lets
DALIGenericIterator end a pass, after which the next pass starts (endless stream). The
augmentations are those of dist_geo/loaders/augment.py; the night light is folded into
crop_mirror_normalize's per-sample mean and std.

Corrupt data: a DALI pipeline cannot skip a sample, it stops. So each tar is checked against
its index before the pipeline is built (a truncated tar is read through a rewritten index of
its whole samples, in a temporary folder), and when decoding fails the shards are scanned
for undecodable images, which are left out of rewritten indexes the same way, and the
pipeline is rebuilt. Each sample left out is reported by shard and key like the torch
loader's (after a rebuild the stream is no longer the one intact shards would give).

DALI's CPU threads are cfg.data.num_workers (at least 1). `start_batch` replays and drops
that many batches: DALI is deterministic given its seed, but it cannot skip without decoding.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from dist_geo.config import AugmentConfig, Config
from dist_geo.distributed import DistContext
from dist_geo.errors import DataError
from dist_geo.loaders.augment import (
    CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD, NIGHT_LIGHT_GAINS, flip_probability, hue_degrees,
    jitter_range, night_light_probability,
)
from dist_geo.loaders.contract import FaultCounter, RankShards
from dist_geo.shards.manifest import entry_key_end, index_entries, index_path
from dist_geo.shards.reading import Fault, ShardReadError, decode_rgb, iter_samples

log = logging.getLogger(__name__)

READER = "shards"
SOURCE_INFO_BYTES = 4096  # "<tar>:<offset>:<key>.jpg", padded so DALIGenericIterator gets a dense tensor


def _constant(values) -> types.Constant:
    return types.Constant(np.asarray(values, dtype=np.float32))


def _uniform(lo: float, hi: float):
    """A per-sample factor in [lo, hi]; the constant when the range is empty (jitter off)."""
    return fn.random.uniform(range=[lo, hi]) if hi > lo else lo


def _augment(jpegs, aug: AugmentConfig, image_size: int, gpu: bool):
    """Decode + augmentation steps 1-5 of dist_geo/loaders/augment.py."""
    images = fn.decoders.image_random_crop(
        jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB,
        random_area=[aug.crop_scale_min, 1.0], random_aspect_ratio=list(CROP_RATIO),
    )
    images = fn.resize(images, resize_x=image_size, resize_y=image_size)
    hue = hue_degrees(aug.hue)
    images = fn.color_twist(
        images,
        brightness=_uniform(*jitter_range(aug.brightness)),
        contrast=_uniform(*jitter_range(aug.contrast)),
        saturation=_uniform(*jitter_range(aug.saturation)),
        hue=_uniform(-hue, hue),
    )
    night = fn.cast(fn.random.coin_flip(probability=night_light_probability(aug)), dtype=types.FLOAT)
    gains = 1.0 + night * (_constant(NIGHT_LIGHT_GAINS) - 1.0)  # 1 where no night light
    return fn.crop_mirror_normalize(
        images, dtype=types.FLOAT, output_layout="CHW",
        mean=_constant(IMAGENET_MEAN) * 255.0 / gains, std=_constant(IMAGENET_STD) * 255.0 / gains,
        mirror=fn.random.coin_flip(probability=flip_probability(aug)),
    )


@pipeline_def
def _train_pipeline(tars: list[str], indexes: list[str], shard_id: int, num_shards: int,
                    initial_fill: int, aug: AugmentConfig, image_size: int, gpu: bool,
                    keys_only: bool = False):
    jpegs, labels = fn.readers.webdataset(
        paths=tars, index_paths=indexes, ext=["jpg", "cls"], dtypes=[types.UINT8, types.INT64],
        missing_component_behavior="error", random_shuffle=True, initial_fill=initial_fill,
        shard_id=shard_id, num_shards=num_shards, stick_to_shard=True, pad_last_batch=True,
        name=READER,
    )
    if keys_only:
        info = fn.get_property(jpegs, key="source_info")
        return fn.pad(info, axes=[0], shape=[SOURCE_INFO_BYTES], fill_value=0), labels
    return _augment(jpegs, aug, image_size, gpu), labels


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


def _undecodable(tar: str) -> tuple[set[str], list[Fault]]:
    """Keys of the samples of `tar` whose image does not decode, and their faults."""
    bad, faults = set(), []
    try:
        for sample in iter_samples(tar):
            try:
                decode_rgb(sample["jpg"])
            except (KeyError, ValueError) as e:
                bad.add(sample["__key__"])
                fault = f"missing member .{e.args[0]}" if isinstance(e, KeyError) else str(e)
                faults.append(Fault(tar, sample["__key__"], fault))
    except ShardReadError as e:
        faults.append(e.fault)
    return bad, faults


class DaliTrainLoader:
    """The DALI backend of `build_train_loader` (the contract: contract.py)."""

    def __init__(self, share: RankShards, cfg: Config, seed: int, ctx: DistContext,
                 start_batch: int = 0, keys_only: bool = False):
        self.num_classes = share.num_classes
        self.cfg, self.ctx, self.seed, self.keys_only = cfg, ctx, seed, keys_only
        self.faults = FaultCounter(cfg.data.strict)
        self.gpu = ctx.device.type == "cuda"
        self._index_dir: tempfile.TemporaryDirectory | None = None
        self._left_out: set[tuple[str, str]] = set()  # (tar, key) of undecodable samples
        self._rewritten: list[str] = []  # tars read through a rewritten index, in order
        self.tars = {tar: str(index_path(Path(tar))) for tar, _ in share.all_shards}  # -> index
        for tar, _ in share.all_shards:
            entries, fault = _readable_entries(tar)
            if fault:
                self.faults.add_all([fault])
                self._use_index(tar, entries)
        if not self.tars:
            raise DataError(f"{share.all_shards[0][0]}: no readable shard in this group")
        self._iter = self._build()
        for _ in range(start_batch):
            next(self)

    def _use_index(self, tar: str, entries: list[str]) -> None:
        """Read `tar` through an index of only `entries` (written in a temporary folder)."""
        if not entries:
            del self.tars[tar]
            return
        if self._index_dir is None:
            self._index_dir = tempfile.TemporaryDirectory(prefix="dist_geo_idx_")
        idx = Path(self._index_dir.name) / f"{len(self._rewritten)}.idx"
        self._rewritten.append(tar)
        idx.write_text(f"v1.2 {len(entries)}\n" + "\n".join(entries) + "\n")
        self.tars[tar] = str(idx)

    def _build(self) -> DALIGenericIterator:
        data = self.cfg.data
        pipe = _train_pipeline(
            tars=list(self.tars), indexes=list(self.tars.values()),
            shard_id=self.ctx.rank, num_shards=self.ctx.world_size,
            initial_fill=data.shuffle_buffer, aug=data.augment, image_size=data.image_size,
            gpu=self.gpu, keys_only=self.keys_only,
            batch_size=self.cfg.train.per_rank_batch(self.ctx.world_size),
            num_threads=max(1, data.num_workers),
            device_id=self.ctx.device.index if self.gpu else None,
            seed=self.seed % (2**31 - 1),
        )
        pipe.build()
        policy = LastBatchPolicy.PARTIAL if self.keys_only else LastBatchPolicy.DROP
        return DALIGenericIterator(pipe, ["images", "labels"], reader_name=READER,
                                   last_batch_policy=policy, auto_reset=True)

    def _leave_out_undecodable(self, error: RuntimeError) -> None:
        """After a decoding failure: index files without the undecodable samples, new pipeline."""
        found, bad_keys = [], {}
        for tar in self.tars:
            bad, faults = _undecodable(tar)
            found += faults
            if bad - {key for t, key in self._left_out if t == tar}:
                bad_keys[tar] = bad
        if not bad_keys:
            raise DataError(f"DALI pipeline failed on shards whose images all decode with "
                            f"torchvision: {str(error).splitlines()[-1]}") from error
        self.faults.add_all(found)
        for tar, bad in bad_keys.items():
            self._left_out |= {(tar, key) for key in bad}
            kept = [e for e in index_entries(Path(self.tars[tar])) if entry_key_end(e)[0] not in bad]
            self._use_index(tar, kept)
        if not self.tars:
            raise DataError("no decodable sample left in this group's shards")
        self._iter = self._build()

    def __iter__(self) -> DaliTrainLoader:
        return self

    def _next_batch(self) -> dict:
        while True:
            try:
                return next(self._iter)[0]
            except StopIteration:
                continue  # end of a pass: auto_reset started the next one
            except RuntimeError as e:
                if self.keys_only:
                    raise
                self._leave_out_undecodable(e)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self._next_batch()
        return (batch["images"].to(self.ctx.device, non_blocking=True),
                batch["labels"].view(-1).to(self.ctx.device, non_blocking=True))

    def stats(self) -> dict:
        return self.faults.stats()


def dali_pass_keys(share: RankShards, cfg: Config, seed: int, ctx: DistContext) -> list[tuple[str, int]]:
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
