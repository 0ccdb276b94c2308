"""CosPlace classes and groups (Berton et al., CVPR 2022, Sec. 3).

A class is a cell of M x M metres and a heading sector of alpha degrees:
    class = (floor(e/M)*M, floor(n/M)*M, floor(h/alpha)*alpha)
A group takes one class out of every N x N cells and L sectors, so that the classes of a group
are at least M*(N-1) metres (or alpha*(L-1) degrees) apart and never see the same place:
    group = ((e mod M*N) // M, (n mod M*N) // M, (h mod alpha*L) // alpha)
computed on the class's rounded coordinates (headings are taken modulo 360, so 360 is 0;
names without a heading go to sector 0). Classes with fewer than `min_images_per_class`
images are dropped; groups come in the order their first image is met (the images sorted by
path), as in CosPlace, and so do the classes within a group.

Grouping a few million images takes a while, so the result is cached on disk per
(M, alpha, N, L, min_images_per_class) and per list of image paths: a changed dataset gets a
new cache entry instead of a stale one. The cache is a plain .npz of indices (no pickle).
"""
from __future__ import annotations

import hashlib
import logging
import operator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dist_geo.atomic import atomic_path
from dist_geo.data.vg_format import ImageRecord
from dist_geo.errors import DataError

log = logging.getLogger(__name__)
_COORDS = operator.attrgetter("utm_east", "utm_north", "heading")


@dataclass
class Group:
    """The classes of one CosPlace group; `images[i]` are the images of class i (label i)."""

    group_id: tuple[int, int, int]
    class_ids: list[tuple[int, int, int]]
    images: list[list[ImageRecord]]

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    @property
    def num_images(self) -> int:
        return sum(len(imgs) for imgs in self.images)


def class_id(e: float, n: float, h: float, M: int, alpha: int) -> tuple[int, int, int]:
    """The CosPlace class of a position (UTM east, north in metres) and heading (degrees)."""
    return (int(e // M * M), int(n // M * M), int(h % 360 // alpha * alpha))


def group_id(e: float, n: float, h: float, M: int, alpha: int, N: int, L: int) -> tuple[int, int, int]:
    """The CosPlace group of a position and heading: its class's place among N x N cells, L sectors."""
    ce, cn, ch = class_id(e, n, h, M, alpha)
    return (ce % (M * N) // M, cn % (M * N) // M, ch % (alpha * L) // alpha)


def _class_array(records: list[ImageRecord], M: int, alpha: int) -> np.ndarray:
    """`class_id` of every record at once, as an int64 [n, 3] array."""
    # One pass, no list of millions of tuples: each record's triple is read straight into the array.
    coords = np.fromiter(map(_COORDS, records), dtype=np.dtype((np.float64, 3)), count=len(records))
    missing = np.isnan(coords[:, 2])
    if missing.any():
        # Datasets without headings (Pitts30k) still group by position: one heading sector.
        log.warning("%d of %d images have no heading; they go in heading sector 0",
                    int(missing.sum()), len(records))
        coords[missing, 2] = 0.0
    return np.stack([
        coords[:, 0] // M * M, coords[:, 1] // M * M, coords[:, 2] % 360 // alpha * alpha,
    ], axis=1).astype(np.int64)


def _compute(records: list[ImageRecord], M: int, alpha: int, N: int, L: int,
             min_images: int) -> dict[str, np.ndarray]:
    """Grouping as index arrays: which records, in which class, in which group, in what order."""
    classes = _class_array(records, M, alpha)
    # Rows as 24-byte opaque values: np.unique sorts those 5x faster than rows (axis=0); the
    # order of `first` etc. is byte order, not numeric, which nothing below depends on.
    rows = np.ascontiguousarray(classes).view(np.dtype((np.void, classes.shape[1] * 8))).ravel()
    _, first, inverse, counts = np.unique(
        rows, return_index=True, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    kept = np.flatnonzero(counts >= min_images)
    kept = kept[np.argsort(first[kept], kind="stable")]  # classes in the order first met
    class_ids = classes[first[kept]]
    group_of_class = np.stack([
        class_ids[:, 0] % (M * N) // M, class_ids[:, 1] % (M * N) // M,
        class_ids[:, 2] % (alpha * L) // alpha,
    ], axis=1)
    group_index: dict[tuple[int, ...], int] = {}
    class_group = np.array(
        [group_index.setdefault(tuple(g), len(group_index)) for g in group_of_class.tolist()],
        dtype=np.int64)
    # Classes ordered by group, keeping first-met order inside each group.
    class_order = np.argsort(class_group, kind="stable")
    kept, class_ids, class_group = kept[class_order], class_ids[class_order], class_group[class_order]
    # Each kept class's images in path order, classes in the order just fixed.
    rank_of_unique = np.full(len(counts), -1, dtype=np.int64)
    rank_of_unique[kept] = np.arange(len(kept))
    image_rank = rank_of_unique[inverse]
    image_index = np.flatnonzero(image_rank >= 0)
    image_index = image_index[np.argsort(image_rank[image_index], kind="stable")]
    class_offsets = np.concatenate([[0], np.cumsum(counts[kept])]).astype(np.int64)
    group_ids = np.array(list(group_index), dtype=np.int64).reshape(-1, 3)
    return {
        "group_ids": group_ids, "class_ids": class_ids, "class_group": class_group,
        "class_offsets": class_offsets, "image_index": image_index,
    }


def _paths_digest(records: list[ImageRecord], chunk: int = 65536) -> str:
    """sha1 of the paths joined by newlines, fed in chunks (not one string of them all)."""
    sha = hashlib.sha1()
    for start in range(0, len(records), chunk):
        text = "\n".join(r.path for r in records[start:start + chunk])
        sha.update((f"\n{text}" if start else text).encode())
    return sha.hexdigest()


def _cache_file(cache_dir: Path, records: list[ImageRecord], M: int, alpha: int, N: int,
                L: int, min_images: int) -> Path:
    digest = _paths_digest(records)[:16]
    return cache_dir / f"groups_M{M}_alpha{alpha}_N{N}_L{L}_min{min_images}_{digest}.npz"


def _load_cache(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as e:
        log.warning("%s: unreadable groups cache (%s); recomputing", path, e)
        return None


def _save_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def build_groups(
    records: list[ImageRecord],
    M: int,
    alpha: int,
    N: int,
    L: int,
    min_images_per_class: int,
    cache_dir: str | Path | None = None,
) -> list[Group]:
    """CosPlace groups of `records` (sorted by path, as `list_images` returns them).

    With `cache_dir`, the grouping is read from / written to a cache file keyed by the
    parameters and the image paths, so a second run does not recompute it.
    """
    if not records:
        raise DataError("no images to group")
    if min(M, alpha, N, L, min_images_per_class) < 1:
        raise DataError(f"invalid grouping parameters M={M} alpha={alpha} N={N} L={L}")
    params = (M, alpha, N, L, min_images_per_class)
    cache = _cache_file(Path(cache_dir), records, *params) if cache_dir else None
    arrays = _load_cache(cache) if cache else None
    if arrays is None:
        arrays = _compute(records, *params)
        if cache:
            _save_cache(cache, arrays)
    else:
        log.info("groups read from cache %s", cache)
    if len(arrays["class_ids"]) == 0:
        raise DataError(
            f"no class has >= {min_images_per_class} images with M={M}, alpha={alpha} among "
            f"{len(records)} images (e.g. {records[0].path})"
        )
    return _to_groups(records, arrays)


def _to_groups(records: list[ImageRecord], arrays: dict[str, np.ndarray]) -> list[Group]:
    groups = [Group(tuple(g), [], []) for g in arrays["group_ids"].tolist()]
    offsets, image_index = arrays["class_offsets"].tolist(), arrays["image_index"].tolist()
    for c, (cid, g) in enumerate(zip(arrays["class_ids"].tolist(), arrays["class_group"].tolist())):
        groups[g].class_ids.append(tuple(cid))
        groups[g].images.append([records[i] for i in image_index[offsets[c]:offsets[c + 1]]])
    return groups


__all__ = ["Group", "build_groups", "class_id", "group_id"]
