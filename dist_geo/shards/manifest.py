"""The shard folder's layout, its manifest and the config keys it is made from, shared by the
writer, the verifier, the loaders and the sweeps.

The format (folder layout, sample members, manifest.json) is described in `shards/README.md`
at the top of the repository, the default place shard sets are written to.
"""
from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from dist_geo.config import DataConfig
from dist_geo.errors import DataError

MANIFEST = "manifest.json"
PARAMS = "shard_params.json"
LABEL_DTYPE = np.dtype("<i8")
SAMPLE_EXTENSIONS = ("jpg", "json", "cls")


# The DataConfig keys that decide what a shard set holds: shard_params.json and the manifest
# record them, and a re-run into the same folder must match them.
SHARD_PARAMS = ("M", "alpha", "N", "L", "groups_num", "min_images_per_class", "shard_size",
                "sampling", "shard_seed")
# With them, the keys that decide which shard set a run reads and which images it left out:
# one shard set serves every trial of a sweep, so a sweep holds all of these fixed.
SHARD_KEYS = ("dataset", "shards", "skip_bad", *SHARD_PARAMS)


def shard_params(data_cfg: DataConfig) -> dict[str, Any]:
    return {k: getattr(data_cfg, k) for k in SHARD_PARAMS}


def shards_dir(data_cfg: DataConfig) -> Path:
    """`data.shards`, or `shards/<dataset folder name>` (in the working directory) when empty."""
    if data_cfg.shards:
        return Path(data_cfg.shards)
    return Path("shards") / Path(data_cfg.dataset).resolve().name


def group_dir(out_dir: Path, group_index: int) -> Path:
    return out_dir / f"group_{group_index:02d}"


def shard_name(shard_index: int) -> str:
    return f"shard-{shard_index:06d}.tar"


def index_path(tar: Path) -> Path:
    return tar.with_suffix(".idx")


def index_entries(idx: Path) -> list[str]:
    """The sample lines of a wds2idx index file (after its `v1.2 <count>` header line)."""
    return idx.read_text().splitlines()[1:]


def entry_key_end(entry: str) -> tuple[str, int]:
    """(key, end offset of its last member) of an index line `ext offset size name ...`."""
    fields = entry.split()
    members = [fields[i:i + 4] for i in range(0, len(fields), 4)]
    ext, name = members[0][0], members[0][3]
    return name[:-len(ext) - 1], max(int(off) + int(size) for _, off, size, _ in members)


def encode_label(label: int) -> bytes:
    return np.array([label], dtype=LABEL_DTYPE).tobytes()


def decode_label(data: bytes) -> int:
    if len(data) != LABEL_DTYPE.itemsize:
        raise ValueError(f".cls has {len(data)} bytes instead of {LABEL_DTYPE.itemsize}")
    return int(np.frombuffer(data, dtype=LABEL_DTYPE)[0])


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """The manifest of a complete shard folder; DataError names the folder if there is none."""
    path = Path(out_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"{path}: no shard manifest (write the shards first: dist-geo shard <dataset> {out_dir})"
        ) from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: manifest is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("groups"), list):
        raise DataError(f"{path}: manifest has no 'groups' list")
    for g, group in enumerate(manifest["groups"]):
        _check_group(group, f"{path}: group {g}")
    return manifest


def _check_group(group: Any, where: str) -> None:
    """What the readers rely on in one group entry: a class count that matches the class ids
    the shards were labelled with, and shard entries inside the folder with count and sha256
    (a hand-edited manifest otherwise fails later with an unnamed KeyError or label error)."""
    try:
        num_classes, class_ids, shards = group["num_classes"], group["class_ids"], group["shards"]
    except (KeyError, TypeError) as e:
        raise DataError(f"{where}: entry without {e} (rewrite the shards)") from None
    listed = len(class_ids) if isinstance(class_ids, list) else 0
    if not isinstance(num_classes, int) or num_classes != listed or listed < 1:
        raise DataError(f"{where}: num_classes={num_classes!r} but {listed} class ids are "
                        f"listed (edited?); rewrite the shards")
    for s, entry in enumerate(shards):
        missing = [k for k in ("file", "samples", "sha256") if k not in entry]
        if missing:
            raise DataError(f"{where}: shard entry {s} has no {', '.join(missing)} "
                            f"(rewrite the shards)")
        file = PurePosixPath(entry["file"])
        if file.is_absolute() or ".." in file.parts:
            raise DataError(f"{where}: shard file {entry['file']!r} lies outside the folder")


def group_entry(manifest: dict[str, Any], group_index: int, out_dir: Path) -> dict[str, Any]:
    groups = manifest["groups"]
    if not 0 <= group_index < len(groups):
        raise DataError(
            f"{out_dir / MANIFEST}: no group {group_index} (the shards hold {len(groups)} groups; "
            f"rewrite them with a larger data.groups_num)"
        )
    return groups[group_index]


__all__ = [
    "LABEL_DTYPE", "MANIFEST", "PARAMS", "SAMPLE_EXTENSIONS", "SHARD_KEYS", "SHARD_PARAMS",
    "decode_label", "encode_label",
    "entry_key_end", "group_dir", "group_entry", "index_entries", "index_path", "read_manifest",
    "shard_name", "shards_dir",
]
