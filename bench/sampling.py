"""Class balance of the shards: class-uniform passes vs every image once, on recall.

    dist-geo bench sampling [--out runs/bench_sampling] [--nproc 2] [key=value ...]

CosPlace samples a class uniformly, then one of its images; a stream of shards samples images,
which weighs a class by its size. `data.sampling=class_uniform` (the default) lays each group
out as passes of one image per class, `image_uniform` writes every image once. This trains the
demo's configuration twice on the demo's synthetic world, the two runs differing only in that
key (same seed, steps, everything else), and prints JSON: per layout, the groups' classes,
images and shard samples, the last epoch's val recalls and the test / test-night recalls of the
best checkpoint. Overrides apply to both runs (e.g. train.epochs_num=2 for a quicker look).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dist_geo.config import build_config, bundled_config
from dist_geo.data.synth import write_world
from dist_geo.shards.writer import write_shards
from dist_geo.train.launch import launch_local

LAYOUTS = ("class_uniform", "image_uniform")


def main() -> None:
    parser = argparse.ArgumentParser(prog="dist-geo bench sampling",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/bench_sampling")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    out = Path(args.out)
    world = write_world(out / "world", seed=0, preset="demo")
    report: dict = {"nproc": args.nproc, "overrides": args.overrides}
    for layout in LAYOUTS:
        cfg = build_config(bundled_config("demo"), [
            f"data.dataset={world}", f"data.shards={out / layout / 'shards'}",
            f"data.sampling={layout}", f"train.out={out / layout / 'train'}",
            "tracking.enabled=false", "train.overwrite=true", *args.overrides,
        ])
        manifest = write_shards(world, cfg.data.shards, cfg.data)
        started = time.perf_counter()
        result = launch_local(cfg, nproc=args.nproc)
        report[layout] = {
            "classes_per_group": [g["num_classes"] for g in manifest["groups"]],
            "images_per_group": [g["num_images"] for g in manifest["groups"]],
            "samples_per_group": [g["num_samples"] for g in manifest["groups"]],
            "best_epoch": result["best_epoch"],
            **{k: round(v, 2) for k, v in result["metrics"].items()
               if k.startswith(("val_recall", "test_recall", "test_night_recall"))},
            "train_s": round(time.perf_counter() - started, 1),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
