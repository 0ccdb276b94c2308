"""Training images/s: DALI loader (CPU here) vs torch shard loader vs a plain folder DataLoader.

All read the same images of one CosPlace group of a synthetic world (written once and
cached under --out, as are its shards), apply the same augmentations (colour jitter,
random resized crop, flip, normalisation; dist_geo/loaders/augment.py) and produce the same
(images, labels) batches, side by side in one run; prints one JSON object. `dali_cpu` is the
DALI loader as it runs on a CPU (its colour jitter compiled: fused_jitter.py);
`dali_cpu_operators` is the same pipeline with the jitter of DALI's operators, the GPU's. The
first --warmup batches of each (start-up, worker spawn, shuffle-buffer fill) are not timed;
each loader runs in a process of its own.

    python bench/loader.py [--images 1000] [--source-size 160] [--image-size 128]
                           [--batch 32] [--batches 20] [--workers 2] [--out runs/bench_loader]
                           [key=value ...]

Config overrides come last, e.g. the demo's augmentation (96 px JPEGs -> 64 px crops):
    python bench/loader.py --source-size 96 --image-size 64 --workers 1 data.augment.brightness=0.4 \
        data.augment.contrast=0.4 data.augment.saturation=0.3 data.augment.hue=0 data.augment.night_light=true
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from dist_geo.config import Config, build_config
from dist_geo.data.groups import build_groups
from dist_geo.data.synth.writer import write_world
from dist_geo.data.vg_format import list_images
from dist_geo.distributed import single_process
from dist_geo.loaders import dali_augment
from dist_geo.loaders.augment import torch_transform
from dist_geo.loaders.factory import build_train_loader
from dist_geo.shards.reading import decode_rgb
from dist_geo.shards.writer import write_shards

# One group holding every class (N = L = 1), every class kept: the whole train split.
LOADERS = ("dali_cpu", "dali_cpu_operators", "torch_shards", "torch_folder")
GROUPING = ["data.M=10", "data.alpha=30", "data.N=1", "data.L=1", "data.groups_num=1",
            "data.min_images_per_class=1", "data.sampling=image_uniform",
            "data.augment.hflip=true"]


class FolderDataset(Dataset):
    """The plain baseline: (image file, label) pairs, decoded and augmented per item."""

    def __init__(self, items: list[tuple[str, int]], cfg: Config):
        self.items = items
        self.transform = torch_transform(cfg.data.augment, cfg.data.image_size)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        return self.transform(decode_rgb(Path(path).read_bytes())), label


def folder_loader(cfg: Config) -> DataLoader:
    records, _ = list_images(Path(cfg.data.dataset) / "train")
    d = cfg.data
    (group,) = build_groups(records, d.M, d.alpha, d.N, d.L, d.min_images_per_class)[:1]
    items = [(r.path, c) for c, imgs in enumerate(group.images) for r in imgs]
    return DataLoader(FolderDataset(items, cfg), batch_size=cfg.train.batch_size, shuffle=True,
                      num_workers=d.num_workers, drop_last=True, persistent_workers=d.num_workers > 0)


def endless(loader: DataLoader):
    while True:
        yield from loader


def images_per_s(batches, n: int, warmup: int) -> float:
    for _ in range(warmup):
        next(batches)
    start = time.perf_counter()
    count = sum(len(next(batches)[1]) for _ in range(n))
    return count / (time.perf_counter() - start)


def use_operator_jitter() -> None:
    """The DALI graph with the GPU's jitter (DALI's operators) wherever it runs."""
    jitter = dali_augment.color_jitter
    dali_augment.color_jitter = lambda x, params, aug, fused: jitter(x, params, aug, fused=False)


def measure(name: str, cfg: Config, args: argparse.Namespace) -> float:
    if name == "torch_folder":
        batches = endless(folder_loader(cfg))
    else:
        if name == "dali_cpu_operators":
            use_operator_jitter()
        cfg.data.loader = "dali" if name.startswith("dali") else "torch"
        batches = build_train_loader(cfg, 0, single_process(), epoch=0)
    return images_per_s(batches, args.batches, args.warmup)


def main() -> None:
    parser = argparse.ArgumentParser(prog="dist-geo bench loader",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--source-size", type=int, default=160, help="side of the world's images")
    parser.add_argument("--image-size", type=int, default=128, help="training crop side")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per loader")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers / DALI threads")
    parser.add_argument("--out", default="runs/bench_loader")
    parser.add_argument("--only", choices=LOADERS, help=argparse.SUPPRESS)  # one, in this process
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args()

    out = Path(args.out)
    world = write_world(out / f"world_{args.images}_{args.source_size}", seed=0, preset="tiny",
                        train_images=args.images, image_size=args.source_size, queries=4)
    shards = out / f"shards_{args.images}_{args.source_size}"
    cfg = build_config(overrides=[
        *GROUPING, f"data.dataset={world}", f"data.shards={shards}",
        f"data.image_size={args.image_size}", f"train.batch_size={args.batch}",
        f"data.num_workers={args.workers}", "data.shard_size=200", *args.overrides,
    ])
    if args.only:
        print(json.dumps({args.only: measure(args.only, cfg, args)}))
        return
    write_shards(world, shards, cfg.data)
    # Each loader in a fresh process, so none inherits another's threads, workers or memory.
    results = {}
    for name in LOADERS:
        run = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--only", name],
                             check=True, capture_output=True, text=True)
        results[name] = round(json.loads(run.stdout.strip().splitlines()[-1])[name], 1)
    print(json.dumps({
        "images_per_s": results, "images": args.images, "source_size": args.source_size,
        "image_size": args.image_size, "batch": args.batch, "batches": args.batches,
        "workers": args.workers, "overrides": args.overrides, "cpus": os.cpu_count(),
        "device": "cpu",
    }))


if __name__ == "__main__":
    main()
