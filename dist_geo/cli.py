"""`dist-geo`: one command, a sub-command per stage.

The CLI is thin: each sub-command lives in the module of its stage, which offers
`configure(parser)` (its arguments) and `main(args) -> int` (parse, build the config, call one
library function); dist_geo/subcommand.py parses and runs it. The dispatcher imports each
sub-command's module lazily, by the names below: a module is imported only when its
sub-command runs, so `--help` is fast and a missing optional dependency only affects the
sub-command that needs it. Elsewhere project imports sit at the top of their module, but for
two that wait on an optional dependency: the DALI loader (loaders/factory.py) and the sweep
runner (tuning/cli.py, Ray).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from dist_geo import __version__, subcommand

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("dist_geo.data.synth.cli", "write the synthetic geo-tagged world (VG file names)"),
    "shard": ("dist_geo.shards.cli",
              "pack a dataset split into WebDataset shards per CosPlace group"),
    "train": ("dist_geo.train.cli", "train a model from shards (1 CPU to many GPUs)"),
    "eval": ("dist_geo.eval.cli", "recall@N of a checkpoint on a dataset, with test-time methods"),
    "soup": ("dist_geo.eval.soup_cli", "uniform or greedy model soup of several checkpoints"),
    "tune": ("dist_geo.tuning.cli", "Ray Tune sweep over any config key, tracked in MLflow"),
    "demo": ("dist_geo.demo", "the whole job on the built-in synthetic world"),
    "bench": ("dist_geo.bench_cli", "run a benchmark from bench/ and print its JSON"),
    "config": ("dist_geo.config_cli", "show the resolved config: every key's value, default, "
               "range and meaning"),
}


def build_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<8} {summary}" for name, (_, summary) in SUBCOMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="dist-geo",
        description="Distributed CosPlace-style training for visual geo-localization.",
        epilog=f"commands:\n{listing}\n\n`dist-geo COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"dist-geo {__version__}")
    parser.add_argument("command", choices=SUBCOMMANDS, metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    top = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    module_name, summary = SUBCOMMANDS[top.command]
    module = importlib.import_module(module_name)
    args = subcommand.parse(module, top.command, summary, top.args)
    return subcommand.run(module, args, verbose=top.verbose)


if __name__ == "__main__":
    sys.exit(main())
