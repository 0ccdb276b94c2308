"""Where evaluation numbers go: a console table, a markdown table (an MLflow run's
description), `results.json`, and an evaluation's own MLflow run."""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dist_geo.config import Config, flatten, to_dict
from dist_geo.distributed import DistContext
from dist_geo.tracking import open_evaluation_run

log = logging.getLogger(__name__)

Metrics = Mapping[str, Mapping[str, float]]
DEMO_MODELS = ("trained", "untrained", "raw_pixels")  # the rows of the demo's results.json


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


def markdown_table(results: Metrics, recall_values: Sequence[int]) -> str:
    """The rows of `results` as a markdown table of recall@N (%), with the query counts when
    every row has them (as MLflow renders a run's description)."""
    counts = all("queries" in m for m in results.values())
    header = ["", *(f"R@{n}" for n in recall_values), *(["queries"] if counts else [])]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for label, m in results.items():
        cells = [label, *(f"{m[f'recall_at_{n}']:.1f}" for n in recall_values)]
        lines.append("| " + " | ".join(cells + ([str(int(m["queries"]))] if counts else [])) + " |")
    return "\n".join(lines)


def log_evaluation(
    results: Metrics, cfg: Config, ctx: DistContext, uri: str, name: str,
    parent_run_id: str = "", tags: dict[str, str] | None = None,
    artifacts: Sequence[Path] = (), step: int = 0,
) -> str:
    """An evaluation as its own MLflow run (tracking.py: `open_evaluation_run`), a child of the
    training run `parent_run_id` when the store at `uri` holds it: the eval config as params,
    `<split>_recall_at_N` at `step` (the checkpoint's training step), the table as its
    description, `artifacts` (results.json, plots). The training run is left as it was.

    Returns the new run's id ("" when tracking is off or this is not rank 0).
    """
    if not (cfg.tracking.enabled and ctx.is_main):
        return ""
    run = open_evaluation_run(uri, cfg.tracking.experiment, name, tags or {}, parent_run_id)
    run.log_params(flatten({"eval": to_dict(cfg.eval), "model": to_dict(cfg.model)}))
    run.log_metrics(mlflow_metrics(results), step=step)
    run.set_description(markdown_table(results, cfg.eval.recall_values))
    for path in artifacts:
        run.log_artifacts(path)
    run.finish()
    log.info("MLflow run '%s': %s", name, run.browse_hint)
    return run.run_id
