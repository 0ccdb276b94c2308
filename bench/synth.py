"""Synthetic world benchmark: build time, size, CosPlace classes and the raw-pixel baseline.

    dist-geo bench synth [--preset demo] [--seed 0] [--out DIR]

Prints JSON: seconds to write the world (wall and this process's CPU), image counts, classes
and groups kept for M=10, alpha=30 at several min_images_per_class, and the raw-pixel
baseline's recall (32x32 grey thumbnails, dist_geo.eval.raw_pixels) on val, test, test-night.
A world already written in --out is reused (then the build time is that of finding it).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from dist_geo.config import build_config
from dist_geo.data.groups import build_groups
from dist_geo.data.synth import write_world
from dist_geo.data.vg_format import list_images
from dist_geo.errors import DataError
from dist_geo.eval.raw_pixels import raw_pixel_baseline


def class_stats(root: Path) -> dict:
    records, _ = list_images(root / "train")
    stats = {}
    for min_images in (2, 3, 4, 5):
        for N, L in ((5, 2), (2, 1)):
            try:
                groups = build_groups(records, 10, 30, N, L, min_images)
            except DataError:
                groups = []
            stats[f"min{min_images}_N{N}_L{L}"] = {
                "groups": len(groups),
                "classes": sum(g.num_classes for g in groups),
                "images": sum(g.num_images for g in groups),
            }
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(prog="dist-geo bench synth",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="world folder (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        wall, cpu = time.perf_counter(), time.process_time()
        write_world(root, seed=args.seed, preset=args.preset)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        info = json.loads((root / "world.json").read_text())
        baseline = raw_pixel_baseline(root, build_config(), ["val", "test", "test-night"])
        print(json.dumps({
            "preset": args.preset, "seed": args.seed,
            "build_wall_s": round(wall, 1), "build_cpu_s": round(cpu, 1),
            "counts": info["counts"], "classes_M10_alpha30": class_stats(root),
            "raw_pixel_recall": baseline.metrics,
        }, indent=2))


if __name__ == "__main__":
    main()
