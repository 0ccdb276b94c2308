"""`build_train_loader`: the batches of one CosPlace group for one rank, from its shards, with
the backend `cfg.data.loader` names (the contract both keep: contract.py)."""
from __future__ import annotations

from dist_geo.config import Config, ConfigError
from dist_geo.distributed import DistContext
from dist_geo.loaders.contract import TrainLoader, derive_seed, rank_shards
from dist_geo.loaders.torch_backend import TorchTrainLoader
from dist_geo.shards.manifest import shards_dir


def build_train_loader(cfg: Config, group_index: int, ctx: DistContext, epoch: int,
                       start_batch: int = 0) -> TrainLoader:
    """The endless batch stream of group `group_index` for this rank in `epoch`."""
    share = rank_shards(shards_dir(cfg.data), group_index, ctx)
    seed = derive_seed(cfg.train.seed, epoch)  # the group's stream: the same on every rank
    if cfg.data.loader == "torch":
        return TorchTrainLoader(share, cfg, seed, ctx.device, start_batch)
    try:  # imported here: a machine without DALI still trains with data.loader=torch
        from dist_geo.loaders.dali_backend import DaliTrainLoader
    except ImportError as e:
        raise ConfigError(f"data.loader=dali but DALI cannot be imported ({e}); "
                          f"use data.loader=torch") from None
    return DaliTrainLoader(share, cfg, seed, ctx, start_batch)


__all__ = ["build_train_loader"]
