"""Files are written to a temporary name beside their final place, then renamed.

A reader (a resumed run, another rank, a user's script) then sees the old file or the new
one, never half of one, and an interrupted write leaves nothing it could mistake for a result.
Folders that must appear whole (checkpoints, dataset splits, shard pairs) use the same idea
with their own rename, where they are written.
"""
from __future__ import annotations

import json
import os
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
