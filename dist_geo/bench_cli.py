"""`dist-geo bench NAME [ARGS...]`: run `bench/NAME.py` of this checkout and let it print JSON.

Benchmarks are scripts, not library code: they live beside the package in `bench/` (an
editable install, as the README's, keeps them there) and are run here as `__main__`. A script
without a `__main__` block is a helper the benchmarks share, not a benchmark; `train` is the
short name of `train_speed`.
"""
from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

from dist_geo.errors import DistGeoError

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
ALIASES = {"train": "train_speed"}


def benchmarks() -> list[str]:
    """The runnable scripts of bench/ (those with a `__main__` block)."""
    scripts = sorted(BENCH_DIR.glob("*.py")) if BENCH_DIR.is_dir() else []
    return [p.stem for p in scripts if '__name__ == "__main__"' in p.read_text()]


def configure(parser: argparse.ArgumentParser) -> None:
    names = [*ALIASES, *benchmarks()]
    parser.add_argument("name", help=f"benchmark to run ({', '.join(names) or 'none found'})")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark")


def main(args: argparse.Namespace) -> int:
    script = BENCH_DIR / f"{ALIASES.get(args.name, args.name)}.py"
    if not script.is_file():
        raise DistGeoError(f"{script}: no such benchmark (bench/ ships with a source checkout)")
    sys.argv = [str(script), *args.args]
    sys.path.insert(0, str(BENCH_DIR))  # as `python bench/NAME.py` does: benchmarks share helpers
    runpy.run_path(str(script), run_name="__main__")
    return 0
