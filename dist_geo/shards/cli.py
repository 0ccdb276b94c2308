"""`dist-geo shard DATASET OUT [key=value ...]` and `dist-geo shard --verify OUT [key=value ...]`.

Overrides are config keys (`data.M=15`); the grouping and shard keys may drop the `data.`
prefix (`M=15 shard_size=500`). DATASET defaults to data.dataset, OUT to the shard folder
the loaders read (data.shards, or shards/<dataset folder name> in the working directory).
`--verify` decodes the images with the decoder of the loader that will read them
(data.loader, DALI's by default; `loader=torch` for torchvision's).
"""
from __future__ import annotations

import argparse
import json

from dist_geo.config import DataConfig
from dist_geo.config_args import add_config_arguments, config_from_args
from dist_geo.shards.manifest import shards_dir
from dist_geo.shards.verify import verify_shards
from dist_geo.shards.writer import write_shards


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", nargs="?", help="dataset root (train/ inside); default data.dataset")
    parser.add_argument("out", nargs="?", help="shard folder; default data.shards")
    parser.add_argument("--split", default="train", help="split folder to pack (default train)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unparsable names and unreadable images instead of failing")
    parser.add_argument("--verify", metavar="OUT",
                        help="check the shards of OUT against their manifest instead of writing")
    add_config_arguments(parser, "data.M=20 data.alpha=60 data.groups_num=4")


def _data_key(text: str) -> str:
    key = text.partition("=")[0]
    return f"data.{text}" if "." not in key and key in DataConfig.__dataclass_fields__ else text


def main(args: argparse.Namespace) -> int:
    # argparse gives overrides to the positionals when they are left out: take them back.
    positional = [a for a in (args.dataset, args.out) if a is not None]
    args.overrides = [a for a in positional if "=" in a] + args.overrides
    dataset, out = ([a for a in positional if "=" not in a] + [None, None])[:2]
    args.overrides = [_data_key(o) for o in args.overrides]
    cfg = config_from_args(args)
    if args.verify:
        report = verify_shards(args.verify, cfg.data)
        for fault in report.faults:
            print(f"CORRUPT {fault}")
        print(json.dumps({"shards": report.shards, "samples": report.samples,
                          "faults": len(report.faults), "ok": report.ok}))
        return 0 if report.ok else 1
    if args.skip_bad:
        cfg.data.skip_bad = True
    if dataset:
        cfg.data.dataset = dataset
    out = out or str(shards_dir(cfg.data))
    manifest = write_shards(cfg.data.dataset, out, cfg.data, split=args.split)
    summary = {
        "out": out, "groups": len(manifest["groups"]),
        "samples": sum(g["num_samples"] for g in manifest["groups"]),
        "classes": [g["num_classes"] for g in manifest["groups"]],
        "skipped": len(manifest["skipped_names"]) + sum(len(g["skipped_images"]) for g in manifest["groups"]),
    }
    print(json.dumps(summary))
    return 0
