"""`dist-geo`: one command, a sub-command per stage.

The CLI is thin: each sub-command lives in the module of its stage, which offers
`configure(parser)` (its arguments) and `main(args) -> int` (parse, build the config, call one
library function). Modules are imported only when their sub-command runs, so `--help` is fast
and a missing optional dependency only affects the sub-command that needs it.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from dist_geo.config import Config, build_config, bundled_config
from dist_geo.errors import DistGeoError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("dist_geo.data.synth.cli", "write the synthetic geo-tagged world (VG file names)"),
    "shard": ("shards.cli", "pack a dataset split into WebDataset shards per CosPlace group"),
    "train": ("dist_geo.train.cli", "train a model from shards (1 CPU to many GPUs)"),
    "eval": ("dist_geo.eval.cli", "recall@N of a checkpoint on a dataset, with test-time methods"),
    "soup": ("dist_geo.eval.soup_cli", "uniform or greedy model soup of several checkpoints"),
    "tune": ("tuning.cli", "Ray Tune sweep over any config key, tracked in MLflow"),
    "demo": ("dist_geo.demo", "the whole job on the built-in synthetic world"),
    "bench": ("dist_geo.bench_cli", "run a benchmark from bench/ and print its JSON"),
}


def add_config_arguments(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """`--config FILE` (or a bundled name) and trailing `section.key=value` overrides."""
    parser.add_argument(
        "--config", default=default,
        help="YAML config file, or the name of a bundled one (default, demo, ...)",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help="config overrides, e.g. loss.name=arcface loss.s=64 train.batch_size=16",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    path = args.config
    if path and not path.endswith((".yaml", ".yml")):
        path = bundled_config(path)
    return build_config(path, args.overrides)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="dist-geo",
        description="Distributed CosPlace-style training for visual geo-localization.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    subparsers = {
        name: sub.add_parser(name, help=summary, description=summary)
        for name, (_, summary) in SUBCOMMANDS.items()
    }
    return parser, subparsers


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subparsers = build_parser()
    # Only the chosen sub-command's module is imported, and it declares its own arguments.
    command = next((a for a in argv if not a.startswith("-")), None)
    module = None
    if command in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[command][0])
        module.configure(subparsers[command])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(module.main(args) or 0)
    except DistGeoError as e:
        print(f"dist-geo {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dist-geo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
