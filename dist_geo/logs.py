"""What a person reads while a command runs: our own INFO lines, other libraries' warnings
only, and progress that redraws on a terminal but never fills a log file with redraws.

`setup_logging` is called once per process by the sub-command runner (dist_geo/subcommand.py),
so the dispatcher, torchrun's workers and Ray's trials log alike. The root logger is at WARNING
and only `dist_geo` (and `__main__`, a stage module run as `python -m`) at INFO: libraries
that log their start-up at INFO (faiss's loader tries AVX-512, then AVX2 and logs each
`ModuleNotFoundError` on the way; MLflow's database set-up; Ray; DeepSpeed) stay quiet unless
something is wrong. MLflow configures its own logger when it is imported (lazily, later), from
`MLFLOW_LOGGING_LEVEL`: set here, it reaches the workers too, and a user's own value wins.

`progress` is a tqdm bar on a terminal; elsewhere (a log file, CI, a launcher's pipe) it logs
a plain line at each tenth of the work, no more often than every `interval_s` seconds, so
short loops say nothing and long ones show they are alive.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
OURS = ("dist_geo", "__main__")  # our loggers: the package's, and a stage run as `python -m`


def setup_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with `verbose`) for dist-geo, WARNING for every other library."""
    logging.basicConfig(level=logging.WARNING, format=FORMAT, datefmt="%H:%M:%S")
    set_level(logging.DEBUG if verbose else logging.INFO)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


def set_level(level: int) -> None:
    """The level of dist-geo's own lines (ranks other than 0 keep to warnings: rank 0 speaks
    for the job)."""
    for name in OURS:
        logging.getLogger(name).setLevel(level)


class PlainProgress:
    """The part of tqdm's interface we use, reporting as log lines (see the module docstring)."""

    def __init__(self, iterable: Iterable[Any] | None, total: int | None, desc: str,
                 enabled: bool, initial: int = 0, interval_s: float = 30.0):
        self.iterable, self.desc, self.enabled = iterable, desc, enabled
        self.total = total if total is not None else len(iterable)  # type: ignore[arg-type]
        self.n, self.interval_s = initial, interval_s
        self.postfix: dict[str, Any] = {}
        self.last = time.monotonic()
        self.tenth = self._tenth()

    def _tenth(self) -> int:
        return 10 * self.n // self.total if self.total else 0

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable if self.iterable is not None else ():
            yield item
            self.update()

    def update(self, n: int = 1) -> None:
        self.n += n
        tenth = self._tenth()
        if tenth == self.tenth or time.monotonic() - self.last < self.interval_s:
            return
        self.tenth, self.last = tenth, time.monotonic()
        if self.enabled:
            extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
            log.info("%s: %d/%d (%d%%)%s", self.desc, self.n, self.total,
                     100 * self.n // self.total, extra)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def close(self) -> None:
        """Nothing to clear: tqdm's interface."""


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
             enabled: bool = True, initial: int = 0, **bar: Any) -> tqdm | PlainProgress:
    """A progress bar over `iterable` (or `total` steps of `.update()`): tqdm on a terminal,
    `PlainProgress` elsewhere; `enabled=False` shows nothing (ranks other than 0)."""
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, disable=not enabled, initial=initial,
                    leave=False, dynamic_ncols=True, **bar)
    return PlainProgress(iterable, total, desc, enabled, initial)


__all__ = ["PlainProgress", "progress", "set_level", "setup_logging"]
