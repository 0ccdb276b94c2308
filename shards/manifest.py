"""The shard folder's layout and its manifest, shared by the writer, the verifier and the loaders.

    <out>/manifest.json                      written last: the folder is complete when it exists
    <out>/shard_params.json                  written first: what the shards are made of
    <out>/group_{g:02d}/shard-{i:06d}.tar    WebDataset tars: <key>.jpg, <key>.json, <key>.cls
    <out>/group_{g:02d}/shard-{i:06d}.idx    DALI's index of the tar beside it (wds2idx format)

`<key>.cls` is the local class index as 8 little-endian bytes (int64), so that DALI reads it
as a dense int64 tensor of one element and webdataset needs no text parsing.

manifest.json:
    {"version": 1, "dataset": abs path, "split": "train",
     "M", "alpha", "N", "L", "groups_num", "min_images_per_class", "shard_size", "sampling",
     "shard_seed": the parameters (shard_params.json holds the same, plus dataset and split),
     "num_images": images listed in the split, "skipped_names": [paths],
     "groups": [{"index": g, "group_id": [e, n, h], "num_classes", "num_images",
                 "num_samples": samples in its shards, "class_ids": [[e, n, h], ...] (label order),
                 "skipped_images": [paths], "shards": [{"file": "group_gg/shard-iiiiii.tar"
                 (relative to the folder), "samples", "sha256"}, ...]}, ...]}
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dist_geo.config import DataConfig
from dist_geo.errors import DataError

MANIFEST = "manifest.json"
PARAMS = "shard_params.json"
LABEL_DTYPE = np.dtype("<i8")
SAMPLE_EXTENSIONS = ("jpg", "json", "cls")


def shards_dir(data_cfg: DataConfig) -> Path:
    """`data.shards`, or `<dataset>/../shards/<dataset name>` when it is empty."""
    if data_cfg.shards:
        return Path(data_cfg.shards)
    dataset = Path(data_cfg.dataset).resolve()
    return dataset.parent / "shards" / dataset.name


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
    if not isinstance(manifest, dict) or "groups" not in manifest:
        raise DataError(f"{path}: manifest has no 'groups' entry")
    return manifest


def group_entry(manifest: dict[str, Any], group_index: int, out_dir: Path) -> dict[str, Any]:
    groups = manifest["groups"]
    if not 0 <= group_index < len(groups):
        raise DataError(
            f"{out_dir / MANIFEST}: no group {group_index} (the shards hold {len(groups)} groups; "
            f"rewrite them with a larger data.groups_num)"
        )
    return groups[group_index]


__all__ = [
    "LABEL_DTYPE", "MANIFEST", "PARAMS", "SAMPLE_EXTENSIONS", "decode_label", "encode_label",
    "entry_key_end", "group_dir", "group_entry", "index_entries", "index_path", "read_manifest",
    "shard_name", "shards_dir",
]
