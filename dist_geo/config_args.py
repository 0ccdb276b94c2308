"""The config from the command line: `--config FILE.yaml` (or a bundled name) and
`section.key=value` overrides.

Every sub-command that trains or evaluates declares these two with `add_config_arguments`
and builds its config with `config_from_args`, so all of them read a config the same way:
defaults, then the file, then the overrides, validated once (dist_geo/config.py).
"""
from __future__ import annotations

import argparse

from dist_geo.config import Config, build_config, bundled_config


SHOW = "dist-geo config show [--config NAME] [key=value ...]"


def add_config_arguments(parser: argparse.ArgumentParser, example: str,
                         default: str | None = None) -> None:
    """`--config FILE` (or a bundled name) and trailing `section.key=value` overrides;
    `example` is a few overrides that make sense for this command."""
    bundled = ", ".join(sorted(p.stem for p in bundled_config("default").parent.glob("*.yaml")))
    parser.add_argument(
        "--config", default=default,
        help=f"YAML config file, or a bundled one's name: {bundled} "
             + (f"(default: {default})" if default else "(without it: the built-in defaults)"),
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help=f"config overrides, e.g. {example} (every key, its default, range and meaning: "
             f"`{SHOW}`)",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    path = args.config
    if path and not path.endswith((".yaml", ".yml")):
        path = bundled_config(path)
    return build_config(path, args.overrides)


__all__ = ["SHOW", "add_config_arguments", "config_from_args"]
