"""`dist-geo eval CHECKPOINT_OR_STATE_DICT --dataset ROOT [--config X] [key=value ...]`.

Runs under torchrun / the deepspeed launcher as well as alone: every rank extracts its slice of
the descriptors, rank 0 searches, prints the table, writes `<out>/results.json` (and PNGs with
`--plots`) and logs `<split>_recall_at_N` to MLflow, on the checkpoint's own run when it has one.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

from dist_geo.atomic import write_json
from dist_geo.config import Config, build_config, to_dict
from dist_geo.config_args import add_config_arguments, config_from_args
from dist_geo.distributed import init_distributed, shutdown
from dist_geo.errors import DataError
from dist_geo.eval.evaluate import evaluate
from dist_geo.eval.loading import load_for_eval
from dist_geo.eval.plots import plot_recall_curves, plot_retrievals
from dist_geo.eval.raw_pixels import raw_pixel_baseline
from dist_geo.eval.report import log_to_mlflow, print_table
from dist_geo.model.checkpoint import config_file, load_config

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="training checkpoint folder, or a model state-dict "
                        "file (ours, a soup, or a CosPlace release: set model.backbone and "
                        "model.fc_output_dim to match)")
    parser.add_argument("--dataset", required=True, help="dataset root in the VG layout")
    parser.add_argument("--splits", nargs="+", metavar="SPLIT",
                        help="override eval.splits: val, test, test-night, <split>/<queries>")
    parser.add_argument("--ensemble", nargs="+", default=[], metavar="PATH",
                        help="more models whose descriptors are concatenated with the first's")
    parser.add_argument("--out", default="runs/eval", help="folder for results.json and plots")
    parser.add_argument("--plots", action="store_true",
                        help="write recall@N curves and top-5 retrieval grids as PNG")
    parser.add_argument("--compare", nargs="+", default=[], metavar="RESULTS_JSON",
                        help="other runs' results.json to draw on the same recall@N plot")
    parser.add_argument("--baseline", action="store_true",
                        help="also report the raw-pixel (32x32 thumbnail) baseline")
    add_config_arguments(parser)


def eval_config(args: argparse.Namespace) -> Config:
    """A checkpoint folder evaluated without --config keeps its training's model and eval
    settings (test-time resize, recall values, ...), so its recalls match what training
    reported; --config starts from that file instead. Overrides apply on top either way."""
    checkpoint = Path(args.checkpoint)
    if args.config or not checkpoint.is_dir():
        return config_from_args(args)
    return build_config(config_file(checkpoint), args.overrides)


def _tracking_config(cfg: Config, checkpoint: Path, run_id: str) -> Config:
    """Log into the store the checkpoint's run lives in, unless a store was given or
    tracking is off."""
    if not run_id or cfg.tracking.uri or not cfg.tracking.enabled:
        return cfg
    trained = load_config(checkpoint)
    return replace(cfg, tracking=trained.tracking, train=replace(cfg.train, out=trained.train.out))


def _compared_curves(paths: list[str]) -> dict[str, dict[str, float]]:
    curves = {}
    for path in paths:
        try:
            payload = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: not a readable results.json ({e})") from None
        for split, metrics in payload["results"].items():
            curves[f"{Path(path).parent.name}/{split}"] = metrics
    return curves


def _plots(results, cfg: Config, out: Path, compare: list[str]) -> list[Path]:
    curves = {f"{out.name}/{split}": m for split, m in results.items()} | _compared_curves(compare)
    pictures = [plot_recall_curves(curves, cfg.eval.recall_values, out / "recall_curves.png")]
    for split, detail in results.details.items():
        name = split.replace("/", "_")
        pictures.append(plot_retrievals(detail, out / f"retrievals_{name}.png",
                                        cfg.eval.positive_dist_threshold))
    return pictures


def main(args: argparse.Namespace) -> int:
    cfg = eval_config(args)
    ctx = init_distributed(cfg.train.device)
    try:
        paths = [args.checkpoint, *args.ensemble]
        loaded = [load_for_eval(p, cfg.model, ctx.device) for p in paths]
        results = evaluate([m.model for m in loaded], args.dataset, cfg, ctx, args.splits)
        if not ctx.is_main:
            return 0
        out = Path(args.out)
        table = results.metrics
        if args.baseline:
            baseline = raw_pixel_baseline(args.dataset, cfg, args.splits)
            table |= {f"raw-pixels/{split}": m for split, m in baseline.items()}
        print_table(table, cfg.eval.recall_values, title=f"{args.checkpoint} on {args.dataset}")
        pictures = _plots(results, cfg, out, args.compare) if args.plots else []
        results_path = write_json(out / "results.json", {
            "checkpoint": str(args.checkpoint),
            "ensemble": args.ensemble,
            "dataset": str(args.dataset),
            "eval": to_dict(cfg.eval),
            "results": table,
        })
        run_id = log_to_mlflow(
            results.metrics, _tracking_config(cfg, Path(args.checkpoint), loaded[0].mlflow_run_id),
            ctx, loaded[0].mlflow_run_id, [results_path, *pictures], step=loaded[0].step,
        )
        log.info("results in %s%s", results_path, f" (MLflow run {run_id})" if run_id else "")
        return 0
    finally:
        shutdown()
