"""`dist-geo eval CHECKPOINT_OR_STATE_DICT --dataset ROOT [--config X] [key=value ...]`.

Runs under torchrun / the deepspeed launcher as well as alone: every rank extracts its slice of
the descriptors, rank 0 searches, prints the table, writes `<out>/results.json` (and PNGs with
`--plots`) and records the evaluation as its own MLflow run, nested under the training run of
the checkpoint when there is one (which it leaves as it was). Every input is checked before the
evaluation starts (`--compare` files included), so a mistake costs seconds, not an evaluation.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from dist_geo.atomic import write_json
from dist_geo.config import Config, build_config, to_dict
from dist_geo.config_args import add_config_arguments, config_from_args
from dist_geo.distributed import init_distributed, shutdown
from dist_geo.errors import DataError
from dist_geo.eval.evaluate import EvalResults, evaluate
from dist_geo.eval.loading import load_for_eval
from dist_geo.eval.plots import Models, plot_recall_curves, plot_retrievals
from dist_geo.eval.raw_pixels import raw_pixel_baseline
from dist_geo.eval.report import DEMO_MODELS, Metrics, log_evaluation, print_table
from dist_geo.model.checkpoint import config_file
from dist_geo.tracking import store_uri

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
    add_config_arguments(parser, "eval.tta=hflip eval.pca_dim=256 eval.night_preprocess=contrast")


def eval_config(args: argparse.Namespace) -> Config:
    """A checkpoint folder evaluated without --config keeps its training's model and eval
    settings (test-time resize, recall values, ...), so its recalls match what training
    reported; --config starts from that file instead. Overrides apply on top either way."""
    checkpoint = Path(args.checkpoint)
    if args.config or not checkpoint.is_dir():
        return config_from_args(args)
    return build_config(config_file(checkpoint), args.overrides)


def evaluation_store(cfg: Config, checkpoint: Path, out: Path) -> str:
    """Where the evaluation's MLflow run goes: `tracking.uri` when given; else the embedded
    store of the run folder the checkpoint lies in (`<run>/checkpoints/<name>`, wherever that
    folder has been moved), so the evaluation nests under its training run; else a store of
    its own in `--out`."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    run_folder = checkpoint.resolve().parent.parent
    if checkpoint.is_dir() and (run_folder / "mlflow.db").is_file():
        return store_uri(run_folder)
    return store_uri(out)


def run_name(args: argparse.Namespace, step: int, splits: list[str]) -> str:
    """e.g. "eval best (step 700) on world: test, test-night; eval.tta=hflip"."""
    checkpoint = Path(args.checkpoint)
    what = f"{checkpoint.name} (step {step})" if checkpoint.is_dir() else checkpoint.name
    options = [*args.overrides, *(["+" + Path(p).name for p in args.ensemble]),
               *(["raw-pixel baseline"] if args.baseline else [])]
    return (f"eval {what} on {Path(args.dataset).name}: {', '.join(splits)}"
            + (f"; {' '.join(options)}" if options else ""))


def _curves(path: str, payload: Any, recall_values: list[int]) -> Models:
    """The models of a results.json: an evaluation's or a training run's ({"results": {split:
    metrics}}, named after its folder) or the demo's ({"trained"|"untrained"|"raw_pixels":
    {split: metrics}})."""
    name = Path(path).parent.name
    if isinstance(payload, dict) and isinstance(payload.get("results"), dict):
        curves = {name: payload["results"]}
    else:
        curves = {f"{name}/{model}": payload.get(model) for model in DEMO_MODELS}
        if not all(isinstance(c, dict) for c in curves.values()):
            raise DataError(f"{path}: neither an evaluation's nor the demo's results.json (no "
                            f"'results', nor {', '.join(DEMO_MODELS)})")
    for model, splits in curves.items():
        for split, metrics in splits.items():
            missing = [n for n in recall_values if f"recall_at_{n}" not in (metrics or {})]
            if missing:
                raise DataError(f"{path}: {model} {split} has no recall@{missing[0]} to plot")
    return curves


def compared_curves(paths: list[str], recall_values: list[int]) -> Models:
    """The --compare files' models, read and checked before any evaluation starts."""
    curves: dict[str, Metrics] = {}
    for path in paths:
        try:
            payload = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: not a readable results.json ({e})") from None
        curves |= _curves(path, payload, recall_values)
    return curves


def _plots(results: EvalResults, baseline: Metrics, cfg: Config, out: Path,
           compared: Models) -> list[Path]:
    """Recall@N curves of this evaluation, its raw-pixel baseline and the compared runs, and
    a grid of retrievals per split."""
    curves = {out.name: results.metrics, **({"raw pixels": baseline} if baseline else {}),
              **compared}
    pictures = [plot_recall_curves(curves, cfg.eval.recall_values, out / "recall_curves.png")]
    for split, detail in results.details.items():
        name = split.replace("/", "_")
        pictures.append(plot_retrievals(detail, out / f"retrievals_{name}.png",
                                        cfg.eval.positive_dist_threshold))
    return pictures


def main(args: argparse.Namespace) -> int:
    cfg = eval_config(args)
    compared = compared_curves(args.compare, cfg.eval.recall_values)
    ctx = init_distributed(cfg.train.device)
    try:
        paths = [args.checkpoint, *args.ensemble]
        loaded = [load_for_eval(p, cfg.model, ctx.device) for p in paths]
        results = evaluate([m.model for m in loaded], args.dataset, cfg, ctx, args.splits)
        if not ctx.is_main:
            return 0
        out = Path(args.out)
        baseline = raw_pixel_baseline(args.dataset, cfg, args.splits) if args.baseline else {}
        table = results.metrics | {f"raw-pixels/{split}": m for split, m in baseline.items()}
        print_table(table, cfg.eval.recall_values, title=f"{args.checkpoint} on {args.dataset}")
        pictures = _plots(results, baseline, cfg, out, compared) if args.plots else []
        results_path = write_json(out / "results.json", {
            "checkpoint": str(args.checkpoint),
            "ensemble": args.ensemble,
            "dataset": str(args.dataset),
            "eval": to_dict(cfg.eval),
            "results": table,
        })
        log.info("results in %s", results_path)
        source = loaded[0]
        log_evaluation(
            table, cfg, ctx, evaluation_store(cfg, Path(args.checkpoint), out),
            run_name(args, source.step, list(results)), source.mlflow_run_id,
            {"dist_geo.checkpoint": str(args.checkpoint), "dist_geo.dataset": str(args.dataset)},
            [results_path, *pictures], step=source.step,
        )
        return 0
    finally:
        shutdown()
