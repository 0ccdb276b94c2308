"""`dist-geo config show [--config NAME] [key=value ...]`: the config a command would run with.

It prints the resolved config (defaults <- file <- overrides, validated as `train` does) as
YAML, each key followed by a comment: what it means, its choices or range, and its default
when the value differs. The meanings are the fields' metadata in dist_geo/config.py, the one
place they are written. The output is itself a config file: save it, edit it, pass it to
`--config`.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import yaml

from dist_geo.config import Config
from dist_geo.config_args import add_config_arguments, config_from_args

COMMENT_COLUMN = 44


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["show"],
                        help="show: print the resolved config, each key with its meaning")
    add_config_arguments(parser, example="train.batch_size=64 loss.name=arcface")


def _scalar(value: Any) -> str:
    """`value` as YAML reads it back (flow style for lists, quotes where needed)."""
    return yaml.safe_dump(value, default_flow_style=True, width=1000).removesuffix(
        "\n...\n").strip()


def _constraint(metadata: dict[str, Any]) -> str:
    if metadata.get("choices"):
        return "one of " + " | ".join(map(str, metadata["choices"]))
    lo, hi = metadata.get("min"), metadata.get("max")
    if lo is not None and hi is not None:
        return f"{lo:g} to {hi:g}"
    return f">= {lo:g}" if lo is not None else (f"<= {hi:g}" if hi is not None else "")


def _lines(node: Any, default: Any, indent: str) -> list[str]:
    lines = []
    for f in dataclasses.fields(node):
        value, base = getattr(node, f.name), getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(f"{indent}{f.name}:".ljust(COMMENT_COLUMN)
                         + f"# {type(value).__doc__.splitlines()[0]}")
            lines += _lines(value, base, indent + "  ")
            continue
        notes = [f.metadata.get("doc", ""), _constraint(f.metadata)]
        if value != base:
            notes.append(f"default {_scalar(base)}")
        entry = f"{indent}{f.name}: {_scalar(value)}"
        lines.append(f"{entry.ljust(COMMENT_COLUMN - 1)} # " + "; ".join(n for n in notes if n))
    return lines


def describe(cfg: Config) -> str:
    """The annotated YAML of `cfg` (see the module docstring)."""
    head = ["# dist-geo config: defaults <- --config file <- key=value overrides, validated.",
            "# Each key: its value, then what it means; its choices or range; its default when",
            "# the value differs. Save this as a file and pass it to --config."]
    return "\n".join(head + _lines(cfg, Config(), "")) + "\n"


def main(args: argparse.Namespace) -> int:
    print(describe(config_from_args(args)), end="")
    return 0


__all__ = ["describe"]
