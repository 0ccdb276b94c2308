"""Files and folders are written under a temporary name beside their final place, then renamed.

A reader (a resumed run, another rank, a user's script) then sees the old file or the new
one, never half of one, and an interrupted write leaves nothing it could mistake for a result.
Folders that must appear whole (checkpoints, dataset splits) are staged the same way
(`atomic_dir`, or `staging_path` + `publish_dir` when several ranks write one folder).
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s content to; rename it over `path` on success.

    The temporary name keeps `path`'s suffix, so writers that choose the format by it
    (numpy's savez, matplotlib's savefig) write the right one; it carries the process id, so
    ranks writing the same file do not collide. On an error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, payload: Any, indent: int = 2) -> Path:
    return write_text(path, json.dumps(payload, indent=indent))


def staging_path(path: str | Path, private: bool = False) -> Path:
    """The temporary folder beside `path` its content is written into: `.<name>.tmp`, one name
    for all the ranks writing one checkpoint, or `.<name>.<pid>.tmp` when `private`, so that
    concurrent writers of the same folder each write their own."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp" if private else f".{path.name}.tmp")


def remove_orphans(path: str | Path) -> list[Path]:
    """Remove the private staging folders of `path` (`.<name>.<pid>.tmp`) whose writer is no
    longer running on this machine: what a killed writer leaves behind, which no later run
    would otherwise reuse or delete. A live writer's folder is kept. Returns those removed."""
    path = Path(path)
    removed = []
    for staging in path.parent.glob(f".{path.name}.*.tmp"):
        pid = staging.name[len(path.name) + 2:-len(".tmp")]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def previous_path(path: str | Path) -> Path:
    """`.<name>.old`: where `publish_dir` keeps the folder it replaces until the new one is in
    place; a reader that finds no `path` (a crash between the two renames) reads this one."""
    path = Path(path)
    return path.with_name(f".{path.name}.old")


def publish_dir(staging: Path, path: Path, replace: bool = True) -> Path:
    """Rename the finished folder `staging` to `path`.

    With `replace`, an existing `path` is swapped out (kept as `previous_path(path)` until the
    rename is done); without, an existing `path` (a concurrent writer of the same content
    finished first) is kept and `staging` is removed.
    """
    if replace:
        old = previous_path(path)
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        staging.rename(path)
        shutil.rmtree(old, ignore_errors=True)
        return path
    try:
        staging.rename(path)
    except OSError:
        if not path.exists():
            raise
        shutil.rmtree(staging)
    return path


@contextmanager
def atomic_dir(path: str | Path, replace: bool = True, private: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder to write `path`'s content into; publish it on success
    (see `publish_dir`). On an error the staging folder is removed."""
    path = Path(path)
    staging = staging_path(path, private)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        publish_dir(staging, path, replace)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
