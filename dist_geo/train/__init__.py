"""Training: DeepSpeed engine, CosPlace's group schedule, checkpoints, launchers.

    train(cfg, ctx, on_epoch_end=None) -> dict       dist_geo/train/trainer.py
    launch_local(cfg, nproc) -> dict                 dist_geo/train/launch.py
    reslice_checkpoint(src, dst, new_world) -> path  dist_geo/train/checkpoint.py
(a checkpoint's network: dist_geo.model.checkpoint.load_model)
"""
from dist_geo.train.checkpoint import reslice_checkpoint
from dist_geo.train.launch import launch_local
from dist_geo.train.trainer import train

__all__ = ["launch_local", "reslice_checkpoint", "train"]
