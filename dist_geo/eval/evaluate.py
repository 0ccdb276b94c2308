"""Recall@N of a model (or an ensemble of models) on the splits of a VG-format dataset.

One split, from files to figures:
  list_images(database), list_images(queries)           (dist_geo/data/vg_format.py)
  -> descriptors, every rank a slice, gathered          (features.py; tta.py views, night.py)
  -> ensemble concat, PCA                               (ensemble.py, pca.py)
  -> sharded FAISS top-k on rank 0                      (search.py)
  -> positives within 25 m, recall@N                    (recall.py)
Metrics are broadcast so every rank returns the same numbers; the per-query predictions (for
plots) are kept on rank 0 in `EvalResults.details`.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch.distributed as dist
from sklearn.decomposition import PCA
from torch import nn

from dist_geo.config import Config, EvalConfig
from dist_geo.data.vg_format import ImageRecord, list_images
from dist_geo.distributed import DistContext
from dist_geo.eval import tta
from dist_geo.eval.ensemble import concat_descriptors
from dist_geo.eval.features import Views, extract_descriptors
from dist_geo.eval.pca import apply_pca, fit_pca
from dist_geo.eval.recall import find_positives, recall_at_n, utm_array
from dist_geo.eval.search import search_database

log = logging.getLogger(__name__)


@dataclass
class SplitResult:
    """What one split's evaluation saw and predicted (rank 0), for tables and pictures."""

    split: str
    database: list[ImageRecord]
    queries: list[ImageRecord]
    predictions: np.ndarray  # [Q, K] database indices, best first
    positives: list[np.ndarray]  # per query, database indices within the threshold
    metrics: dict[str, float] = field(default_factory=dict)


class EvalResults(dict):
    """{split: {metric: value}} as the contract promises, plus `details[split]` (SplitResult,
    rank 0 only) for plots."""

    def __init__(self, metrics: dict[str, dict[str, float]], details: dict[str, SplitResult]):
        super().__init__(metrics)
        self.details = details

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        return {split: dict(values) for split, values in self.items()}


def split_folders(dataset_root: str | Path, split: str) -> tuple[Path, Path]:
    """(database folder, queries folder) of a split name: "val", "test", "test-night"
    (test/ with queries_night/) or "<split>/<queries folder>"."""
    root = Path(dataset_root)
    if split == "test-night":
        return root / "test" / "database", root / "test" / "queries_night"
    name, _, queries = split.partition("/")
    return root / name / "database", root / name / (queries or "queries")


def _describe(
    models: Sequence[nn.Module],
    records: list[ImageRecord],
    ctx: DistContext,
    cfg: Config,
    views: Views | None,
    night: str = "none",
    desc: str = "",
) -> tuple[np.ndarray, list[ImageRecord]]:
    """The descriptors of `records`' images (an ensemble's concatenated) and the records they
    describe: with `data.skip_bad`, images that cannot be used are left out of both."""
    skipped: list[int] | None = [] if cfg.data.skip_bad else None
    per_model = [
        extract_descriptors(
            m, [r.path for r in records], ctx, batch_size=cfg.eval.batch_size,
            image_size=cfg.eval.image_size, night=night, views=views,
            num_workers=cfg.data.num_workers, desc=desc,
            max_pixels=cfg.data.max_image_pixels, skipped=skipped,
        )
        for m in models
    ]
    descriptors = concat_descriptors(per_model)
    if not skipped:
        return descriptors, records
    keep = sorted(set(range(len(records))) - set(skipped))
    return descriptors[keep], [records[i] for i in keep]


def rank_database(
    database: np.ndarray,
    queries: np.ndarray,
    eval_cfg: EvalConfig,
    per_crop: str = "",
    index: str | None = None,
) -> np.ndarray:
    """[Q, K] database indices (K = max recall value), best first, with the configured index.

    `queries` is [Q, D], or [Q, V, D] with `per_crop` naming how the crops' lists are merged.
    """
    k = max(eval_cfg.recall_values)
    flat = queries.reshape(-1, queries.shape[-1])
    similarities, ids = search_database(
        database, flat, k, kind=index or eval_cfg.index, shards=eval_cfg.index_shards,
        fp16=eval_cfg.fp16_index,
    )
    if queries.ndim == 2:
        return ids
    shape = (*queries.shape[:2], ids.shape[1])
    return tta.merge_crop_predictions(per_crop, similarities.reshape(shape), ids.reshape(shape), k)


def score_split(
    split: str,
    database: np.ndarray,
    queries: np.ndarray,
    db_records: list[ImageRecord],
    q_records: list[ImageRecord],
    eval_cfg: EvalConfig,
    per_crop: str = "",
) -> SplitResult:
    """Search, positives and recall@N of one split's descriptors (any descriptor kind)."""
    predictions = rank_database(database, queries, eval_cfg, per_crop)
    positives = find_positives(
        utm_array(db_records), utm_array(q_records), eval_cfg.positive_dist_threshold
    )
    metrics = recall_at_n(predictions, positives, eval_cfg.recall_values)
    if eval_cfg.index != "flat":
        # What the approximate index costs: recall points lost against the exact search.
        exact = recall_at_n(
            rank_database(database, queries, eval_cfg, per_crop, index="flat"),
            positives, eval_cfg.recall_values,
        )
        for n in eval_cfg.recall_values:
            metrics[f"recall_loss_at_{n}"] = exact[f"recall_at_{n}"] - metrics[f"recall_at_{n}"]
    return SplitResult(split, db_records, q_records, predictions, positives, metrics)


def _list(folder: Path, cfg: Config) -> list[ImageRecord]:
    records, _ = list_images(folder, skip_bad=cfg.data.skip_bad)
    return records


def _fit_train_pca(
    models: Sequence[nn.Module], dataset_root: Path, cfg: Config, ctx: DistContext
) -> PCA:
    """PCA on the descriptors of at most `eval.pca_samples` random training images."""
    records = _list(dataset_root / "train", cfg)
    rng = np.random.default_rng(0)
    take = np.sort(rng.permutation(len(records))[: cfg.eval.pca_samples])
    views = tta.database_views(cfg.eval.tta)
    descriptors, _ = _describe(models, [records[i] for i in take], ctx, cfg, views,
                               desc="train (PCA)")
    if views:
        descriptors = tta.pool_views(descriptors)
    return fit_pca(descriptors, cfg.eval.pca_dim, cfg.eval.pca_whiten)


def _score_on_main(
    split: str,
    database: np.ndarray,
    queries: np.ndarray,
    db_records: list[ImageRecord],
    q_records: list[ImageRecord],
    cfg: Config,
    per_crop: str,
    pca: PCA | None,
) -> SplitResult:
    """Pool views, project with PCA, search and score (rank 0's share of a split)."""
    if database.ndim == 3:
        database = tta.pool_views(database)
    if queries.ndim == 3 and not per_crop:
        queries = tta.pool_views(queries)
    if cfg.eval.pca_dim:
        pca = pca or fit_pca(database, cfg.eval.pca_dim, cfg.eval.pca_whiten)
        database = apply_pca(pca, database)
        flat = apply_pca(pca, queries.reshape(-1, queries.shape[-1]))
        queries = flat.reshape(*queries.shape[:-1], -1)
    result = score_split(split, database, queries, db_records, q_records, cfg.eval, per_crop)
    log.info("%s: %s", split, _summary(result.metrics, cfg.eval.recall_values))
    return result


def _broadcast(obj: object, ctx: DistContext) -> object:
    if not ctx.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def evaluate(
    model: nn.Module | Sequence[nn.Module],
    dataset_root: str | Path,
    cfg: Config,
    ctx: DistContext,
    splits: Sequence[str] | None = None,
) -> EvalResults:
    """{split: {"recall_at_1": %, ..., "queries": Q, "queries_without_positives": k}}, and
    "skipped_images" with `data.skip_bad` (images left out because they cannot be used).

    `model` may be a list of models: their descriptors are concatenated (an ensemble).
    `eval.night_preprocess` applies to the queries of every split evaluated (pass only the
    night splits to measure it alone); `eval.tta` crops apply to queries only.
    Every rank must call this (descriptors are extracted by all ranks together); every rank
    gets the same metrics, rank 0 also the predictions (`.details`).
    """
    models = list(model) if isinstance(model, list | tuple) else [model]
    root = Path(dataset_root)
    method = cfg.eval.tta
    per_crop = method if method in tta.PER_CROP_SEARCH else ""
    pca = None
    if cfg.eval.pca_dim and cfg.eval.pca_fit == "train":
        pca = _fit_train_pca(models, root, cfg, ctx)
    metrics: dict[str, dict[str, float]] = {}
    details: dict[str, SplitResult] = {}
    for split in splits or cfg.eval.splits:
        db_folder, q_folder = split_folders(root, split)
        db_listed, q_listed = _list(db_folder, cfg), _list(q_folder, cfg)
        database, db_records = _describe(
            models, db_listed, ctx, cfg, tta.database_views(method), desc=f"{split} database",
        )
        queries, q_records = _describe(
            models, q_listed, ctx, cfg, tta.query_views(method),
            night=cfg.eval.night_preprocess, desc=f"{split} queries",
        )
        outcome: dict[str, float] | Exception | None = None
        if ctx.is_main:
            try:
                result = _score_on_main(split, database, queries, db_records, q_records, cfg,
                                        per_crop, pca)
                if cfg.data.skip_bad:
                    result.metrics["skipped_images"] = (
                        len(db_listed) + len(q_listed) - len(db_records) - len(q_records))
                details[split], outcome = result, result.metrics
            except Exception as e:  # shared, so the other ranks fail too instead of waiting
                outcome = e
        outcome = _broadcast(outcome, ctx)
        if isinstance(outcome, Exception):
            raise outcome
        metrics[split] = outcome
    return EvalResults(metrics, details)


def _summary(metrics: dict[str, float], recall_values: Sequence[int]) -> str:
    recalls = ", ".join(f"R@{n}: {metrics[f'recall_at_{n}']:.1f}" for n in recall_values)
    return (f"{recalls} ({metrics['queries']} queries, "
            f"{metrics['queries_without_positives']} without positives)")
