"""`dist-geo train --config X.yaml key=value ...`: one rank of a training job.

Run it as is for one process, or under a launcher for many (the launcher sets RANK,
WORLD_SIZE, ...; see launch/README.md):
    torchrun --standalone --nproc_per_node=2 -m dist_geo.train.cli --config demo train.out=runs/x
    deepspeed --hostfile launch/hostfile -m dist_geo.train.cli --config ...   (passes --local_rank)
After an elastic restart (torchrun --max-restarts, TORCHELASTIC_RESTART_COUNT > 0) the run
resumes from checkpoints/last when it exists.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from dist_geo import subcommand
from dist_geo.atomic import write_json
from dist_geo.config import Config
from dist_geo.config_args import SHOW, add_config_arguments, config_from_args
from dist_geo.distributed import elastic_restart_count, init_distributed, shutdown
from dist_geo.logs import set_level
from dist_geo.tracking import MlflowRun, tracking_uri
from dist_geo.train.trainer import EpochHook, train

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = f"""\
every config key, with its default, range and meaning:
  {SHOW}

examples:
  dist-geo train --config demo data.dataset=runs/demo/world data.shards=runs/demo/shards \\
      train.out=runs/mine loss.name=arcface
  torchrun --standalone --nproc_per_node=8 -m dist_geo.train.cli --config default \\
      data.dataset=/data/sf_xl/processed data.shards=runs/sfxl_shards train.out=runs/sfxl
  (many GPUs and nodes: launch/README.md)"""
    add_config_arguments(parser, "loss.name=arcface loss.s=64 train.batch_size=64")
    parser.add_argument("--result", help="write train()'s result as JSON to this file (rank 0)")
    parser.add_argument("--epoch-log", help="append a JSON line per finished epoch to this file "
                        "(rank 0): epoch, metrics, checkpoint folder")
    # The deepspeed launcher passes --local_rank=N; LOCAL_RANK in the environment says the same.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help=argparse.SUPPRESS)


def epoch_logger(path: Path, cfg: Config) -> EpochHook:
    """An on_epoch_end hook appending {"epoch", "metrics", "checkpoint"} lines to `path`, one
    write per line. The checkpoint named is the epoch's own folder when the run keeps them
    (`train.keep_epoch_checkpoints`), since `last` is overwritten by the next epoch."""
    def log_epoch(epoch: int, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        kept = checkpoint_dir.parent / f"epoch_{epoch:03d}"
        checkpoint = kept if cfg.train.keep_epoch_checkpoints else checkpoint_dir
        line = json.dumps({"epoch": epoch, "metrics": metrics, "checkpoint": str(checkpoint)})
        with path.open("a") as f:
            f.write(line + "\n")

    return log_epoch


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    ctx = init_distributed(cfg.train.device)
    if not ctx.is_main:
        set_level(logging.WARNING)
    last = Path(cfg.train.out) / "checkpoints" / "last" / "manifest.json"
    if elastic_restart_count() > 0 and last.exists():
        log.info("elastic restart %d: resuming from %s", elastic_restart_count(), last.parent)
        cfg.train.resume = True
    try:
        result = train(cfg, ctx, on_epoch_end=epoch_logger(Path(args.epoch_log), cfg)
                       if args.epoch_log else None)
        if ctx.is_main and args.result:
            write_json(args.result, result, indent=1)
        if ctx.is_main and result["mlflow_run_id"]:
            run = MlflowRun(tracking_uri(cfg), result["mlflow_run_id"])
            log.info("the run in MLflow's UI: %s", run.browse_hint)
    finally:
        shutdown()
    return 0


if __name__ == "__main__":  # python -m dist_geo.train.cli ... (what torchrun -m runs)
    sys.exit(subcommand.run_alone(sys.modules[__name__], "train", sys.argv[1:]))
