"""What a finished sweep leaves behind: the MLflow parent run, a ranked table, the best config.

    <out>/results.csv          one row per trial, best first (its best epoch's metrics)
    <out>/best_config.yaml     the winner's complete config: `dist-geo train --config` takes it
    <out>/plots/*.png          the metric against each swept key; every trial's learning curve

All three are also artifacts of the sweep's parent run, whose children are the trials' runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
from ray.tune import Result, ResultGrid
from rich.console import Console
from rich.table import Table

from dist_geo.atomic import atomic_path
from dist_geo.config import save_config
from dist_geo.tracking import MlflowRun, open_experiment, store_uri
from dist_geo.tuning.sweep import Sweep
from dist_geo.tuning.trainable import STOPPED_EARLY_TAG, find_child_run

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SWEEP_TAG = "tune.sweep_out"


@dataclass(frozen=True)
class ParentRun:
    tracking_uri: str
    experiment_id: str
    run_id: str


def open_parent_run(sweep: Sweep, out: Path) -> ParentRun:
    """The sweep's parent run: created once, found again by its output folder on resume."""
    uri = sweep.base["tracking.uri"] or store_uri(out)
    experiment_id = open_experiment(uri, sweep.base["tracking.experiment"])
    run = MlflowRun.find(uri, experiment_id, {SWEEP_TAG: str(out)})
    if run:
        run.resume()
    else:
        run = MlflowRun.start(uri, experiment_id, run_name=f"sweep-{sweep.name}",
                              tags={SWEEP_TAG: str(out)})
        run.log_params(_sweep_params(sweep))
        run.log_artifacts(sweep.path)
    return ParentRun(uri, experiment_id, run.run_id)


def _sweep_params(sweep: Sweep) -> dict[str, Any]:
    params = {"metric": sweep.metric, "mode": sweep.mode, "num_samples": sweep.num_samples}
    params.update({f"scheduler.{k}": v for k, v in sweep.scheduler.items()})
    params.update({f"search.{k}": v for k, v in sweep.search.items()})
    params.update({f"space.{k}": f"{d.kind}{list(d.values)}"[:500] for k, d in sweep.space.items()})
    return params


def trial_id(result: Result) -> str:
    """From the trial's folder (named by runner._trial_dirname): a PBT clone's results carry
    the `trial_id` of the trial it was cloned from."""
    return Path(result.path).name


def ranked_table(sweep: Sweep, results: ResultGrid) -> pd.DataFrame:
    """One row per trial at its best epoch, best first; swept keys as plain columns."""
    rows = []
    for result in results:
        history = result.metrics_dataframe
        if history is None or sweep.metric not in history:
            continue
        history = history.dropna(subset=[sweep.metric])
        best = history.loc[history[sweep.metric].idxmax() if sweep.mode == "max"
                           else history[sweep.metric].idxmin()]
        rows.append({
            "trial_id": trial_id(result),
            **sweep.trial_overrides({k: result.config[k] for k in sweep.space}),
            sweep.metric: best[sweep.metric],
            "best_epoch": int(best.get("epoch", best["training_iteration"])),
            "epochs_run": int(history["training_iteration"].max()),
            "error": "" if result.error is None else type(result.error).__name__,
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table = table.sort_values(sweep.metric, ascending=sweep.mode == "min", kind="stable")
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.reset_index(drop=True)


def print_table(sweep: Sweep, table: pd.DataFrame, console: Console | None = None) -> None:
    view = Table(title=f"sweep {sweep.name}: {sweep.metric} ({sweep.mode})")
    for column in table.columns:
        view.add_column(str(column), justify="right" if column in ("rank", sweep.metric) else "left")
    for row in table.itertuples(index=False):
        view.add_row(*(_cell(v) for v in row))
    console = console or Console()
    if not console.is_terminal:  # a log file: do not cut the columns to 80 characters
        console.width = max(console.width, 200)
    console.print(view)


def _cell(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return ""  # a key this trial's coupled combination does not set
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_best_config(sweep: Sweep, results: ResultGrid, table: pd.DataFrame, out: Path) -> Path:
    """The best trial's config, training into `<out>/best`, not into the trial's own folder."""
    best_id = table.iloc[0]["trial_id"]
    params = next(r.config for r in results if trial_id(r) == best_id)
    cfg = sweep.trial_config(
        {k: params[k] for k in sweep.space},
        {"train.out": str(out / "best"), "train.resume": False},
    )
    path = out / "best_config.yaml"
    save_config(cfg, path)
    return path


def plot(sweep: Sweep, results: ResultGrid, table: pd.DataFrame, out: Path) -> list[Path]:
    """Metric vs each swept key (one PNG per key) and all trials' learning curves."""
    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for key in [c for c in table.columns if c in sweep.base]:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        values = table[key]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            ax.scatter(values, table[sweep.metric])
            positive = values.min() > 0 and values.max() / values.min() > 20
            ax.set_xscale("log" if positive else "linear")
        else:
            labels = sorted(map(str, values.unique()))
            ax.scatter([labels.index(str(v)) for v in values], table[sweep.metric])
            ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
        ax.set_xlabel(key)
        ax.set_ylabel(sweep.metric)
        paths.append(_save(fig, folder / f"{sweep.metric}_vs_{key}.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    for result in results:
        history = result.metrics_dataframe
        if history is not None and sweep.metric in history:
            x = history["epoch"] if "epoch" in history else history["training_iteration"]
            params = " ".join(f"{v:.3g}" if isinstance(v, float) else str(v)
                              for v in (result.config or {}).values())
            ax.plot(x, history[sweep.metric], marker="o", label=f"{trial_id(result)} {params}"[:70])
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel(sweep.metric)
    if len(results) <= 12:
        ax.legend(fontsize=7)
    paths.append(_save(fig, folder / "learning_curves.png"))
    plt.close("all")
    return paths


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    return path


def close_child_runs(sweep: Sweep, results: ResultGrid, parent: ParentRun) -> None:
    """Best checkpoint, `tune.stopped_early` and final status on every trial's child run."""
    for result in results:
        run = find_child_run(parent.tracking_uri, parent.experiment_id, parent.run_id,
                             trial_id(result))
        if not run or STOPPED_EARLY_TAG in run.tags:
            continue  # never started, or closed by an earlier run of a resumed sweep
        best = result.get_best_checkpoint(sweep.metric, sweep.mode) if result.error is None else None
        if best is not None:
            run.log_artifacts(best.path, "best_checkpoint")
        epochs = sweep.trial_config({k: result.config[k] for k in sweep.space}).train.epochs_num
        stopped = result.metrics.get("training_iteration", 0) < epochs
        run.set_tag(STOPPED_EARLY_TAG, str(stopped).lower())
        run.finish("FAILED" if result.error is not None else "FINISHED")


def finish(
    sweep: Sweep, results: ResultGrid, parent: ParentRun, out: Path, complete: bool = True
) -> pd.DataFrame:
    """Table on the console, files in `out`, and all of it on the parent run.

    An interrupted sweep reports what it has so far and leaves its parent run KILLED; the
    resumed sweep reopens the run and replaces the report.
    """
    close_child_runs(sweep, results, parent)
    table = ranked_table(sweep, results)
    run = MlflowRun(parent.tracking_uri, parent.run_id)
    if table.empty:
        run.finish("FAILED")
        return table
    print_table(sweep, table)
    csv = out / "results.csv"
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False)
    artifacts = [csv, write_best_config(sweep, results, table, out)]
    for path in artifacts:
        run.log_artifacts(path)
    for path in plot(sweep, results, table, out):
        run.log_artifacts(path, "plots")
    run.log_metrics({f"best_{sweep.metric}": float(table.iloc[0][sweep.metric])}, step=0)
    run.set_tag("tune.best_trial", str(table.iloc[0]["trial_id"]))
    run.finish("FINISHED" if complete else "KILLED")
    return table
