"""`dist-geo soup --checkpoints A B C --method uniform|greedy --out soup.pth [--dataset ROOT]`.

Writes the soup as a model state dict (CosPlace layout, evaluable with `dist-geo eval soup.pth`
or usable as `model.weights`) and `<out>.json` with the ingredients and their val recall@1.
Greedy soups need `--dataset` (they are chosen on its val split); a uniform soup is scored on
it when given. Checkpoints are training checkpoint folders or state-dict files (see loading.py).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from dist_geo.atomic import atomic_path, write_json
from dist_geo.config import ConfigError
from dist_geo.config_args import add_config_arguments, config_from_args
from dist_geo.distributed import init_distributed, shutdown
from dist_geo.eval.evaluate import evaluate
from dist_geo.eval.loading import load_for_eval, state_dict_of
from dist_geo.eval.soups import average_state_dicts, check_same_architecture, greedy_soup

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoints", nargs="+", required=True, metavar="PATH",
                        help="checkpoint folders or state-dict files of one architecture")
    parser.add_argument("--method", choices=("uniform", "greedy"), default="greedy")
    parser.add_argument("--dataset", help="dataset root whose --split scores the soups")
    parser.add_argument("--split", default="val", help="split that scores (default: val)")
    parser.add_argument("--out", required=True, help="soup state-dict file to write (.pth)")
    add_config_arguments(parser, "model.backbone=resnet50 model.fc_output_dim=2048")


def _save_state_dict(state: dict[str, torch.Tensor], path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.method == "greedy" and not args.dataset:
        raise ConfigError("a greedy soup needs --dataset (ingredients are chosen on its val split)")
    ctx = init_distributed(cfg.train.device)
    try:
        states = [state_dict_of(p, cfg.model) for p in args.checkpoints]
        check_same_architecture(states, args.checkpoints)
        model = load_for_eval(args.checkpoints[0], cfg.model, ctx.device).model

        def score(state: dict[str, torch.Tensor]) -> float:
            model.load_state_dict(state)
            return evaluate(model, args.dataset, cfg, ctx, [args.split])[args.split]["recall_at_1"]

        summary: dict = {"method": args.method, "checkpoints": args.checkpoints,
                         "split": args.split}
        if args.method == "greedy":
            soup = greedy_soup(states, score)
            state = soup.state_dict
            summary |= {"ingredients": [args.checkpoints[i] for i in soup.ingredients],
                        "individual_recall_at_1": soup.individual_scores,
                        "soup_recall_at_1": soup.score}
        else:
            state = average_state_dicts(states)
            summary["ingredients"] = args.checkpoints
            if args.dataset:
                summary["soup_recall_at_1"] = score(state)
        if ctx.is_main:
            out = Path(args.out)
            _save_state_dict(state, out)
            write_json(out.with_suffix(".json"), summary)
            log.info("%s soup of %d checkpoints -> %s (%s)", args.method,
                     len(summary["ingredients"]), out, summary.get("soup_recall_at_1", "unscored"))
        return 0
    finally:
        shutdown()
