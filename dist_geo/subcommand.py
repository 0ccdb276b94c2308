"""Running one sub-command: its own parser, logging, and one-line errors.

A sub-command is a module offering `configure(parser)` (its arguments) and
`main(args) -> int` (parse, build the config, call one library function). The `dist-geo`
dispatcher (dist_geo/cli.py) runs every one through here, and so does a stage module started
on its own (`python -m dist_geo.train.cli` under torchrun), so both behave alike: errors the
user can act on (`DistGeoError`) are printed as one line, without a traceback.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from dist_geo.errors import DistGeoError
from dist_geo.logs import setup_logging


def parse(module: ModuleType, command: str, summary: str,
          argv: Sequence[str]) -> argparse.Namespace:
    """Let `module` declare its arguments, then parse `argv` with them.

    Options may come before or after positionals (`shard DIR OUT --config demo M=20`), which
    argparse only allows outside sub-parsers: hence one parser per command, parsed intermixed
    unless the command forwards a raw remainder (bench).
    """
    parser = argparse.ArgumentParser(prog=f"dist-geo {command}", description=summary)
    module.configure(parser)
    forwards = any(a.nargs == argparse.REMAINDER for a in parser._actions)
    args = parser.parse_args(argv) if forwards else parser.parse_intermixed_args(argv)
    args.command = command
    return args


def run(module: ModuleType, args: argparse.Namespace, verbose: bool = False) -> int:
    """`module.main(args)` with logging set up; its exit code (2 for a DistGeoError, or the
    error's own `exit_code`: 128 + the signal for a run a signal stopped)."""
    setup_logging(verbose)
    try:
        return int(module.main(args) or 0)
    except DistGeoError as e:
        print(f"dist-geo {args.command}: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        print(f"dist-geo {args.command}: interrupted", file=sys.stderr)
        return 130


def run_alone(module: ModuleType, command: str, argv: Sequence[str]) -> int:
    """A sub-command module started on its own (`python -m ...`), run as `dist-geo COMMAND`
    would run it; its docstring's first line describes it in `--help`."""
    return run(module, parse(module, command, module.__doc__.splitlines()[0], argv))


__all__ = ["parse", "run", "run_alone"]
