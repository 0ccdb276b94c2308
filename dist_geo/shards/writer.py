"""Pack a dataset split into WebDataset shards, one shard set per CosPlace group.

Each of the first `data.groups_num` groups gets its own folder of tars, so that the epoch that
trains group g streams group g alone. A sample is the image file's bytes as they are on disk
(`<key>.jpg`, never re-encoded), its metadata (`<key>.json`: UTM, heading, class and group) and
its local class index (`<key>.cls`, 8 bytes, see dist_geo/shards/manifest.py). Keys are
`g{group}-{position:08d}`, the sample's position in its group's sequence.

Class balance. CosPlace samples class-uniformly: an item is a class, then a random image of
it, so a class of 3 images weighs as much as one of 300. A stream reads what is written, so
the balance is decided here, by `data.sampling`:
- `class_uniform`: the group's sequence is a run of *passes*; a pass holds exactly one image of
  every class, in random order, and a class's images are taken in a shuffled cycle (a class
  with fewer images than passes repeats them, a larger one shows a different image each pass).
  There are ceil(num_images / num_classes) passes, so a group's shards hold about as many
  samples as it has images, every class the same number of times, and any stretch of the
  stream (a shard, a rank's share, a shuffle buffer) is close to class-uniform.
- `image_uniform`: every image once, in one random order: classes weigh by their size.
The sequence is cut into shards of `data.shard_size` samples in order; the loaders then
shuffle shard order and samples within a buffer. Both layouts are seeded by `data.shard_seed`.

Writing is atomic and resumable: a tar is written under a temporary name, indexed for DALI
(`wds2idx`'s IndexCreator), then renamed; a re-run with the same parameters skips the shards
that exist. `manifest.json` is written last.
"""
from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path
from typing import Any

from webdataset import TarWriter
from wds2idx import IndexCreator

from dist_geo.atomic import atomic_path, write_json
from dist_geo.bulk import gc_paused
from dist_geo.checksums import sha256_file
from dist_geo.config import DataConfig
from dist_geo.data.groups import Group, build_groups
from dist_geo.data.vg_format import ImageRecord, list_images
from dist_geo.errors import DataError
from dist_geo.images import ImageError, open_checked
from dist_geo.shards.manifest import (
    MANIFEST, PARAMS, encode_label, group_dir, index_entries, index_path, shard_name,
    shard_params,
)

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1


def plan_samples(group: Group, sampling: str, rng: random.Random) -> list[tuple[int, ImageRecord]]:
    """The group's sample sequence as (local class index, image), see the module docstring."""
    with gc_paused():  # a tuple per sample, millions for a large group (dist_geo/bulk.py)
        return _plan(group, sampling, rng)


def _plan(group: Group, sampling: str, rng: random.Random) -> list[tuple[int, ImageRecord]]:
    if sampling == "image_uniform":
        samples = [(c, img) for c, imgs in enumerate(group.images) for img in imgs]
        rng.shuffle(samples)
        return samples
    passes = math.ceil(group.num_images / group.num_classes)
    cycles = [list(imgs) for imgs in group.images]
    for cycle in cycles:
        rng.shuffle(cycle)
    samples = []
    for p in range(passes):
        this_pass = [(c, cycle[p % len(cycle)]) for c, cycle in enumerate(cycles)]
        rng.shuffle(this_pass)
        samples.extend(this_pass)
    return samples


def _read_image(record: ImageRecord, max_pixels: int) -> bytes:
    """The image file's bytes, checked to be an image PIL recognises of at most `max_pixels`
    pixels (header and structure only, no decode: dist_geo/images.py)."""
    try:
        data = Path(record.path).read_bytes()
        with open_checked(data, max_pixels) as im:
            im.verify()
    except ImageError as e:
        raise DataError(f"{record.path}: {e}") from None
    except (OSError, SyntaxError) as e:
        raise DataError(f"{record.path}: unreadable image ({e})") from None
    return data


def _sample(key: str, label: int, g: int, group: Group, record: ImageRecord, data: bytes) -> dict:
    meta = {
        "utm_east": record.utm_east, "utm_north": record.utm_north, "heading": record.heading,
        "class_index": label, "class_id": list(group.class_ids[label]),
        "group_index": g, "group_id": list(group.group_id), "path": record.path,
    }
    return {"__key__": key, "jpg": data, "json": json.dumps(meta).encode(), "cls": encode_label(label)}


def _write_shard(tar: Path, samples: list[dict]) -> int:
    """Write one tar + its DALI index under temporary names, then rename; returns the count.

    The index is renamed first, the tar last: the tar's presence marks the shard finished.
    """
    with atomic_path(tar) as tmp, atomic_path(index_path(tar)) as tmp_idx:
        with open(tmp, "wb") as f, TarWriter(f, encoder=False, mtime=0) as writer:
            for sample in samples:
                writer.write(sample)
        with IndexCreator(str(tmp), str(tmp_idx), verbose=False) as index:
            index.create_index()
    return len(samples)


def _count_indexed(tar: Path) -> int:
    """Samples of a finished shard, from its DALI index."""
    try:
        return len(index_entries(index_path(tar)))
    except OSError:
        raise DataError(f"{tar}: finished shard without a readable DALI index; delete it and re-run") from None


def _write_group(g: int, group: Group, out_dir: Path, data_cfg: DataConfig,
                 skip_bad: bool) -> dict[str, Any]:
    rng = random.Random(f"{data_cfg.shard_seed}/{g}")
    plan = plan_samples(group, data_cfg.sampling, rng)
    folder = group_dir(out_dir, g)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".shard-*.tmp.*"):  # an interrupted run's partial shard
        stale.unlink()
    shards, bad = [], []
    for i, start in enumerate(range(0, len(plan), data_cfg.shard_size)):
        tar = folder / shard_name(i)
        if tar.exists():
            count = _count_indexed(tar)
        else:
            samples = []
            for pos, (label, record) in enumerate(plan[start:start + data_cfg.shard_size], start):
                try:
                    data = _read_image(record, data_cfg.max_image_pixels)
                except DataError as e:
                    if not skip_bad:
                        raise
                    bad.append(record.path)
                    log.warning("skipped: %s", e)
                    continue
                samples.append(_sample(f"g{g:02d}-{pos:08d}", label, g, group, record, data))
            if not samples:
                continue
            count = _write_shard(tar, samples)
        shards.append({"file": str(tar.relative_to(out_dir)), "samples": count,
                       "sha256": sha256_file(tar)})
    log.info("group %d %s: %d classes, %d images -> %d samples in %d shards",
             g, group.group_id, group.num_classes, group.num_images, len(plan), len(shards))
    return {
        "index": g, "group_id": list(group.group_id), "num_classes": group.num_classes,
        "num_images": group.num_images, "num_samples": sum(s["samples"] for s in shards),
        "class_ids": [list(c) for c in group.class_ids], "shards": shards, "skipped_images": bad,
    }


def _claim(out_dir: Path, params: dict[str, Any]) -> None:
    """Record what this folder holds; refuse to mix shards of other parameters into it.

    Only finished shards are worth protecting: a run that failed before writing any (a bad
    image, too few groups) leaves its parameters to be replaced by the corrected run's.
    """
    path = out_dir / PARAMS
    if path.exists() and any(out_dir.glob("group_*/shard-*.tar")):
        old = json.loads(path.read_text())
        if old != params:
            diff = {k: (old.get(k), v) for k, v in params.items() if old.get(k) != v}
            raise DataError(
                f"{path}: shard folder was written with other parameters {diff} "
                f"(use another output folder or delete this one)"
            )
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(path, params, indent=1)


def write_shards(dataset_root: str | Path, out_dir: str | Path, data_cfg: DataConfig,
                 split: str = "train") -> dict[str, Any]:
    """Shards of the first `data_cfg.groups_num` groups of `<dataset_root>/<split>`; the manifest.

    `data_cfg.skip_bad` skips (and lists in the manifest) images whose name does not parse,
    whose file is not an image or whose header promises more than `data_cfg.max_image_pixels`
    pixels, instead of stopping with a DataError.
    """
    dataset_root, out_dir = Path(dataset_root).resolve(), Path(out_dir)
    params = {"dataset": str(dataset_root), "split": split, **shard_params(data_cfg)}
    _claim(out_dir, params)
    records, bad_names = list_images(dataset_root / split, skip_bad=data_cfg.skip_bad)
    num_images = len(records)
    groups = build_groups(records, data_cfg.M, data_cfg.alpha, data_cfg.N, data_cfg.L,
                          data_cfg.min_images_per_class, cache_dir=out_dir / "groups_cache")
    if len(groups) < data_cfg.groups_num:
        raise DataError(
            f"{dataset_root / split}: only {len(groups)} groups with classes of >= "
            f"{data_cfg.min_images_per_class} images, data.groups_num={data_cfg.groups_num}"
        )
    # From here on only the written groups' images are needed (SF-XL: 8 groups of 50, a sixth
    # of its 41M records): the rest are freed before the hours of writing.
    del records, groups[data_cfg.groups_num:]
    manifest = {
        "version": MANIFEST_VERSION, **params,
        "num_images": num_images, "skipped_names": bad_names,
        "groups": [_write_group(g, groups[g], out_dir, data_cfg, data_cfg.skip_bad)
                   for g in range(data_cfg.groups_num)],
    }
    write_json(out_dir / MANIFEST, manifest, indent=1)
    return manifest


__all__ = ["plan_samples", "write_shards"]
