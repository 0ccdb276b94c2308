"""Recall@N as the visual geo-localization field reports it.

A query's positives are the database images within `positive_dist_threshold` metres of it in
UTM (Euclidean east/north), found with scikit-learn's radius neighbours. Recall@N is the
percentage of ALL queries with at least one positive among their first N predictions: a query
without any positive in the database can never be right and counts as a failure, exactly as the
deep-visual-geo-localization-benchmark and CosPlace do (their denominator is the number of
queries). We report how many such queries there are so that a low recall caused by coverage
holes in the database is visible rather than silent.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.neighbors import NearestNeighbors


def utm_array(records: Sequence) -> np.ndarray:
    """[N, 2] float64 (east, north) of image records (anything with utm_east / utm_north)."""
    return np.array([(r.utm_east, r.utm_north) for r in records], dtype=np.float64).reshape(-1, 2)


def find_positives(
    database_utm: np.ndarray, queries_utm: np.ndarray, threshold: float
) -> list[np.ndarray]:
    """For each query, the (sorted) database indices within `threshold` metres."""
    if len(database_utm) == 0:
        return [np.empty(0, dtype=np.int64) for _ in range(len(queries_utm))]
    knn = NearestNeighbors(n_jobs=1).fit(database_utm)
    found = knn.radius_neighbors(queries_utm, radius=threshold, return_distance=False)
    return [np.sort(p).astype(np.int64) for p in found]


def first_hit_rank(predictions: np.ndarray, positives: Sequence[np.ndarray]) -> np.ndarray:
    """Per query, the 0-based rank of the first correct prediction, or K when none is correct."""
    predictions = np.asarray(predictions)
    ranks = np.full(len(predictions), predictions.shape[1], dtype=np.int64)
    for q, (preds, pos) in enumerate(zip(predictions, positives, strict=True)):
        hits = np.flatnonzero(np.isin(preds, pos))
        if hits.size:
            ranks[q] = hits[0]
    return ranks


def recall_at_n(
    predictions: np.ndarray,
    positives: Sequence[np.ndarray],
    recall_values: Sequence[int] = (1, 5, 10, 20),
) -> dict[str, float]:
    """{"recall_at_1": %, ..., "queries": Q, "queries_without_positives": k}.

    `predictions` is [Q, K] database indices, best first. N larger than K is measured on the K
    predictions there are (a database smaller than 20 images still has a recall@20).
    """
    ranks = first_hit_rank(predictions, positives)
    queries = len(ranks)
    metrics: dict[str, float] = {
        f"recall_at_{n}": float((ranks < n).sum() * 100.0 / queries) if queries else 0.0
        for n in recall_values
    }
    metrics["queries"] = queries
    metrics["queries_without_positives"] = int(sum(len(p) == 0 for p in positives))
    return metrics
