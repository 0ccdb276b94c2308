"""Where evaluation numbers go: a console table, `results.json`, MLflow metrics and artifacts."""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dist_geo.config import Config
from dist_geo.distributed import DistContext
from dist_geo.tracking import Tracker

log = logging.getLogger(__name__)

Metrics = Mapping[str, Mapping[str, float]]


def print_table(results: Metrics, recall_values: Sequence[int], title: str = "") -> None:
    table = Table(title=title or None)
    table.add_column("split")
    for n in recall_values:
        table.add_column(f"R@{n}", justify="right")
    table.add_column("queries", justify="right")
    table.add_column("no positive", justify="right")
    has_loss = any(f"recall_loss_at_{recall_values[0]}" in m for m in results.values())
    if has_loss:
        table.add_column(f"R@{recall_values[0]} lost vs exact", justify="right")
    for split, m in results.items():
        row = [split, *(f"{m[f'recall_at_{n}']:.1f}" for n in recall_values),
               str(int(m["queries"])), str(int(m["queries_without_positives"]))]
        if has_loss:
            row.append(f"{m.get(f'recall_loss_at_{recall_values[0]}', 0.0):.1f}")
        table.add_row(*row)
    Console().print(table)


def metric_prefix(split: str) -> str:
    """`test-night` -> `test_night`: MLflow metric names without '-', '/' or '@'."""
    return split.replace("-", "_").replace("/", "_")


def mlflow_metrics(results: Metrics) -> dict[str, float]:
    """{"test_recall_at_1": ..., "test_night_recall_at_1": ...}: split-prefixed MLflow names."""
    return {
        f"{metric_prefix(split)}_{key}": float(value)
        for split, metrics in results.items() for key, value in metrics.items()
    }


def log_to_mlflow(
    results: Metrics, cfg: Config, ctx: DistContext, run_id: str = "",
    artifacts: Sequence[Path] = (), step: int = 0,
) -> str:
    """Log on the run being evaluated (`run_id`) if it is in the store, else on a new run,
    at `step` (the checkpoint's training step, so the values sit at the end of its curves).

    Returns the run id used ("" when tracking is off or this is not rank 0).
    """
    if not (cfg.tracking.enabled and ctx.is_main):
        return ""
    try:
        tracker = Tracker(cfg, ctx, run_id=run_id)
    except Exception as e:  # a run id from another store: keep the numbers on a new run
        log.warning("MLflow run %s not usable (%s): logging to a new run", run_id, e)
        tracker = Tracker(cfg, ctx)
    tracker.log_metrics(mlflow_metrics(results), step=step)
    for path in artifacts:
        tracker.log_artifacts(path, "eval")
    tracker.finish()
    return tracker.run_id
