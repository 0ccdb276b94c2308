"""`dist-geo tune SWEEP [key=value ...]`: run a Ray Tune sweep, tracked in MLflow.

SWEEP is a sweep YAML file (how to write one: tuning/README.md) or the name of a bundled one
(tuning/sweeps/: loss_study, margin_search, optim_ablation). The overrides change the sweep's
base training config, e.g. `data.dataset=/data/sf_xl train.epochs_num=20`.

The bundled sweeps are the top-level `tuning/sweeps/` of the repository, where users edit
them; `dist_geo/tuning/sweeps` links to that folder, so an editable install reads them in
place and a wheel carries a copy as package data (setup.cfg).
"""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from dist_geo.config import ConfigError
from dist_geo.errors import DistGeoError
from dist_geo.tuning.sweep import load_sweep

BUNDLED = Path(__file__).parent / "sweeps"


def bundled_sweeps() -> dict[str, str]:
    """Each bundled sweep's name and the first sentence of its file's leading comment."""
    sweeps = {}
    for path in sorted(BUNDLED.glob("*.yaml")):
        comment = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            comment.append(line.lstrip("# "))
        sweeps[path.stem] = " ".join(comment).split(". ")[0].rstrip(".") + "."
    return sweeps


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    listing = [textwrap.fill(text, 92, initial_indent=f"  {name:<16}",
                             subsequent_indent=" " * 18) for name, text in bundled_sweeps().items()]
    parser.epilog = ("bundled sweeps (tuning/sweeps/; writing one: tuning/README.md):\n"
                     + "\n".join(listing) + "\n\nexample:\n  dist-geo tune loss_study "
                     "data.dataset=runs/demo/world train.epochs_num=2")
    parser.add_argument("sweep", help="sweep YAML file, or a bundled sweep's name")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help="changes of the base training config, e.g. data.dataset=/data/sf_xl",
    )
    parser.add_argument(
        "--address", default=None,
        help="an existing Ray cluster (e.g. 'auto'); default: a local Ray on this machine's CPUs",
    )
    parser.add_argument(
        "--resume", action="store_true",
        help="continue an interrupted sweep: finished trials are kept, unfinished ones resume",
    )
    parser.add_argument("--out", default=None, help="output folder (default: the sweep's `out`)")


def sweep_path(name: str) -> Path:
    if name.endswith((".yaml", ".yml")):
        return Path(name)
    path = BUNDLED / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in BUNDLED.glob("*.yaml")))
        raise ConfigError(f"no bundled sweep '{name}' (known: {known})")
    return path


def main(args: argparse.Namespace) -> int:
    try:  # imported here: Ray Tune is the optional [tune] extra, which the rest does without
        from dist_geo.tuning.runner import run_sweep
    except ModuleNotFoundError as e:
        if (e.name or "").startswith("dist_geo"):
            raise
        raise DistGeoError(f"sweeps need Ray Tune and Optuna ({e.name} is not installed): "
                           f'pip install -e ".[tune]"') from None
    sweep = load_sweep(sweep_path(args.sweep), args.overrides)
    if args.out:
        sweep.out = Path(args.out)
    result = run_sweep(sweep, address=args.address, resume=args.resume)
    if result.table.empty:
        print(f"dist-geo tune: no trial of {sweep.path} reported {sweep.metric}")
        return 1
    so_far = "" if result.complete else " so far"
    print(f"best config{so_far}: {sweep.out / 'best_config.yaml'}")
    if not result.complete:
        print(f"interrupted: resume with `dist-geo tune {args.sweep} --resume`")
        return 130
    return 0
