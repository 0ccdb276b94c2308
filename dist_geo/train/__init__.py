"""Training: DeepSpeed engine, CosPlace's group schedule, checkpoints, launchers.

    train(cfg, ctx, on_epoch_end=None) -> dict       dist_geo/train/trainer.py
    launch_local(cfg, nproc) -> dict                 dist_geo/train/launch.py
    load_model(checkpoint_dir, device) -> network    dist_geo/train/checkpoint.py
"""
from dist_geo.train.checkpoint import load_model, reslice_checkpoint
from dist_geo.train.launch import launch_local
from dist_geo.train.trainer import train

__all__ = ["launch_local", "load_model", "reslice_checkpoint", "train"]
