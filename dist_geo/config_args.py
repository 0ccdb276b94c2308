"""The config from the command line: `--config FILE.yaml` (or a bundled name) and
`section.key=value` overrides.

Every sub-command that trains or evaluates declares these two with `add_config_arguments`
and builds its config with `config_from_args`, so all of them read a config the same way:
defaults, then the file, then the overrides, validated once (dist_geo/config.py).
"""
from __future__ import annotations

import argparse

from dist_geo.config import Config, build_config, bundled_config


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


__all__ = ["add_config_arguments", "config_from_args"]
