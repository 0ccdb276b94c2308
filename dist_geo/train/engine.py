"""The DeepSpeed engine around the network (backbone + GeM + FC), and the heads' step beside it.

The network is data parallel inside DeepSpeed (ZeRO stage 0, 1 or 2 from `train.zero_stage`;
fp32, bf16 or fp16 from `train.precision`). The sharded margin heads are not: each rank holds
different class rows, so averaging their gradients across ranks (what DeepSpeed does) would be
wrong. They keep fp32 weights and their own torch optimizers, and are stepped by `step_head`.

fp16 loss scaling: `engine.backward(loss)` multiplies the loss by DeepSpeed's current loss
scale before autograd runs, so the heads' gradients come out multiplied by the same scale.
`step_head` divides them by `loss_scale(engine)` before clipping, and skips the head step when
DeepSpeed skipped the network's step (gradient overflow: `engine.was_step_applied()`), so the
heads and the network always move together. bf16 and fp32 use no loss scale (factor 1).

DeepSpeed on CPU (measured with deepspeed 0.19.8, torch 2.14.1, see `prepare_deepspeed`):
- `DS_ACCELERATOR=cpu` makes it use gloo; `dist_geo.distributed.init_distributed` sets it before
  DeepSpeed is imported (this module imports DeepSpeed lazily for that reason).
- Its CPU communication backend JIT-compiles a shared-memory all-reduce op
  (`deepspeed_shm_comm`, about 30 s with g++/ninja, then cached in ~/.cache/torch_extensions or
  $TORCH_EXTENSIONS_DIR) on the first `initialize`. There is no config or env switch for it; the
  op is only built when `deepspeed.ops.__compatible_ops__` lists it as compatible, and DeepSpeed
  documents that dict as editable, so on CPU we mark it incompatible and all-reduces go through
  plain gloo. The engine then initialises in about 5 s instead of 35 s.
- `deepspeed.initialize` insists on a `LOCAL_RANK` variable and on a process group; a single
  process gets a one-rank gloo group on an in-memory store, so no port or MPI is needed.
- Torch optimizers are passed in (a config-defined Adam builds FusedAdam for CPU, about 45 s);
  ZeRO with SGD needs `zero_allow_untested_optimizer`.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from dist_geo.config import Config, ConfigError
from dist_geo.distributed import DistContext


def deepspeed_config(cfg: Config, ctx: DistContext) -> dict[str, Any]:
    """DeepSpeed's JSON config derived from `train.*` / `optim.*`, then `train.deepspeed_config`."""
    precision = cfg.train.precision
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.train.batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": cfg.train.batch_size * ctx.world_size,
        "zero_optimization": {"stage": cfg.train.zero_stage},
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": cfg.optim.clip_grad_norm,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 2**31 - 1,  # our own logging reports progress
        "wall_clock_breakdown": False,
    }
    if cfg.train.deepspeed_config:
        path = Path(cfg.train.deepspeed_config)
        try:
            ds.update(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read the DeepSpeed config ({e})") from None
    return ds


def prepare_deepspeed(ctx: DistContext) -> None:
    """Everything DeepSpeed needs before `initialize` on this machine (see the module docstring)."""
    os.environ.setdefault("LOCAL_RANK", str(ctx.local_rank))
    if not dist.is_initialized():
        dist.init_process_group(
            ctx.backend, store=dist.HashStore(), rank=0, world_size=1
        )
    import deepspeed.ops  # lazy: after init_distributed has set DS_ACCELERATOR (docstring)
    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)  # its INFO lines repeat on every rank
    if ctx.device.type == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def check_precision(precision: str, ctx: DistContext) -> None:
    from deepspeed.accelerator import get_accelerator  # lazy: as in prepare_deepspeed

    accelerator = get_accelerator()
    if precision == "fp16" and not accelerator.is_fp16_supported():
        raise ConfigError(
            f"train.precision=fp16 is not supported on {ctx.device}; use bf16 or fp32"
        )
    if precision == "bf16" and not accelerator.is_bf16_supported():
        raise ConfigError(f"train.precision=bf16 is not supported on {ctx.device}; use fp32")


def build_engine(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: Config,
    ctx: DistContext,
) -> Any:
    """Wrap the network in a DeepSpeedEngine that owns its optimizer and per-step scheduler."""
    prepare_deepspeed(ctx)
    import deepspeed  # lazy: as in prepare_deepspeed

    check_precision(cfg.train.precision, ctx)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler,
        config=deepspeed_config(cfg, ctx), dist_init_required=False,
    )
    # DeepSpeed casts the parameters to bf16/fp16 but not the buffers; batch norm needs both alike.
    dtype = next(engine.module.parameters()).dtype
    for buffer in engine.module.buffers():
        if buffer.is_floating_point():
            buffer.data = buffer.data.to(dtype)
    return engine


def loss_scale(engine: Any) -> float:
    """The factor `engine.backward` multiplied the loss by (1 unless fp16 loss scaling is on)."""
    if not engine.fp16_enabled():
        return 1.0
    optimizer = engine.optimizer
    scale = getattr(optimizer, "cur_scale", None)
    if scale is None:
        scale = optimizer.loss_scale_config.cur_scale
    return float(scale)


def step_head(
    engine: Any, head: torch.nn.Module, optimizer: torch.optim.Optimizer, clip_grad_norm: float
) -> None:
    """Unscale, clip and apply the head's gradients after `engine.step()` (see module docstring)."""
    if engine.was_step_applied():
        scale = loss_scale(engine)
        if scale != 1.0:
            for p in head.parameters():
                if p.grad is not None:
                    p.grad.div_(scale)
        if clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(head.parameters(), clip_grad_norm)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
