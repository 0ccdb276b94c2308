"""`dist-geo synth OUT`: write the synthetic world (a dataset in the VG layout) to OUT."""
from __future__ import annotations

import argparse
import json
import time

from dist_geo.data.synth.writer import PRESETS, write_world


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="folder to write train/ val/ test/ and world.json into")
    parser.add_argument("--seed", type=int, default=0, help="same seed, byte-identical files")
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS),
                        help="tiny (tests, seconds), demo (dist-geo demo), bench (larger)")
    parser.add_argument("--area", type=float, help="side of the training area, metres")
    parser.add_argument("--eval-area", type=float, help="width of the val and test areas, metres")
    parser.add_argument("--train-images", type=int, help="number of training images")
    parser.add_argument("--queries", type=int, help="images per query folder")
    parser.add_argument("--db-spacing", type=float, help="metres between database panoramas")
    parser.add_argument("--image-size", type=int, help="image side, pixels")


def main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    out = write_world(
        args.out, seed=args.seed, preset=args.preset, area=args.area, eval_area=args.eval_area,
        train_images=args.train_images, queries=args.queries, db_spacing=args.db_spacing,
        image_size=args.image_size,
    )
    counts = json.loads((out / "world.json").read_text())["counts"]
    print(f"{out}: {json.dumps(counts)} ({time.perf_counter() - start:.1f} s)")
    return 0
