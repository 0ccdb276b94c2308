"""Test-time methods (`eval.tta`), as the deep-visual-geo-localization-benchmark compares them.

- `hflip`: the mean of the descriptors of the image and its mirror (database and queries).
- `multiscale`: the mean of the descriptors at scales 1, 1/sqrt(2), 1/2 (Radenovic et al.'s
  multi-scale GeM), database and queries.
- `central_crop`: the query's central square (side = its shorter side).
- `five_crops`: the mean descriptor of the query's five squares (four corners + centre).
- `nearest_crop`: each of the five crops is searched; a database image's score is its best over
  the crops (the crop nearest to it wins); the top-k of the union without duplicates.
- `majority_voting`: like nearest_crop, but database images predicted by several crops in their
  top 1 / 5 / 10 get their distance lowered by `MAJORITY_WEIGHT * votes / n` first.
Crops apply to queries only (the database keeps whole images), as in the benchmark.
Mean descriptors are re-normalised so that inner product stays the cosine similarity.
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from dist_geo.eval.features import Views

TTA_METHODS = (
    "none", "hflip", "central_crop", "five_crops", "nearest_crop", "majority_voting", "multiscale",
)
PER_CROP_SEARCH = ("nearest_crop", "majority_voting")  # keep one descriptor per crop
SCALES = (1.0, 2 ** -0.5, 0.5)
MAJORITY_WEIGHT = 0.01  # the benchmark's default --majority_weight


def _hflip(x: torch.Tensor) -> list[torch.Tensor]:
    return [x, F.horizontal_flip(x)]


def _multiscale(x: torch.Tensor) -> list[torch.Tensor]:
    h, w = x.shape[-2:]
    return [x if s == 1.0 else F.resize(x, [round(h * s), round(w * s)], antialias=True)
            for s in SCALES]


def _central_crop(x: torch.Tensor) -> list[torch.Tensor]:
    return [F.center_crop(x, [min(x.shape[-2:])])]


def _five_crops(x: torch.Tensor) -> list[torch.Tensor]:
    return list(F.five_crop(x, [min(x.shape[-2:])]))


def database_views(method: str) -> Views | None:
    """How database images are seen under `method` (None: the plain image)."""
    return {"hflip": _hflip, "multiscale": _multiscale}.get(method)


def query_views(method: str) -> Views | None:
    """How query images are seen under `method` (None: the plain image)."""
    if method not in TTA_METHODS:
        raise ValueError(f"unknown test-time method {method!r} (known: {', '.join(TTA_METHODS)})")
    return {
        "hflip": _hflip, "multiscale": _multiscale, "central_crop": _central_crop,
        "five_crops": _five_crops, "nearest_crop": _five_crops, "majority_voting": _five_crops,
    }.get(method)


def pool_views(descriptors: np.ndarray) -> np.ndarray:
    """[N, V, D] -> [N, D]: the mean over views, L2-normalised."""
    mean = descriptors.mean(axis=1)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def _vote(ids: np.ndarray, distances: np.ndarray) -> None:
    """Lower, in place, the distances of predictions several crops agree on (per query)."""
    for n in (1, 5, 10):
        values, counts = np.unique(ids[:, :n], return_counts=True)
        for value, count in zip(values[counts > 1], counts[counts > 1]):
            distances[:, :n][ids[:, :n] == value] -= MAJORITY_WEIGHT * count / n


def merge_crop_predictions(
    method: str, similarities: np.ndarray, ids: np.ndarray, k: int
) -> np.ndarray:
    """Per-crop results [Q, V, k'] (inner products, database ids) -> [Q, k] database ids."""
    distances = 2.0 - 2.0 * similarities.astype(np.float64)  # squared L2 of unit vectors
    merged = np.empty((len(ids), min(k, ids.shape[2])), dtype=np.int64)
    for q in range(len(ids)):
        if method == "majority_voting":
            _vote(ids[q], distances[q])
        order = np.argsort(distances[q].ravel(), kind="stable")
        ranked = ids[q].ravel()[order]
        _, first = np.unique(ranked, return_index=True)  # the nearest copy of each id
        merged[q] = ranked[np.sort(first)][: merged.shape[1]]
    return merged
