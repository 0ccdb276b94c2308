"""`dist-geo`: one command, a sub-command per stage.

The CLI is thin: each sub-command lives in the module of its stage, which offers
`configure(parser)` (its arguments) and `main(args) -> int` (parse, build the config, call one
library function). Modules are imported only when their sub-command runs, so `--help` is fast
and a missing optional dependency only affects the sub-command that needs it. Errors the user
can act on (`DistGeoError`) are printed as one line, without a traceback.
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


def build_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<8} {summary}" for name, (_, summary) in SUBCOMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="dist-geo",
        description="Distributed CosPlace-style training for visual geo-localization.",
        epilog=f"commands:\n{listing}\n\n`dist-geo COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("command", choices=SUBCOMMANDS, metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def parse_command(command: str, argv: list[str]) -> tuple[object, argparse.Namespace]:
    """Import the command's module, let it declare its arguments, parse them.

    Options may come before or after positionals (`shard DIR OUT --config demo M=20`), which
    argparse only allows outside sub-parsers: hence one parser per command, parsed intermixed
    unless the command forwards a raw remainder (bench).
    """
    module_name, summary = SUBCOMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"dist-geo {command}", description=summary)
    module.configure(parser)
    forwards = any(a.nargs == argparse.REMAINDER for a in parser._actions)
    args = parser.parse_args(argv) if forwards else parser.parse_intermixed_args(argv)
    args.command = command
    return module, args


def main(argv: Sequence[str] | None = None) -> int:
    top = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    module, args = parse_command(top.command, top.args)
    logging.basicConfig(
        level=logging.DEBUG if top.verbose else logging.INFO,
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
