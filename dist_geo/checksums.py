"""sha256 checksums of files: what shard and checkpoint manifests record and their readers check.

A manifest lists each file with its sha256, so a reader can tell a file that is whole from one
that was truncated or altered after it was written, and name it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_files(folder: str | Path) -> dict[str, str]:
    """{path relative to `folder`: sha256} of every file below `folder`, sorted by path."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): sha256_file(p) for p in files}


def matches(path: str | Path, expected: str | None) -> bool:
    """Whether the file at `path` has the checksum a manifest recorded for it."""
    return expected is not None and sha256_file(path) == expected


__all__ = ["checksum_files", "matches", "sha256_file"]
