"""`dist-geo demo`: the whole job on the built-in synthetic world, on whatever this machine has.

    synthesise the world (cached)       dist_geo.data.synth.write_world
    shard its train split per group     dist_geo.shards.writer.write_shards (finished ones kept)
    train with N data-parallel ranks    dist_geo.train.launch_local (local ranks; gloo on CPU)
    test the best model                 (inside training: test and test-night, logged to MLflow)
    the two baselines on the same data  untrained network (the trained one's initial weights)
                                        and nearest neighbour on 32x32 grey thumbnails
    report                              a table and <out>/results.json; in MLflow, on the
                                        training run: the table as its description, the JSON
                                        and a bar chart as artifacts (demo/); the run's link

The baselines show the synthetic world is a real retrieval problem: the trained network has to
beat pixels and an untrained network by a wide margin (the README records the figures).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from dist_geo.atomic import write_json
from dist_geo.config import Config
from dist_geo.config_args import add_config_arguments, config_from_args
from dist_geo.data.synth import write_world
from dist_geo.distributed import single_process
from dist_geo.eval.evaluate import evaluate
from dist_geo.eval.raw_pixels import raw_pixel_baseline
from dist_geo.eval.plots import plot_recall_bars
from dist_geo.eval.report import DEMO_MODELS, markdown_table, metric_prefix
from dist_geo.model.network import build_model
from dist_geo.shards.writer import write_shards
from dist_geo.tracking import MlflowRun, tracking_uri, ui_command
from dist_geo.train.launch import launch_local, plan_local

log = logging.getLogger(__name__)

METRICS = ("recall_at_1", "recall_at_5", "recall_at_10", "recall_at_20")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="folder for world, shards, run, results")
    parser.add_argument("--nproc", type=int, default=None,
                        help="data-parallel training processes (default: one per GPU, or 2 CPU "
                             "processes without GPUs; the global batch stays the config's)")
    parser.add_argument("--preset", default="demo", help="synthetic world preset (tiny, demo, bench)")
    add_config_arguments(parser, "train.epochs_num=2 loss.name=arcface", default="demo")


def main(args: argparse.Namespace) -> int:
    run_demo(config_from_args(args), Path(args.out), nproc=args.nproc, preset=args.preset)
    return 0


def demo_config(cfg: Config, out: Path) -> Config:
    """Point the config's dataset, shards and run folders into `out`."""
    cfg.data.dataset = str(out / "world")
    cfg.data.shards = str(out / "shards")
    cfg.train.out = str(out / "train")
    return cfg


def untrained_network(cfg: Config) -> torch.nn.Module:
    """The network as training starts it: same seed, same initialisation."""
    torch.manual_seed(cfg.train.seed)
    return build_model(cfg.model)


def pick(metrics: dict[str, float], prefix: str = "") -> dict[str, float]:
    return {k: round(float(metrics[prefix + k]), 2) for k in METRICS if prefix + k in metrics}


def run_demo(cfg: Config, out: Path, nproc: int | None = None, preset: str = "demo") -> dict[str, Any]:
    started = time.perf_counter()
    cfg = demo_config(cfg, out)
    splits = list(cfg.eval.splits)
    timings: dict[str, float] = {}

    log.info("1/4 synthetic world (%s preset) -> %s", preset, cfg.data.dataset)
    write_world(cfg.data.dataset, seed=cfg.train.seed, preset=preset)
    log.info("2/4 shards of the first %d groups -> %s", cfg.data.groups_num, cfg.data.shards)
    write_shards(cfg.data.dataset, cfg.data.shards, cfg.data)
    timings["data_s"] = time.perf_counter() - started
    log.info("data ready in %.0f s", timings["data_s"])

    plan = plan_local(cfg, nproc, torch.cuda.device_count())
    cfg.train.device = plan.device
    log.info("3/4 training with %d %s process(es), global batch %d (%d each) -> %s", plan.nproc,
             plan.device, cfg.train.batch_size, plan.per_rank_batch, cfg.train.out)
    t = time.perf_counter()
    trained = launch_local(cfg, nproc=plan.nproc)
    timings["train_s"] = time.perf_counter() - t
    log.info("trained and tested in %.0f s", timings["train_s"])

    log.info("4/4 baselines: untrained network and raw pixels")
    t = time.perf_counter()
    ctx = single_process("auto")
    untrained = evaluate(untrained_network(cfg).to(ctx.device), cfg.data.dataset, cfg, ctx, splits)
    raw = raw_pixel_baseline(cfg.data.dataset, cfg, splits)
    timings["baselines_s"] = time.perf_counter() - t
    run = MlflowRun(tracking_uri(cfg), trained["mlflow_run_id"]) if cfg.tracking.enabled else None

    results = {
        "trained": {s: pick(trained["metrics"], metric_prefix(s) + "_") for s in splits},
        "untrained": {s: pick(untrained[s]) for s in splits},
        "raw_pixels": {s: pick(raw[s]) for s in splits},
        "mlflow_run_id": trained["mlflow_run_id"],
        "mlflow_ui": ui_command(run.uri) if run else "",
        "mlflow_run": run.link if run else "",
        "best_checkpoint": trained["best_checkpoint"],
        "nproc": plan.nproc,
        "device": plan.device,
        "global_batch": cfg.train.batch_size,
        "timings_s": {k: round(v, 1) for k, v in timings.items()}
        | {"total_s": round(time.perf_counter() - started, 1)},
    }
    path = write_json(out / "results.json", results)
    print_comparison(results, splits)
    if run:
        record_comparison(run, results, path, cfg.eval.recall_values)
        log.info("results in %s; the run in MLflow's UI: %s", path, run.browse_hint)
    else:
        log.info("results in %s", path)
    return results


def record_comparison(run: MlflowRun, results: dict[str, Any], path: Path,
                      recall_values: list[int]) -> None:
    """The comparison on the (finished) training run: its description, and results.json and a
    bar chart in `demo/` (training's own results.json stays beside them). Tags and artifacts
    only: the run's metrics, status and end time stay as training left them."""
    table = {model: results[model] for model in DEMO_MODELS}
    run.log_artifacts(path, "demo")
    run.log_artifacts(plot_recall_bars(table, recall_values, path.parent / "comparison.png"),
                      "demo")
    rows = {f"{model} / {split}": m
            for model, splits in table.items() for split, m in splits.items()}
    run.set_description(
        "`dist-geo demo`: the trained network against the same network untrained and against "
        "raw pixels (32x32 grey thumbnails), recall@N (%) on the synthetic world's test "
        "splits:\n\n" + markdown_table(rows, recall_values))


def print_comparison(results: dict[str, Any], splits: list[str]) -> None:
    table = Table(title="dist-geo demo: recall (%) on the synthetic world")
    table.add_column("model")
    for split in splits:
        table.add_column(f"{split} R@1", justify="right")
        table.add_column(f"{split} R@5", justify="right")
    for name in DEMO_MODELS:
        row = [name]
        for split in splits:
            m = results[name][split]
            row += [f"{m['recall_at_1']:.1f}", f"{m['recall_at_5']:.1f}"]
        table.add_row(*row)
    Console().print(table)
    seconds = results["timings_s"]
    print(f"{seconds['total_s']:.0f} s in all: data {seconds['data_s']:.0f} s, training and "
          f"testing {seconds['train_s']:.0f} s, baselines {seconds['baselines_s']:.0f} s")
